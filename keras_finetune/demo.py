"""The bundled transfer task behind `keras-finetune demo`.

scikit-learn ships the 8x8 handwritten digits (1,797 images), so the demo
downloads nothing. A small convolutional base (BatchNorm momentum 0.9) is
pre-trained on digits 0-4 and plays the part of the "pretrained network".
The target task is digits 5-9 from a few labelled images per class; accuracy
is measured on every other target image. The recipes: the same network
trained from scratch, a linear probe on the frozen base, the widely copied
two-fit recipe (frozen, then `trainable = True` and a recompile), and
`fine_tune` with every part on; the `fine_tune` model is then distilled into
a 5x smaller network, shown next to that network trained from scratch. All
get the same epochs.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np

from keras_finetune.freezing import freeze, unfreeze
from keras_finetune.heads import build_classifier
from keras_finetune.losses import SparseCategoricalCrossentropy
from keras_finetune.models import Distiller
from keras_finetune.recipe import fine_tune
from keras_finetune.report import plot_history

__all__ = [
    "load_digits_images",
    "build_base",
    "pretrain_base",
    "train_classifier",
    "linear_probe",
    "two_fits",
    "fine_tune_recipe",
    "copy_base",
    "unfreezing_schedule",
    "distil_student",
    "run_demo",
]

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
RECIPES = (
    "from scratch (same network, dropout head, label smoothing)",
    "frozen pretrained base, linear probe",
    "two fits: frozen, then trainable=True + recompile Adam(1e-5)",
    "fine_tune: every part (unfreezing, cosine, augmentation, mixing, SWA)",
    "smaller student (5x fewer weights) from scratch, same head",
    "smaller student distilled from the fine_tune model (Distiller)",
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
# The second phase's rate: 3e-4 after 1e-3 (benchmarks/progressive_unfreezing.py).
UNFREEZE_LR_FACTOR = 0.3


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
    base, images, labels, seed: int, epochs: int = 100, callbacks=None, head: dict | None = None
) -> keras.Model:
    """A head on `base` (the dropout head, or `build_classifier(**head)`), label smoothing 0.1, Adam 1e-3, batches of 16."""
    keras.utils.set_random_seed(seed)
    model = build_classifier(base, len(TARGET_CLASSES), **(head or {"pooling": "flatten"}))
    loss = SparseCategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(images, labels, epochs=epochs, batch_size=BATCH_SIZE, verbose=0, callbacks=callbacks)
    return model


def linear_probe(base, images, labels, seed: int, epochs: int = 100) -> keras.Model:
    """The frozen base under one linear softmax layer, no dropout: how good its features are as they are."""
    return train_classifier(
        freeze(base), images, labels, seed, epochs,
        head={"hidden_units": (), "dropout": 0.0, "pooling": "flatten"},
    )


def two_fits(
    base, images, labels, seed: int, epochs: int = 100, rate: float = 1e-5, keep_batchnorm_frozen: bool = False
) -> keras.Model:
    """The widely copied recipe: fit the head on the frozen base, then `base.trainable = True`,
    recompile with Adam(`rate`) (the first optimizer's state is lost) and fit again, half the epochs each.

    As copied, `trainable = True` puts the base's BatchNorm layers back in
    training mode; `keep_batchnorm_frozen` unfreezes with `unfreeze` instead.
    """
    half = epochs // 2
    model = train_classifier(freeze(base), images, labels, seed, half)
    if keep_batchnorm_frozen:
        unfreeze(base)
    else:
        base.trainable = True
    model.compile(keras.optimizers.Adam(rate), SparseCategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING))
    model.fit(images, labels, epochs=epochs - half, batch_size=BATCH_SIZE, verbose=0)
    return model


def fine_tune_recipe(base, images, labels, seed: int, epochs: int = 100, validation_data=None):
    """`fine_tune` with every part on, set for 8x8 digits; returns its History (`.model` is the model)."""
    keras.utils.set_random_seed(seed)
    return fine_tune(
        base, (images, labels), validation_data, num_classes=len(TARGET_CLASSES),
        head={"pooling": "flatten"}, epochs=epochs, frozen_epochs=0.5, unfreeze="all",
        learning_rate=1e-3, unfreeze_lr_factor=UNFREEZE_LR_FACTOR, warmup_epochs=1,
        augmentation=AUGMENTATION, mixing=MIXING, label_smoothing=LABEL_SMOOTHING,
        swa=SWA_SETTINGS["start_epoch"], swa_lr=SWA_SETTINGS["swa_lr"],
        batch_size=BATCH_SIZE, seed=seed, verbose=0,
    )


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
        student_loss_fn=SparseCategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
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
    report: str | None = "keras-finetune-demo.png",
    print_fn=print,
) -> dict:
    """Run every recipe for each seed, print a table of held-out accuracy and save the report.

    A progress bar counts the runs. Seed 0's `fine_tune` run also evaluates
    the held-out images after each epoch, for the report's curves (`report`:
    a PNG path, or `None` for no report).

    Returns:
        A dict from recipe name to a list of `(accuracy, seconds)`, one per seed.
    """
    images, labels = load_digits_images()
    source = np.isin(labels, SOURCE_CLASSES)
    target_images, target_labels = images[~source], labels[~source] - min(TARGET_CLASSES)
    results = {recipe: [] for recipe in RECIPES}
    progress = keras.utils.Progbar(seeds * len(RECIPES), unit_name="run")
    for seed in range(seeds):
        train, test = _few_shot_split(target_labels, shots, np.random.default_rng(seed))
        data, held_out = (target_images[train], target_labels[train]), (target_images[test], target_labels[test])
        pretrained = pretrain_base(images[source], labels[source], seed, pretrain_epochs)
        validation = held_out if seed == 0 and report else None
        # Called in this order: RECIPES[5] distils from the `teacher` that RECIPES[3] trains.
        runs = {
            RECIPES[0]: lambda: train_classifier(build_base(seed + 1000), *data, seed, epochs),
            RECIPES[1]: lambda: linear_probe(copy_base(pretrained), *data, seed, epochs),
            RECIPES[2]: lambda: two_fits(copy_base(pretrained), *data, seed, epochs),
            RECIPES[3]: lambda: fine_tune_recipe(copy_base(pretrained), *data, seed, epochs, validation),
            RECIPES[4]: lambda: train_classifier(build_base(seed + 2000, STUDENT_FILTERS), *data, seed, epochs),
            RECIPES[5]: lambda: distil_student(build_base(seed + 2000, STUDENT_FILTERS), teacher, *data, seed, epochs),
        }
        for recipe, run in runs.items():
            start = time.perf_counter()
            model = run()
            seconds = time.perf_counter() - start
            if recipe == RECIPES[3]:
                history, model = model, model.model
                teacher = model
                if validation is not None:
                    plot_history(history, report, f"fine_tune on digits 5-9, {shots} images per class, seed 0")
            results[recipe].append((_accuracy(model, *held_out), seconds))
            progress.add(1)
    print_fn(format_table(results, shots, len(test)))
    if report:
        print_fn(f"Report (loss, accuracy and learning rate of seed 0's fine_tune run): {os.path.abspath(report)}")
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
