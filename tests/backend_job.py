"""One part trained on whichever Keras backend `KERAS_BACKEND` names, for test_backends.py.

    KERAS_BACKEND=jax python tests/backend_job.py PART WEIGHTS_IN RESULT_OUT

Every run starts from the weights in WEIGHTS_IN (written by the test, so that
each backend starts from the same numbers, which backends' initialisers do not
draw alike), trains a small conv classifier with BatchNorm on fixed data in a
fixed order with the part under test, and writes to RESULT_OUT every weight of
the model after `fit` and whatever the part logs. PART is one of `PARTS`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_finetune import lr_find  # noqa: E402
from keras_finetune.callbacks import (  # noqa: E402
    EMA, SWA, CosineAnnealing, OneCycle, ProgressiveUnfreezing, StepLR, update_batchnorm,
)
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.models import Distiller  # noqa: E402

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
    return fit(classifier, [OneCycle(0.1, cycle_momentum=False)])


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


PARTS = {
    "unfreezing": unfreezing, "swa": swa, "ema": ema, "one_cycle": one_cycle, "schedules": schedules,
    "batchnorm": batchnorm, "finder": finder, "distiller": distiller,
    "distiller_cached": lambda classifier, base: distiller(classifier, base, cached=True),
}


def main(part: str, weights_in: str, result_out: str) -> None:
    classifier, base = model()
    with np.load(weights_in) as stored:
        classifier.set_weights([stored[f"w{index}"] for index in range(len(stored.files))])
    logs = PARTS[part](classifier, base)
    weights = {f"w{index}": np.asarray(w) for index, w in enumerate(classifier.get_weights())}
    np.savez(result_out, backend=keras.backend.backend(), **weights, **logs)


if __name__ == "__main__":
    main(*sys.argv[1:])
