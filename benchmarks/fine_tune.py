"""What `fine_tune` costs per epoch over the same pipeline and model in a bare `fit`.

`keras.applications.MobileNetV3Small` (`weights=None`, 96x96x3 inputs,
`include_top=False`) under `build_classifier`'s dropout head, 10 classes, 512
images in batches of 64, `image_augmentation()` and `MixUpOrCutMix` mapped in
parallel. The reference is what a user writes by hand: that pipeline, the whole
network trainable, Adam, `fit`; then the same with the base's BatchNorm layers
kept frozen (`unfreeze(base)`), as `fine_tune` keeps them. Against those, `fine_tune` with every part on (the
base frozen for a quarter of the epochs, then unfrozen; cosine schedule with
warm-up; SWA over the last quarter; label smoothing). Runs alternate; median
seconds per epoch over every epoch but each run's first (it traces). The frozen
epochs are cheaper (no gradients for the base), so both medians are also given
for the unfrozen epochs alone.

    python benchmarks/fine_tune.py [--rounds 2] [--epochs 8]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import EpochTimer  # noqa: E402

from keras_finetune import fine_tune, unfreeze  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.layers import MixUpOrCutMix, image_augmentation  # noqa: E402

IMAGES, BATCH, CLASSES = 512, 64, 10


def data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (IMAGES, 96, 96, 3)).astype("float32"), rng.integers(0, CLASSES, IMAGES)


def model():
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV3Small(input_shape=(96, 96, 3), include_top=False, weights=None)
    return build_classifier(base, CLASSES), base


def bare(x, y, epochs, keep_batchnorm_frozen=False):
    classifier, base = model()
    if keep_batchnorm_frozen:
        unfreeze(base)  # everything trains but BatchNorm, as in fine_tune's unfrozen phase
    augment, mixing = image_augmentation(), MixUpOrCutMix(num_classes=CLASSES)
    train = (
        tf.data.Dataset.from_tensor_slices((x, y)).shuffle(IMAGES).batch(BATCH)
        .map(lambda images, labels: (augment(images, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE)
        .map(mixing, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    )
    classifier.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    classifier.fit(train, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds, [True] * epochs


def recipe(x, y, epochs):
    classifier, base = model()
    timer = EpochTimer()
    # The random base stands for a pretrained one: its BatchNorm stays frozen, as fine_tune keeps a pretrained base's.
    history = fine_tune(classifier, (x, y), base_model=base, epochs=epochs, batch_size=BATCH, callbacks=[timer],
                        freeze_batchnorm=True, verbose=0)
    return timer.seconds, [phase > 0 for phase in history.history["phase"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    x, y = data()
    runs = {
        "bare fit": bare,
        "bare fit, BatchNorm frozen": lambda *a: bare(*a, keep_batchnorm_frozen=True),
        "fine_tune": recipe,
    }
    seconds, unfrozen = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times, trains_base = run(x, y, args.epochs)
            seconds[name] += times[1:]
            unfrozen[name] += [t for t, full in zip(times[1:], trains_base[1:]) if full]
    print(f"MobileNetV3Small 96x96, {IMAGES} images, batch {BATCH}, {args.rounds} rounds of {args.epochs} epochs "
          f"({tf.config.list_physical_devices()[-1].device_type}, {keras.backend.backend()} backend)")
    reference = np.median(seconds["bare fit"])
    for name in seconds:
        every, full = np.median(seconds[name]), np.median(unfrozen[name])
        print(f"  {name:26s} {every:6.3f} s/epoch (ratio {every / reference:.3f}); "
              f"base trainable: {full:6.3f} s/epoch (ratio {full / np.median(unfrozen['bare fit']):.3f})")


if __name__ == "__main__":
    main()
