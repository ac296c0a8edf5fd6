"""What `keras-finetune train` and `keras-finetune distill` do: an image folder in, a model, its epoch log and a report out."""

from __future__ import annotations

import os
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from keras_finetune.backbones import image_classifier, load_keras_model
from keras_finetune.callbacks import CosineAnnealing
from keras_finetune.distribute import get_strategy
from keras_finetune.image_folders import class_folders, load_image_folder, undecodable_images
from keras_finetune.models import Distiller
from keras_finetune.models.distiller import _ends_in_softmax
from keras_finetune.recipe import fine_tune
from keras_finetune.report import plot_history

__all__ = ["distill", "train"]

_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


def _folders(data, val, val_split, image_size, batch_size, channels, seed):
    """Training and validation batches: `val` when given, else `val_split` of `data` held out."""
    if channels not in _COLOR_MODES:
        raise ValueError(f"The model must take 1, 3 or 4 channels. Received: a model taking {channels}")
    options = {"image_size": image_size, "batch_size": batch_size, "color_mode": _COLOR_MODES[channels], "seed": seed}
    train, held_out, classes = load_image_folder(data, validation_split=None if val else val_split, **options)
    if val:
        held_out = load_image_folder(val, class_names=classes, argument="--val", **options)[0]
    return train, held_out


@contextmanager
def _decoding(*folders):
    """Turn TensorFlow's decode failure, raised mid-training without a file name, into a ValueError naming the file."""
    try:
        yield
    except tf.errors.InvalidArgumentError:
        bad = [path for folder in folders if folder for path in undecodable_images(folder)]
        if not bad:
            raise
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"TensorFlow cannot decode the image {bad[0]}{more}; remove or convert it") from None


def _input_size(model: keras.Model, image_size: int | None, argument: str) -> int:
    size = tuple(model.input_shape[1:3])
    if None in size or size[0] != size[1]:
        if image_size is None:
            raise ValueError(f"{argument} takes images of any size; give --image-size. Received: input shape {size}")
        return image_size
    return size[0]


def _accuracy(model: keras.Model, batches) -> float:
    hits = total = 0
    for images, labels in batches:
        predicted = np.argmax(keras.ops.convert_to_numpy(model(images, training=False)), axis=-1)
        hits += int(np.sum(predicted == labels.numpy()))
        total += len(predicted)
    return hits / total


def _write(model: keras.Model, history, out: str, name: str, title: str, print_fn) -> None:
    path = os.path.join(out, f"{name}.keras")
    model.save(path)
    print_fn(f"Saved {path}, the epoch log {os.path.join(out, 'epochs.csv')}")
    try:
        print_fn(f"Report: {plot_history(history, os.path.join(out, 'report.png'), title)}")
    except ImportError as error:
        print_fn(f"No report: {error}")


def _output_size(model: keras.Model, classes: list[str], argument: str) -> None:
    if model.output_shape[-1] != len(classes):
        raise ValueError(
            f"{argument} must output one score per class of --data ({len(classes)}: {', '.join(classes)}). "
            f"Received: output shape {model.output_shape}"
        )


def train(
    data: str,
    val: str | None = None,
    val_split: float = 0.2,
    backbone: str = "MobileNetV3Small",
    weights: str | None = "imagenet",
    image_size: int | None = None,
    epochs: int = 10,
    frozen_epochs: int | float = 0.25,
    unfreeze="all",
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    label_smoothing: float = 0.1,
    augmentation: bool = True,
    mixing: bool = True,
    swa: int | float | None = 0.75,
    seed: int = 0,
    out: str = "keras-finetune-out",
    verbose="auto",
    print_fn=print,
) -> float:
    """Fine-tune `backbone` on the image folder `data` with `fine_tune`; write `model.keras`,
    `epochs.csv` and `report.png` into `out`. Returns the held-out accuracy of the saved model.

    Raises:
        ValueError: bad input (folders, backbone, image size, images that do not decode).
        ConnectionError: the ImageNet weights could not be downloaded.
    """
    classes = class_folders(data)
    keras.utils.set_random_seed(seed)
    model, base = image_classifier(backbone, len(classes), image_size, weights)
    image_size = _input_size(model, image_size, "--backbone")
    train_batches, held_out = _folders(data, val, val_split, image_size, batch_size, model.input_shape[-1], seed)
    print_fn(f"Fine-tuning {base.name} ({base.count_params():,} weights) on {len(classes)} classes: {', '.join(classes)}")
    os.makedirs(out, exist_ok=True)
    with _decoding(data, val):
        history = fine_tune(
            model, train_batches, held_out, base_model=base, epochs=epochs, frozen_epochs=frozen_epochs, unfreeze=unfreeze,
            learning_rate=learning_rate, augmentation=augmentation, mixing=mixing,
            label_smoothing=label_smoothing, swa=swa, seed=seed, verbose=verbose,
            callbacks=[keras.callbacks.CSVLogger(os.path.join(out, "epochs.csv"))],
        )
        accuracy = _accuracy(history.model, held_out)
    print_fn(f"Held-out accuracy of the fine-tuned model: {accuracy:.1%}")
    _write(history.model, history, out, "model", f"fine_tune {base.name} on {os.path.basename(os.path.abspath(data))}", print_fn)
    return accuracy


def distill(
    teacher: str,
    student: str,
    data: str,
    val: str | None = None,
    val_split: float = 0.2,
    student_weights: str | None = None,
    image_size: int | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    alpha: float = 0.1,
    temperature: float = 3.0,
    seed: int = 0,
    out: str = "keras-finetune-out",
    verbose="auto",
    print_fn=print,
) -> float:
    """Distil the `.keras` classifier `teacher` into `student` (a `keras.applications` name,
    given a dropout head, or a `.keras` classifier) on the image folder `data` with a `Distiller`;
    write `student.keras`, `epochs.csv` and `report.png` into `out`. Returns the student's held-out accuracy.

    Raises:
        ValueError: bad input (folders, models, image size, images that do not decode).
        ConnectionError: the student's ImageNet weights could not be downloaded.
    """
    classes = class_folders(data)
    keras.utils.set_random_seed(seed)
    with get_strategy().scope():
        teacher_model = load_keras_model(teacher, "--teacher")
        _output_size(teacher_model, classes, "--teacher")
        image_size = _input_size(teacher_model, image_size, "--teacher")
        if student.endswith(".keras"):
            student_model = load_keras_model(student, "--student")
            if _input_size(student_model, image_size, "--student") != image_size:
                raise ValueError(
                    f"--student must take the teacher's {image_size}x{image_size} images. "
                    f"Received: input shape {student_model.input_shape}"
                )
        else:
            student_model, _ = image_classifier(student, len(classes), image_size, student_weights)
        _output_size(student_model, classes, "--student")
        distiller = Distiller(student_model, teacher_model)
        distiller.compile(
            keras.optimizers.Adam(learning_rate),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=not _ends_in_softmax(student_model)),
            alpha=alpha,
            temperature=temperature,
        )
    train_batches, held_out = _folders(data, val, val_split, image_size, batch_size, teacher_model.input_shape[-1], seed)
    print_fn(
        f"Distilling {teacher_model.name} ({teacher_model.count_params():,} weights) into "
        f"{student_model.name} ({student_model.count_params():,} weights) on {len(classes)} classes"
    )
    os.makedirs(out, exist_ok=True)
    with _decoding(data, val):
        history = distiller.fit(
            train_batches.prefetch(tf.data.AUTOTUNE), validation_data=held_out, epochs=epochs, verbose=verbose,
            shuffle=False,  # image_dataset_from_directory shuffles; Keras would only warn that it cannot
            callbacks=[CosineAnnealing(t_max=epochs, warmup_epochs=1),
                       keras.callbacks.CSVLogger(os.path.join(out, "epochs.csv"))],
        )
        accuracy = _accuracy(student_model, held_out)
    print_fn(f"Held-out accuracy of the student: {accuracy:.1%} (the teacher: {_accuracy(teacher_model, held_out):.1%})")
    _write(student_model, history, out, "student", f"distil {teacher_model.name} into {student_model.name}", print_fn)
    return accuracy
