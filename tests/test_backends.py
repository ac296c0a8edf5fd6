"""Each part trains the same model from the same weights to the same weights on every Keras backend installed.

Each run is a process of its own (`backend_job.py`), since Keras picks its
backend once, at import. TensorFlow is the reference; JAX and PyTorch are
compared with it where they are installed.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import backend_job
from backend_job import PARTS, write_start_weights

JOB = os.path.join(os.path.dirname(__file__), "backend_job.py")
WITHOUT_TENSORFLOW = os.path.join(os.path.dirname(__file__), "without_tensorflow.py")
# Keras 3.10's JAX trainer fails once what trains changes within a `fit` (it records the state's
# shardings once, by count): the other backends are tested from Keras 3.15, the version this was built on.
KERAS_FOR_OTHERS = tuple(int(part) for part in keras.__version__.split(".")[:2]) >= (3, 15)
OTHERS = [name for name in ("jax", "torch") if KERAS_FOR_OTHERS and importlib.util.find_spec(name) is not None]


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("backends") / "start.npz"
    write_start_weights(path)
    return str(path)


def run_on(backends: list, parts: list, start: str, directory, extra: dict | None = None, runner: tuple = ()) -> dict:
    """`{backend: {part: results}}`: one process per backend runs every part, the backends side by side."""
    runs = {}
    for name in backends:
        out = directory / name
        out.mkdir()
        environment = {**os.environ, "KERAS_BACKEND": name, **(extra or {}).get(name, {})}
        command = [sys.executable, *runner, JOB, ",".join(parts), start, str(out)]
        runs[name] = (out, subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (out, process) in runs.items():
        _, errors = process.communicate(timeout=1200)
        assert process.returncode == 0, f"{parts} on {name}:\n{errors[-3000:]}"
        results[name] = {}
        for part in parts:
            with np.load(out / f"{part}.npz") as stored:
                results[name][part] = {key: stored[key] for key in stored.files}
    return results


@pytest.fixture(scope="module")
def every_part(start_weights, tmp_path_factory):
    return run_on(["tensorflow", *OTHERS], sorted(PARTS), start_weights, tmp_path_factory.mktemp("parts"))


@pytest.mark.skipif(not OTHERS, reason="neither JAX nor PyTorch is installed (or Keras < 3.15)")
@pytest.mark.parametrize("part", sorted(PARTS))
def test_part_equals_tensorflow(part, start_weights, every_part):
    check_equal(part, start_weights, {name: results[part] for name, results in every_part.items()})


def check_equal(part: str, start_weights: str, results: dict) -> None:
    """`results` maps each backend to its run of `part`; TensorFlow's is the reference."""
    for name, stored in results.items():
        assert str(stored["backend"]) == name
    backend_job.check_equal(part, start_weights, results, reference="tensorflow")


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_jax_without_tensorflow_installed_trains_every_part_that_needs_no_pipeline(start_weights, every_part, tmp_path):
    """As on a GPU machine with JAX alone (benchmarks/gpu.py): the callbacks, the Distiller and MixingModel."""
    parts = list(backend_job.WITHOUT_TENSORFLOW)
    alone = run_on(["jax"], parts, start_weights, tmp_path, runner=(WITHOUT_TENSORFLOW,))["jax"]
    for part in parts:
        check_equal(part, start_weights, {"tensorflow": every_part["tensorflow"][part], "jax": alone[part]})


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_jax_data_parallel_over_two_devices_equals_one_device(start_weights, every_part, tmp_path):
    """Two CPU devices on JAX: every part under DataParallel (fine_tune picks it itself, logged) ends with TensorFlow's weights."""
    parts = ["distiller", "ema", "fine_tune"]
    two = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "BACKEND_JOB_DISTRIBUTE": "1"}
    parallel = run_on(["jax"], parts, start_weights, tmp_path, extra={"jax": two})["jax"]
    for part in parts:
        assert int(parallel[part]["devices"]) == 2
        others = {k: v for k, v in parallel[part].items() if k != "devices"}
        check_equal(part, start_weights, {"tensorflow": every_part["tensorflow"][part], "jax": others})


def on_jax(code: str, cwd=None, returncode: int = 0, script=None) -> subprocess.CompletedProcess:
    """`code` run by a Python process on the JAX backend, which must exit with `returncode`; with `script` (a
    path), written there and run as if TensorFlow were not installed."""
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    command = [sys.executable, "-c", code]
    if script is not None:
        script.write_text(code)
        command = [sys.executable, WITHOUT_TENSORFLOW, str(script)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def labelled_lines(stdout: str, labels: tuple) -> dict:
    """What follows each label in the lines of `stdout` that start with one of `labels`."""
    return dict(line.split(" ", 1) for line in stdout.splitlines() if line.split(" ", 1)[0] in labels)


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_one_cycle_momentum_on_jax_joins_the_step_state_and_stays_out_of_the_saved_one(tmp_path):
    """JAX's step reads only the state `fit` hands it: the cycled beta_1 travels in the optimizer's, for the `fit`."""
    code = f"""
import keras, numpy as np
from keras_finetune.callbacks import OneCycle
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
model.compile(optimizer, "sparse_categorical_crossentropy")
x, y = np.ones((8, 3), "float32"), np.zeros(8, "int32")
model.fit(x, y, epochs=1, verbose=0)
count = len(optimizer.variables)
path = {str(tmp_path / "mid.keras")!r}
history = model.fit(x, y, batch_size=2, epochs=2, verbose=0,
                    callbacks=[OneCycle(0.1, cycle_momentum="auto"), keras.callbacks.ModelCheckpoint(path)])
print("momenta", *history.history["momentum"])
print("after", optimizer.inner_optimizer.beta_1, len(optimizer.variables) == count)
again = keras.saving.load_model(path)
print("reloaded", int(again.optimizer.iterations.numpy()), again.optimizer.inner_optimizer.beta_1)
"""
    result = on_jax(code)
    lines = labelled_lines(result.stdout, ("momenta", "after", "reloaded"))
    # OneCycleLR's momentum at the last step of each epoch (steps 3 and 7 of 8, pct_start 0.25: warm-up ends at step 1).
    expected = [0.95 + (0.85 - 0.95) / 2 * (1 + np.cos(np.pi * (step - 1) / 6)) for step in (3, 7)]
    np.testing.assert_allclose([float(v) for v in lines["momenta"].split()], expected, rtol=1e-6)
    assert lines["after"] == "0.9 True"  # the compiled float back, the variable out of the optimizer's list
    assert lines["reloaded"] == "9 0.9"  # saved at the last epoch end, within the fit: 1 + 8 steps, and the compiled float


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_ema_and_one_cycle_on_jax_run_inside_the_step_and_their_state_stays_out_of_the_saved_one(tmp_path):
    """EMA's update and OneCycle's next rate are traced into JAX's step, their variables in the state `fit` hands
    it: no sync of that state per step."""
    code = f"""
import keras, numpy as np
from keras_finetune.callbacks import EMA, OneCycle
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
model.compile(optimizer, "sparse_categorical_crossentropy")
x, y = np.random.default_rng(0).normal(size=(8, 3)).astype("float32"), np.arange(8) % 2
model.fit(x, y, epochs=1, verbose=0)
count = len(optimizer.variables)
syncs, sync = [0], model.jax_state_sync
def counting():
    syncs[0] += not model._jax_state_synced
    sync()
object.__setattr__(model, "jax_state_sync", counting)
for callback in (EMA(0.5, warmup=False), OneCycle(0.1, cycle_momentum="auto")):
    syncs[0] = 0
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[callback])
    print("syncs", type(callback).__name__, syncs[0])
path = {str(tmp_path / "mid.keras")!r}
model.fit(x, y, batch_size=2, epochs=2, verbose=0,
          callbacks=[OneCycle(0.1, cycle_momentum="auto"), EMA(0.9), keras.callbacks.ModelCheckpoint(path)])
print("after", optimizer.inner_optimizer.beta_1, len(optimizer.variables) == count, "train_step" in vars(model))
again = keras.saving.load_model(path)
print("reloaded", int(again.optimizer.iterations.numpy()), len(again.optimizer.variables) == count)
"""
    result = on_jax(code)
    lines = labelled_lines(result.stdout, ("syncs", "after", "reloaded"))
    # fit's own, once an epoch; 8 when EMA updated, or OneCycle set the rate, around each of the 8 steps
    assert [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("syncs")] == [["EMA", "2"], ["OneCycle", "2"]]
    assert lines["after"] == "0.9 True False"  # the optimizer's variables and the model's train_step as compiled
    assert lines["reloaded"] == "25 True"  # 1 + 8 + 8 + 8 steps, saved without the averages, the momentum or the table


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_jax_runs_the_callbacks_and_models_without_tensorflow():
    """With TensorFlow made unimportable, the parts that need no tf.data import and train on JAX."""
    code = """
import sys
sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError
import keras, numpy as np
import keras_finetune
from keras_finetune.callbacks import EMA, SWA, OneCycle, ProgressiveUnfreezing, update_batchnorm
from keras_finetune.heads import build_classifier
from keras_finetune.models import Distiller
inputs = keras.Input((6, 6, 1))
features = keras.layers.BatchNormalization()(keras.layers.Conv2D(3, 3)(inputs))
base = keras.Model(inputs, features, name="base")
model = build_classifier(base, 2, dropout=0.0)
model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
x = np.random.default_rng(0).normal(size=(32, 6, 6, 1)).astype("float32")
y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
before = [np.array(w) for w in model.get_weights()]
callbacks = [ProgressiveUnfreezing(base, {0: 0, 1: "all"}), OneCycle(0.05, cycle_momentum="auto"), SWA(start_epoch=1, bn_data=x)]
model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[EMA(0.9)])
update_batchnorm(model, x)
student = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
distiller = Distiller(student, model)
distiller.compile("adam", student_loss_fn="sparse_categorical_crossentropy")
distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
changed = sum(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
print("tensorflow" in sys.modules and sys.modules["tensorflow"] is not None, changed)
"""
    result = on_jax(code)
    imported, changed = result.stdout.split()[-2:]
    assert imported == "False" and int(changed) >= 6


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_tta_predict_without_tensorflow_draws_the_views_with_jax_and_blends_them(tmp_path):
    """Arrays and a PyDataset, with TensorFlow unimportable: the blend of the views equals the one computed by
    hand from `predict` of each view, in one model call per batch; the default crops are seeded."""
    code = """
import sys
import keras, numpy as np
from keras_finetune import tta_predict
keras.utils.set_random_seed(0)
class Count(keras.layers.Layer):
    def build(self, shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="int32")
    def call(self, x):
        self.seen.assign_add(keras.ops.shape(x)[0])
        return x
count = Count()
inputs = keras.Input((6, 6, 2))
model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(count(inputs))))
images = np.random.default_rng(0).uniform(0, 1, (10, 6, 6, 2)).astype("float32")
class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 4
    def __getitem__(self, index):
        return images[3 * index : 3 * index + 3], np.zeros(3)
def shift(batch, training=True):  # view k of each image gets +k
    return keras.ops.add(batch, keras.ops.cast(np.reshape(np.arange(batch.shape[0]) % 4, (-1, 1, 1, 1)), batch.dtype))
views = [images + k for k in range(4)]
views = [view[:, :, ::-1] if k % 2 else view for k, view in enumerate(views)]
expected = 0.75 * np.mean([model.predict(view, verbose=0) for view in views], axis=0) + 0.25 * model.predict(images, verbose=0)
for data in (images, Batches()):
    before = int(count.seen.numpy())
    got = tta_predict(model, data, shift, n=4, beta=0.25, batch_size=3)
    print("blend", float(np.abs(got - expected).max()), (int(count.seen.numpy()) - before) // len(images))
crops = tta_predict(model, images, n=6, seed=1)
print("crops", np.array_equal(crops, tta_predict(model, images, n=6, seed=1)),
      np.allclose(crops, tta_predict(model, images, n=6, seed=2)), float(np.abs(crops.sum(-1) - 1).max()) < 1e-5)
print("tensorflow", "tensorflow" in sys.modules)
"""
    lines = on_jax(code, script=tmp_path / "job.py").stdout.splitlines()
    blends = [line.split()[1:] for line in lines if line.startswith("blend")]
    assert len(blends) == 2
    for difference, passes in blends:
        assert float(difference) < 1e-6 and passes == "5"  # the plain image and 4 views
    assert labelled_lines("\n".join(lines), ("crops", "tensorflow")) == {"crops": "True False True", "tensorflow": "False"}


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_fine_tune_without_tensorflow_resumes_to_the_uninterrupted_weights(tmp_path):
    """Arrays go through ArrayBatches and MixingModel there: every part on, killed after epoch 1, resumed."""
    code = f"""
import sys
import keras, numpy as np
from keras_finetune import fine_tune

rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (40, 12, 12, 3)).astype("float32")
y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype("int32")

def base():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(keras.layers.Rescaling(1 / 255)(inputs)))
    return keras.Model(inputs, keras.layers.ReLU()(h), name="base")

class Killed(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("after epoch 1, before its backup")

def run(callbacks=()):
    return fine_tune(base(), (x, y), (x[:16], y[:16]), num_classes=2, epochs=4, frozen_epochs=1, batch_size=8, seed=3,
                     swa=None, ema=0.9, backup_dir={str(tmp_path / "backup")!r}, callbacks=list(callbacks), verbose=0)

whole = run()
try:
    run([Killed()])
except KeyboardInterrupt:
    pass
resumed = run()
print("epochs", len(whole.history["loss"]), len(resumed.history["loss"]))
print("same", all(np.array_equal(a, b) for a, b in zip(whole.model.get_weights(), resumed.model.get_weights())))
print("plain", type(whole.model).__name__, "tensorflow" in sys.modules)
whole.model.save({str(tmp_path / "model.keras")!r})
np.save({str(tmp_path / "predicted.npy")!r}, whole.model.predict(x, verbose=0))
"""
    lines = labelled_lines(on_jax(code, script=tmp_path / "job.py").stdout, ("epochs", "same", "plain"))
    assert lines == {"epochs": "4 3", "same": "True", "plain": "Functional False"}
    reload = f"""
import keras, numpy as np
model = keras.saving.load_model({str(tmp_path / "model.keras")!r})
x = np.random.default_rng(0).uniform(0, 255, (40, 12, 12, 3)).astype("float32")
print("equal", np.allclose(model.predict(x, verbose=0), np.load({str(tmp_path / "predicted.npy")!r}), rtol=1e-5, atol=1e-6))
"""
    assert labelled_lines(on_jax(reload).stdout, ("equal",)) == {"equal": "True"}


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_mixing_model_compiles_the_jax_step_that_keras_would_leave_uncompiled():
    """Keras's rotation, zoom and translation layers say supports_jit=False (for TensorFlow's XLA): "auto"
    leaves a JAX step holding them uncompiled, about 10 times slower. MixingModel's augmentation compiles."""
    code = """
import keras
from keras_finetune.layers import image_augmentation
from keras_finetune.models import MixingModel
def classifier():
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
inside = keras.Sequential([keras.Input((8, 8, 3)), image_augmentation(), classifier()])
inside.compile("adam", "mse")
wrapped = MixingModel(classifier(), augmentation=image_augmentation())
wrapped.compile("adam", "mse")
eager = MixingModel(classifier(), augmentation=image_augmentation())
eager.compile("adam", "mse", run_eagerly=True)
print("jit", inside.jit_compile, wrapped.jit_compile, eager.jit_compile)
"""
    assert labelled_lines(on_jax(code).stdout, ("jit",)) == {"jit": "False True False"}


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_on_jax_a_fit_that_dies_leaves_no_step_of_one_cycle_or_ema_to_the_next():
    """On JAX both trace their per-step work into the train step; a `fit` that raised must not leave it
    there (test_one_cycle and test_ema check the same on every backend, CI runs them on TensorFlow)."""
    code = """
import keras, numpy as np
from keras_finetune import backend
from keras_finetune.callbacks import EMA, OneCycle
class Dies(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            raise RuntimeError("the fit dies")
class Rates(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        backend.sync(self.model)
        print("rate", float(self.model.optimizer.learning_rate.numpy()))
x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
for callback in (OneCycle(0.5), EMA(0.9)):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.optimizer.build(model.trainable_variables)
    own = len(model.optimizer.variables)
    try:
        model.fit(x, x[:, :2], batch_size=4, epochs=2, verbose=0, callbacks=[callback, Dies()])
    except RuntimeError:
        print("died")
    model.optimizer.learning_rate.assign(1e-3)
    model.fit(x, x[:, :2], batch_size=4, epochs=1, verbose=0, callbacks=[Rates()])
    print("extra", len(model.optimizer.variables) - own)
"""
    lines = on_jax(code).stdout.split()
    assert lines.count("died") == 2 and [lines[i + 1] for i, word in enumerate(lines) if word == "extra"] == ["0", "0"]
    rates = [float(lines[i + 1]) for i, word in enumerate(lines) if word == "rate"]
    assert rates == pytest.approx([1e-3] * 8)  # the next fit's own rate, not the dead cycle's


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_command_without_tensorflow_says_what_to_install(tmp_path):
    code = """
import sys
sys.modules["tensorflow"] = None
sys.argv = ["keras-finetune", "train", "--data", "photos", "--epochs", "1"]
import keras_finetune_cli
sys.exit(keras_finetune_cli.main())
"""
    result = on_jax(code, cwd=tmp_path, returncode=1)
    assert "needs TensorFlow, which is not installed" in result.stderr
    assert 'pip install "keras-finetune[tensorflow]"' in result.stderr


@pytest.mark.skipif("jax" not in OTHERS, reason="JAX is not installed (or Keras < 3.15)")
def test_jax_refuses_a_strategy_it_cannot_use_and_a_pipeline_it_cannot_reseed():
    code = """
import keras
from keras_finetune import backend
from keras_finetune.layers.data_layer import pipeline_seed_states
for bad, call in (("mirrored", lambda: backend.strategy("mirrored")),
                  ("dropout", lambda: pipeline_seed_states(keras.layers.Pipeline([keras.layers.Dropout(0.5, seed=1)])))):
    try:
        call()
    except TypeError as error:
        print(bad, "refused:", error)
print("flip states:", len(pipeline_seed_states(keras.layers.Pipeline([keras.layers.RandomFlip(seed=1)]))))
"""
    result = on_jax(code)
    assert "mirrored refused: On the JAX backend `strategy` must be a keras.distribution.DataParallel" in result.stdout
    assert "Received: strategy='mirrored'" in result.stdout
    assert "dropout refused:" in result.stdout and "cannot be reseeded from" in result.stdout
    assert "flip states: 1" in result.stdout


def test_no_training_callback_makes_keras_wait_for_each_step():
    """A callback with an `on_train_batch_end` makes Keras's JAX and PyTorch `fit` wait for every step's logs.

    Without one, Keras runs the batch-end hooks on a thread and queues the
    next step while the device runs this one; EMA's had cost 19 % of a
    MobileNetV3Small step on an H200 (benchmarks/RESULTS.md). LRFinder
    reads each step's loss: it waits by design.
    """
    from keras_finetune import callbacks

    default = keras.callbacks.Callback
    training = [callbacks.CosineAnnealing, callbacks.EMA, callbacks.EpochSeeds, callbacks.OneCycle,
                callbacks.ProgressiveUnfreezing, callbacks.StepLR, callbacks.StopMixing, callbacks.SWA]
    for callback in training:
        for hook in ("on_train_batch_end", "on_batch_end"):
            assert getattr(callback, hook) is getattr(default, hook), f"{callback.__name__}.{hook}"
