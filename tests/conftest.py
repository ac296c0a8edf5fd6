import contextlib
import subprocess
import sys

import keras_finetune_cli
import numpy as np
import pytest

with keras_finetune_cli.quiet_start():  # TensorFlow's start-up lines, which no log level silences
    import keras
    import tensorflow as tf

# Two logical CPU devices for MirroredStrategy tests, as Keras's own tests do;
# this must happen before TensorFlow initialises its devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


# The suite runs under every backend (`KERAS_BACKEND=jax python -m pytest`). A module that holds
# backend-agnostic tests says so in `BACKENDS`; the others, and tests marked `tensorflow_only`,
# check TensorFlow's own machinery (tf.data, tf.distribute, its asserts and errors) and are skipped
# elsewhere. Every part is also trained on each backend and compared in test_backends.py.
BACKEND = keras.backend.backend()


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    for item in items:
        marker = item.get_closest_marker("tensorflow_only")
        if "mirrored" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason="TensorFlow only: a tf.distribute.MirroredStrategy"))
        elif marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow only: {marker.args[0] if marker.args else ''}"))
        elif BACKEND not in getattr(item.module, "BACKENDS", ("tensorflow",)):
            item.add_marker(pytest.mark.skip(reason="a module of TensorFlow-only tests (tf.data, tf.distribute, its errors)"))


needs_multi_optimizer = pytest.mark.skipif(
    not hasattr(keras.optimizers, "MultiOptimizer"), reason="keras.optimizers.MultiOptimizer needs Keras 3.15"
)

class Dies(keras.callbacks.Callback):
    """Raises in the second step, as a failing callback or an interrupted `fit` does: no on_train_end runs."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            raise RuntimeError("the fit dies")


def numpy(tensor):
    """A backend tensor or variable as a numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def dtype_of(tensor) -> str:
    """A backend tensor's dtype as Keras names it ("float32", "uint8"...), on every backend."""
    return keras.backend.standardize_dtype(tensor.dtype)


def make_base(name="base"):
    """A small conv base: conv-BN-relu, conv-BN-relu, conv (7 entries in `layers`)."""
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv0")(inputs)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.ReLU(name="relu0")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    return keras.Model(inputs, x, name=name)


def with_statistics(model, seed=0):
    """Give every BatchNorm layer moving statistics other than its initial ones, as a pretrained base has."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0.0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.8, 1.2, layer.moving_variance.shape))
    return model


def fresh_process(code: str) -> str:
    """Run `code` in a new Python process (one that imports what `code` imports, nothing more); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def base():
    keras.utils.set_random_seed(0)
    return make_base()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.normal(2.0, 3.0, size=(32, 8, 8, 1)).astype("float32")


@pytest.fixture
def int_labels():
    return np.arange(32, dtype="int32") % 3


@contextlib.contextmanager
def mixed_float16():
    """Keras's global dtype policy is mixed_float16 inside the block, float32 again after it."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def snapshot(layer):
    """Copies of every weight of `layer`, keyed by variable path."""
    return {v.path: np.array(v.numpy()) for v in layer.weights}


class Snapshots(keras.callbacks.Callback):
    """Every weight of the model at each epoch end."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append([np.array(v.numpy()) for v in self.model.weights])


def changed(before, layer):
    """Paths of the weights of `layer` whose values differ from `before`."""
    return {v.path for v in layer.weights if not np.array_equal(before[v.path], v.numpy())}


@pytest.fixture(scope="session")
def mirrored():
    # One for the whole session: separate MirroredStrategy objects in one
    # process can mix up their collective ops' instance keys (shape mismatch).
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def write_image_folder(root, classes=("cat", "dog"), per_class=5, size=12, channels=3):
    """PNG files, one subfolder per class, each class its own mean colour."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 120 * index, 20, (size, size, channels)), 0, 255).astype("uint8")
            tf.io.write_file(str(root / name / f"{i}.png"), tf.io.encode_png(pixels))
    return str(root)


# Regions (rows, columns) of scikit-learn's two sample photographs, one texture each.
PHOTO_CLASSES = {
    "foliage": ("china.jpg", (230, 427), (430, 640)),
    "pagoda": ("china.jpg", (60, 330), (90, 330)),
    "petals": ("flower.jpg", (100, 360), (190, 450)),
}


def write_photo_folder(root, per_class=45, seed=0):
    """Real photographs: random square crops (48 to 96 pixels) of three regions of scikit-learn's
    sample photos, one subfolder per region, saved as JPEG and PNG in turn."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    for name, (photo, rows, columns) in PHOTO_CLASSES.items():
        pixels = load_sample_image(photo)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(48, 97))
            top = int(rng.integers(rows[0], rows[1] - side))
            left = int(rng.integers(columns[0], columns[1] - side))
            crop = pixels[top:top + side, left:left + side]
            encoded = tf.io.encode_jpeg(crop, quality=90) if i % 2 else tf.io.encode_png(crop)
            tf.io.write_file(str(root / name / f"{i}.{'jpg' if i % 2 else 'png'}"), encoded)
    return str(root)
