"""The bundled transfer task behind `keras-finetune demo`.

scikit-learn ships the 8x8 handwritten digits (1,797 images), so the demo
downloads nothing. A small convolutional base (BatchNorm momentum 0.9) is
pre-trained on digits 0-4 and plays the part of the "pretrained network".
The target task is digits 5-9 from a few labelled images per class; accuracy
is measured on every other target image. Each recipe is compared with the same
network trained from scratch with the same head, loss and epochs; the
fine-tuned model, with weights averaged by SWA over its last epochs, is then
distilled into a 5x smaller network, shown next to that network trained from
scratch.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from keras_finetune.callbacks import SWA, ProgressiveUnfreezing
from keras_finetune.freezing import freeze, trainable_summary
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix, image_augmentation
from keras_finetune.losses import SparseCategoricalCrossentropy
from keras_finetune.models import Distiller

__all__ = [
    "load_digits_images",
    "build_base",
    "pretrain_base",
    "train_classifier",
    "copy_base",
    "augmented_pipeline",
    "unfreezing_schedule",
    "distil_student",
    "run_demo",
]

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
RECIPES = (
    "from scratch (same network, dropout head, label smoothing)",
    "frozen pretrained base + dropout head + label smoothing",
    "+ ProgressiveUnfreezing: whole base from half-way, one fit",
    "+ SWA: weights averaged over the last quarter of the epochs",
    "+ augmentation (1-pixel shifts) and MixUp/CutMix on half the batches",
    "smaller student (5x fewer weights) from scratch, same head",
    "smaller student distilled from the SWA model (Distiller)",
)
STUDENT_FILTERS = (8, 16)
# Distillation settings, chosen on 3 seeds (benchmarks/RESULTS.md lists the others tried).
DISTILLATION = {"alpha": 0.5, "temperature": 2.0}
# SWA settings, chosen on seeds 0-4 and confirmed on seeds 5-9 (benchmarks/RESULTS.md).
# The base's BatchNorm layers stay frozen, so no BatchNorm pass is needed.
SWA_SETTINGS = {"start_epoch": 0.75, "swa_lr": 1e-3}
# Digits must not be flipped and are grey: a shift of up to one pixel only. Rotation
# ±10° and zoom ±10% on top cost 4 points at 8x8 pixels (86.4 against 90.4 on seeds
# 0-4); half the batches mixed did best there (benchmarks/RESULTS.md).
AUGMENTATION = {
    "flip": None, "rotation": None, "zoom": None, "translation": 0.125,
    "brightness": None, "contrast": None, "saturation": None, "hue": None,
}
MIXING = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 0.5}
LABEL_SMOOTHING = 0.1
BATCH_SIZE = 16


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as float32 images in [0, 1], shape (N, 8, 8, 1)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "The demo uses scikit-learn's bundled digits: "
            'pip install "keras-finetune[demo]" (or scikit-learn).'
        ) from None
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    return images, digits.target.astype("int32")


def build_base(seed: int, filters: tuple[int, ...] = (32, 64, 64)) -> keras.Model:
    """Conv blocks with BatchNorm (momentum 0.9), pooling after the second, no classifier."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for index, filters in enumerate(filters):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        if index == 1:
            x = keras.layers.MaxPooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="digits_base")


def pretrain_base(images, labels, seed: int, epochs: int = 15) -> keras.Model:
    """Train a fresh base with a linear softmax head on the source digits."""
    base = build_base(seed)
    model = build_classifier(
        base, len(SOURCE_CLASSES), hidden_units=(), dropout=0.0, pooling="flatten"
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=64, verbose=0)
    return base


def train_classifier(
    base, images, labels, seed: int, epochs: int = 100, callbacks=None, augment: bool = False
) -> keras.Model:
    """Dropout head on `base`, label smoothing 0.1, Adam 1e-3, batches of 16.

    With `augment`, the batches go through `image_augmentation(**AUGMENTATION)`
    and `MixUpOrCutMix(**MIXING)` (which smooths the labels) in a tf.data
    pipeline; otherwise the loss smooths the integer labels.
    """
    keras.utils.set_random_seed(seed)
    model = build_classifier(base, len(TARGET_CLASSES), pooling="flatten")
    if augment:
        loss = keras.losses.CategoricalCrossentropy()
        # One endless iterator: a fresh one per epoch costs more than the epoch here.
        # The pipeline shuffles; shuffle=False keeps Keras from warning that it cannot.
        data = (augmented_pipeline(images, labels, seed).repeat(),)
        fit_args = {"steps_per_epoch": -(-len(images) // BATCH_SIZE), "shuffle": False}
    else:
        loss = SparseCategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING)
        data, fit_args = (images, labels), {"batch_size": BATCH_SIZE}
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(*data, epochs=epochs, verbose=0, callbacks=callbacks, **fit_args)
    return model


def augmented_pipeline(images, labels, seed: int, batch_size: int = BATCH_SIZE) -> tf.data.Dataset:
    """Shuffled batches, augmented, then mixed by MixUp or CutMix, labels one-hot and smoothed."""
    augment = image_augmentation(seed=seed, **AUGMENTATION)
    mixing = MixUpOrCutMix(num_classes=len(TARGET_CLASSES), label_smoothing=LABEL_SMOOTHING, seed=seed, **MIXING)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed).batch(batch_size)
    return dataset.map(lambda x, y: (augment(x, training=True), y)).map(mixing)


def copy_base(base: keras.Model) -> keras.Model:
    """A separate copy of a pretrained base, weights included, every recipe its own."""
    copy = keras.models.clone_model(base)
    copy.set_weights(base.get_weights())
    return copy


def unfreezing_schedule(epochs: int, rate: float = 3e-4) -> tuple[dict, dict]:
    """Head only for the first half, then the whole base (BatchNorm frozen) at `rate`."""
    return {0: 0, epochs // 2: "all"}, {0: 1e-3, epochs // 2: rate}


def distil_student(base, teacher, images, labels, seed: int, epochs: int = 100) -> keras.Model:
    """`train_classifier`'s model on `base`, trained by a `Distiller` against `teacher`."""
    keras.utils.set_random_seed(seed)
    student = build_classifier(base, len(TARGET_CLASSES), pooling="flatten")
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.Adam(1e-3),
        student_loss_fn=SparseCategoricalCrossentropy(label_smoothing=0.1),
        **DISTILLATION,
    )
    distiller.fit(images, labels, epochs=epochs, batch_size=BATCH_SIZE, verbose=0)
    return student


def _few_shot_split(labels, shots: int, rng) -> tuple[np.ndarray, np.ndarray]:
    train = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in np.unique(labels)]
    )
    return train, np.setdiff1d(np.arange(len(labels)), train)


def _accuracy(model, images, labels) -> float:
    # A direct call: `predict` would trace a new function for every model.
    predictions = np.argmax(keras.ops.convert_to_numpy(model(images, training=False)), axis=-1)
    return float(np.mean(predictions == labels))


def run_demo(
    shots: int = 3,
    seeds: int = 3,
    epochs: int = 100,
    pretrain_epochs: int = 15,
    print_fn=print,
) -> dict:
    """Run every recipe for each seed and print a table of held-out accuracy.

    Returns:
        A dict from recipe name to a list of `(accuracy, seconds)`, one per seed.
    """
    images, labels = load_digits_images()
    source = np.isin(labels, SOURCE_CLASSES)
    target_images, target_labels = images[~source], labels[~source] - min(TARGET_CLASSES)
    results = {recipe: [] for recipe in RECIPES}
    for seed in range(seeds):
        train, test = _few_shot_split(target_labels, shots, np.random.default_rng(seed))
        pretrained = pretrain_base(images[source], labels[source], seed, pretrain_epochs)
        unfrozen, averaged, augmented = (copy_base(pretrained) for _ in range(3))
        schedule, rates = unfreezing_schedule(epochs)
        setups = {
            RECIPES[0]: (build_base(seed + 1000), None, False),
            RECIPES[1]: (freeze(pretrained), None, False),
            RECIPES[2]: (unfrozen, [ProgressiveUnfreezing(unfrozen, schedule, rates)], False),
            RECIPES[3]: (averaged, [ProgressiveUnfreezing(averaged, schedule, rates), SWA(**SWA_SETTINGS)], False),
            RECIPES[4]: (augmented, [ProgressiveUnfreezing(augmented, schedule, rates), SWA(**SWA_SETTINGS)], True),
        }
        models = {}
        for recipe, (base, callbacks, augment) in setups.items():
            start = time.perf_counter()
            models[recipe] = train_classifier(
                base, target_images[train], target_labels[train], seed, epochs, callbacks, augment
            )
            seconds = time.perf_counter() - start
            results[recipe].append((_accuracy(models[recipe], target_images[test], target_labels[test]), seconds))
            if seed == 0 and recipe == RECIPES[1]:
                print_fn(f"What trains in the fine-tuned model:\n{trainable_summary(models[recipe])}\n")
        teacher = models[RECIPES[3]]
        for recipe, distil in ((RECIPES[5], False), (RECIPES[6], True)):
            base, data = build_base(seed + 2000, STUDENT_FILTERS), (target_images[train], target_labels[train])
            start = time.perf_counter()
            if distil:
                student = distil_student(base, teacher, *data, seed, epochs)
            else:
                student = train_classifier(base, *data, seed, epochs)
            seconds = time.perf_counter() - start
            results[recipe].append((_accuracy(student, target_images[test], target_labels[test]), seconds))
        print_fn(f"seed {seed}: " + ", ".join(f"{results[r][-1][0]:.1%}" for r in RECIPES))
    print_fn(format_table(results, shots, len(test)))
    return results


def format_table(results: dict, shots: int, test_images: int) -> str:
    """Mean ± std accuracy and median seconds per recipe, one row each."""
    width = max(len(recipe) for recipe in results)
    lines = [
        f"Digits 5-9, {shots} labelled images per class, accuracy on {test_images} held-out images",
        f"{'recipe':<{width}}  {'accuracy':>15}  {'seconds':>7}",
    ]
    for recipe, runs in results.items():
        accuracy = 100 * np.array([a for a, _ in runs])
        seconds = np.median([s for _, s in runs])
        lines.append(
            f"{recipe:<{width}}  {accuracy.mean():6.1f} ± {accuracy.std():4.1f} %  {seconds:7.1f}"
        )
    return "\n".join(lines)
