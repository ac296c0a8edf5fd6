"""Parts trained on whichever Keras backend `KERAS_BACKEND` names, for test_backends.py.

    KERAS_BACKEND=jax python tests/backend_job.py PART[,PART...] WEIGHTS_IN OUT_DIR

Each part starts from the weights in WEIGHTS_IN (written by the test, so that
each backend starts from the same numbers, which backends' initialisers do not
draw alike), trains a small conv classifier with BatchNorm on fixed data in a
fixed order, and writes to OUT_DIR/PART.npz every weight of the model after
`fit` and whatever the part logs. PART is one of `PARTS`. One process runs
them all, one after the other (a process per part spent most of its time
importing TensorFlow and JAX).
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_finetune import lr_find  # noqa: E402
from keras_finetune.callbacks import (  # noqa: E402
    EMA, SWA, CosineAnnealing, OneCycle, ProgressiveUnfreezing, StepLR, StopMixing, update_batchnorm,
)
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.layers import CutMix, MixUp, MixUpOrCutMix, RandomResizedCrop, image_augmentation  # noqa: E402
from keras_finetune.models import Distiller, MixingModel  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = RNG.normal(0.5, 1.0, (48, 8, 8, 1)).astype("float32")
LABELS = (IMAGES[:, :4].mean(axis=(1, 2, 3)) > IMAGES[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
EPOCHS, BATCH = 4, 8


def model() -> tuple:
    """(classifier, base): conv-BN-relu-conv under a head without dropout (no random draw in training)."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv0")(inputs)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(x)
    base = keras.Model(inputs, x, name="base")
    return build_classifier(base, 2, dropout=0.0), base


def fit(classifier, callbacks, optimizer=None) -> dict:
    classifier.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    history = classifier.fit(IMAGES, LABELS, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    return {f"log_{name}": np.asarray(values, "float64") for name, values in history.history.items()}


def unfreezing(classifier, base) -> dict:
    phases = ProgressiveUnfreezing(base, {0: 0, 1: 1, 2: "all"}, learning_rates={0: 0.05, 1: 0.02, 2: 0.01}, warmup_steps=3)
    return fit(classifier, [phases], keras.optimizers.Adam(0.01))


def swa(classifier, base) -> dict:
    return fit(classifier, [SWA(start_epoch=1, swa_lr=0.01, bn_data=IMAGES)])


def ema(classifier, base) -> dict:
    phases = ProgressiveUnfreezing(base, {0: 0, 2: "all"})
    return fit(classifier, [phases, EMA(0.9, every_n_steps=2, start_step=3, validation_data=(IMAGES, LABELS))])


def one_cycle(classifier, base) -> dict:
    # Before ProgressiveUnfreezing, which may give the model another optimizer: the momentum must follow it.
    return fit(classifier, [OneCycle(0.1, restart_per_phase=True), ProgressiveUnfreezing(base, {0: 0, 2: "all"})])


def schedules(classifier, base) -> dict:
    phases = ProgressiveUnfreezing(base, {0: 0, 2: "all"}, learning_rates={0: 0.05, 2: 0.02})
    return fit(classifier, [phases, CosineAnnealing(EPOCHS, warmup_epochs=1)]) | fit(classifier, [StepLR(1, 0.5)])


def batchnorm(classifier, base) -> dict:
    classifier.get_layer("base").get_layer("conv0").kernel.assign(classifier.get_layer("base").get_layer("conv0").kernel * 2.0)
    update_batchnorm(classifier, IMAGES, batch_size=10)
    return {}


def finder(classifier, base) -> dict:
    classifier.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    found = lr_find(classifier, (IMAGES, LABELS), min_lr=1e-4, max_lr=1.0, steps=12, batch_size=BATCH)
    return {"rates": np.asarray(found.learning_rates), "losses": np.asarray(found.losses)}


def distiller(classifier, base, cached: bool = False) -> dict:
    """The student (a classifier of the same inputs) learns from `classifier`, frozen, as its teacher."""
    student = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, name="s_conv"), keras.layers.BatchNormalization(name="s_bn"),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="s_dense")],
        name="student",
    )
    student.set_weights([np.random.default_rng(2).normal(0.0, 0.3, w.shape).astype("float32") for w in student.get_weights()])
    student.get_layer("s_bn").moving_variance.assign(np.ones(3, "float32"))
    trainer = Distiller(student, classifier)
    trainer.compile(
        keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"], alpha=0.3, temperature=2.0,
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    if cached:  # the teacher's outputs computed once, carried by a tf.data pipeline
        import tensorflow as tf

        data = trainer.cache_teacher_outputs(tf.data.Dataset.from_tensor_slices((IMAGES, LABELS)).batch(BATCH))
        history = trainer.fit(data, epochs=2, verbose=0)
    else:
        history = trainer.fit(IMAGES, LABELS, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, validation_data=(IMAGES[:16], LABELS[:16]))
    # The teacher (the classifier) must come out unchanged; the student's weights are the result.
    return {f"log_{name}": np.asarray(values, "float64") for name, values in history.history.items()} | {
        f"student_{index}": np.asarray(w) for index, w in enumerate(student.get_weights())
    }


def crop(classifier, base) -> dict:
    """RandomResizedCrop: fixed boxes, inference mode, and its random draws mapped over a tf.data pipeline."""
    import tensorflow as tf

    images = RNG.uniform(0, 255, (4, 9, 7, 3)).astype("float32")
    boxes = np.array([[0, 0, 9, 7], [1, 2, 5, 3], [3, 1, 1, 4], [2, 2, 6, 5]], "int32")
    layer = RandomResizedCrop(5, 4, seed=3)
    pipeline = tf.data.Dataset.from_tensor_slices(images).batch(2).map(lambda x: layer(x, training=True))
    # First: on TensorFlow the pipeline draws from the layer's own generator, which the eager draw below advances.
    piped = np.concatenate([np.asarray(batch) for batch in pipeline])
    drawn = layer.get_random_transformation(images)["boxes"]
    drawn = np.asarray(keras.ops.convert_to_numpy(drawn))
    inside = (drawn[:, 0] >= 0) & (drawn[:, 1] >= 0) & (drawn[:, 0] + drawn[:, 2] <= 9) & (drawn[:, 1] + drawn[:, 3] <= 7)
    in_model = keras.Sequential([keras.Input((9, 7, 3)), RandomResizedCrop(5, 4, seed=3)])
    return {
        "fixed": keras.ops.convert_to_numpy(layer.transform(images, boxes)),
        "one_pixel": keras.ops.convert_to_numpy(RandomResizedCrop(1, 1).transform(images, boxes)),
        "inference": keras.ops.convert_to_numpy(layer(images, training=False)),
        "pipeline": piped,
        "boxes_inside": inside.astype("float32"),
        "in_model_shape": np.asarray(keras.ops.convert_to_numpy(in_model(images, training=True)).shape),
    }


def mixing(classifier, base) -> dict:
    """The mixing layers: injected draws (exact), and the random draws mapped over a tf.data pipeline."""
    import tensorflow as tf

    images = RNG.uniform(0, 255, (6, 5, 4, 3)).astype("float32")
    labels = np.array([0, 1, 2, 1, 0, 2], "int32")
    permutation = np.array([3, 0, 5, 1, 2, 4], "int32")
    one_hot = np.eye(3, dtype="float32")[labels]
    mixup, cutmix = MixUp(num_classes=3, seed=4), CutMix(num_classes=3, seed=5)
    boxes = np.array([[0, 0, 2, 2], [1, 1, 5, 4], [0, 0, 0, 0], [2, 1, 4, 3], [0, 2, 5, 4], [3, 0, 5, 1]], "int32")
    lam = np.linspace(0.1, 0.9, 6).astype("float32")
    both = MixUpOrCutMix(num_classes=3, label_smoothing=0.1, seed=6)
    pipeline = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3).map(both)
    piped = [np.concatenate([np.asarray(batch[index]) for batch in pipeline]) for index in (0, 1)]
    stopped = MixUp(num_classes=3, seed=7)
    stopped.enabled.assign(False)
    mixed, smoothed = stopped(images, labels)
    return {
        "mixup": keras.ops.convert_to_numpy(mixup.transform(images, one_hot, {"lam": lam, "permutation": permutation})[0]),
        "cutmix": keras.ops.convert_to_numpy(cutmix.transform(images, one_hot, {"boxes": boxes, "permutation": permutation})[0]),
        "cutmix_labels": keras.ops.convert_to_numpy(cutmix.transform(images, one_hot, {"boxes": boxes, "permutation": permutation})[1]),
        "pipeline_images": piped[0], "pipeline_labels": piped[1],
        "stopped": keras.ops.convert_to_numpy(mixed), "stopped_labels": keras.ops.convert_to_numpy(smoothed),
    }


def mixing_model(classifier, base) -> dict:
    """MixingModel with MixUp turned off (no random draw): training equals fitting the classifier on one-hot labels."""
    layer = MixUp(num_classes=2, label_smoothing=0.2, seed=0)
    trainer = MixingModel(classifier, layer)
    trainer.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy", metrics=["accuracy"])
    history = trainer.fit(
        IMAGES, LABELS, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[StopMixing([layer], epoch=0)],
        validation_data=(IMAGES[:16], LABELS[:16]),
    )
    # Mixing on, in a copy: the draws differ between backends, but each step must draw anew, its seed
    # advancing in fit's state (on JAX too), as many times on every backend.
    mixing_on = MixUp(num_classes=2, seed=0)
    copy = MixingModel(keras.models.clone_model(classifier), mixing_on)
    copy.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
    copy.fit(IMAGES, LABELS, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return {f"log_{name}": np.asarray(values, "float64") for name, values in history.history.items()} | {
        "seed_state": keras.ops.convert_to_numpy(mixing_on.generator.state).astype("float64"),
    }


def recipe(classifier, base) -> dict:
    """fine_tune with every part of its pipeline (augmentation, MixUp/CutMix) and SWA, seeded.

    Pixels in [0, 1] keep the softmax off saturation: there TensorFlow's loss alone recovers the logits.
    """
    from keras_finetune import fine_tune  # its pipeline is tf.data: imported by the parts that need TensorFlow alone

    pixels = np.clip(IMAGES * 0.25 + 0.5, 0.0, 1.0)
    history = fine_tune(
        classifier, (pixels, LABELS), validation_data=(pixels[:16], LABELS[:16]), base_model=base, epochs=4,
        batch_size=BATCH, learning_rate=0.01, freeze_batchnorm=True, seed=0, verbose=0,
        augmentation={"value_range": (0, 1)},
    )
    return {f"log_{name}": np.asarray(values, "float64") for name, values in history.history.items()}


def recipe_in_step(classifier, base) -> dict:
    """fine_tune on ArrayBatches, as arrays go where TensorFlow is missing: the mixing in the step (switched
    off: the draws of a step differ between backends), SWA, the one-hot validation batches."""
    from keras_finetune import fine_tune
    from keras_finetune.array_batches import ArrayBatches

    pixels = np.clip(IMAGES * 0.25 + 0.5, 0.0, 1.0)
    layer = MixUp(num_classes=2, label_smoothing=0.2, seed=0)
    history = fine_tune(
        classifier, ArrayBatches(pixels, LABELS, BATCH, 2, seed=0), validation_data=(pixels[:16], LABELS[:16]),
        base_model=base, epochs=4, learning_rate=0.01, freeze_batchnorm=True, seed=0, verbose=0,
        augmentation=False, mixing=layer, callbacks=[StopMixing([layer], epoch=0)], swa=2,
    )
    return {f"log_{name}": np.asarray(values, "float64") for name, values in history.history.items()}


def augmentation(classifier, base) -> dict:
    """tta_predict (its views drawn in a tf.data map), and image_augmentation inside a model on the backend's ops."""
    from keras_finetune import tta_predict

    pixels = np.clip(IMAGES * 60.0 + 100.0, 0.0, 255.0)
    views = tta_predict(classifier, pixels[:12] / 255.0, n=4, beta=0.25, seed=1, batch_size=5)
    augment = image_augmentation(6, 6, rotation=10.0, hue=None, saturation=None, seed=2)
    model = keras.Sequential([keras.Input((8, 8, 1)), augment, keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.set_weights([np.full(w.shape, 0.01, "float32") for w in model.get_weights()])
    drawn = keras.ops.convert_to_numpy(augment(pixels[:8], training=True))
    return {
        "tta": views,
        "inference": keras.ops.convert_to_numpy(model(pixels[:8], training=False)),
        "drawn_shape": np.asarray(drawn.shape, "float64"),
        "drawn_in_range": np.asarray([drawn.min() >= 0.0 and drawn.max() <= 255.0 and np.isfinite(drawn).all()], "float64"),
    }


PARTS = {
    "unfreezing": unfreezing, "swa": swa, "ema": ema, "one_cycle": one_cycle, "schedules": schedules,
    "batchnorm": batchnorm, "finder": finder, "distiller": distiller,
    "distiller_cached": lambda classifier, base: distiller(classifier, base, cached=True),
    "crop": crop,
    "mixing": mixing,
    "mixing_model": mixing_model,
    "fine_tune": recipe,
    "fine_tune_in_step": recipe_in_step,
    "augmentation": augmentation,
}


# The parts whose training and data need no TensorFlow (benchmarks/gpu.py runs them where none is installed).
WITHOUT_TENSORFLOW = ("batchnorm", "distiller", "ema", "fine_tune_in_step", "mixing_model", "one_cycle", "schedules", "swa", "unfreezing")


def write_start_weights(path) -> None:
    """The weights every run starts from, drawn here since backends' initialisers do not draw alike."""
    classifier, _ = model()
    rng = np.random.default_rng(1)
    weights = [rng.normal(0.0, 0.3, w.shape).astype(w.dtype) for w in classifier.get_weights()]
    for index, variable in enumerate(classifier.weights):
        if "moving_variance" in variable.path:  # statistics a pretrained base could have
            weights[index] = rng.uniform(0.5, 1.5, variable.shape).astype("float32")
    np.savez(path, **{f"w{index}": w for index, w in enumerate(weights)})


def check_equal(part: str, start_weights: str, results: dict, reference: str, rtol=2e-4, atol=2e-5) -> None:
    """Each run of `part` in `results` (`{label: stored}`) ends where the `reference` run does, which did train."""
    expected = results[reference]
    with np.load(start_weights) as stored:
        start = [stored[f"w{index}"] for index in range(len(stored.files))]
    moved = [index for index, w in enumerate(start) if not np.allclose(expected[f"w{index}"], w)]
    if part == "finder":  # the LR range test puts every weight back; its losses are what it gives
        assert not moved and np.ptp(expected["losses"]) > 0.01
    elif part in ("crop", "mixing", "augmentation"):  # no training: the layers' outputs are what they give
        assert not moved and expected.get("boxes_inside", np.ones(1)).all() and expected.get("drawn_in_range", np.ones(1)).all()
    elif part.startswith("distiller"):  # the teacher is frozen; the student learns
        assert not moved and np.ptp(expected["log_distillation_loss"]) > 0
    else:
        assert moved, f"{part} changed no weight: the comparison would prove nothing"
    if part == "mixing_model":  # 2 epochs of 6 steps, each drawing anew
        assert expected["seed_state"][1] > 0
    for label, other in results.items():
        assert sorted(other) == sorted(expected)
        for key in expected:
            if key != "backend":
                np.testing.assert_allclose(other[key], expected[key], rtol=rtol, atol=atol, err_msg=f"{part}: {key} on {label}")


def run(part: str, weights_in: str, result_out: str) -> None:
    keras.backend.clear_session()
    distribution = None
    if os.environ.get("BACKEND_JOB_DISTRIBUTE"):  # JAX: every part under DataParallel over all devices
        from keras_finetune import backend

        distribution = backend.strategy(None)
    with distribution.scope() if distribution is not None else contextlib.nullcontext():
        classifier, base = model()
        with np.load(weights_in) as stored:
            classifier.set_weights([stored[f"w{index}"] for index in range(len(stored.files))])
        logs = PARTS[part](classifier, base)
    if distribution is not None:
        logs["devices"] = np.asarray(distribution.device_mesh.devices.size)
    weights = {f"w{index}": np.asarray(w) for index, w in enumerate(classifier.get_weights())}
    np.savez(result_out, backend=keras.backend.backend(), **weights, **logs)


def main(parts: str, weights_in: str, out_dir: str) -> None:
    for part in parts.split(","):
        run(part, weights_in, os.path.join(out_dir, f"{part}.npz"))


if __name__ == "__main__":
    main(*sys.argv[1:])
