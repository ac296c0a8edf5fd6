"""What the `keras-finetune` commands do: train, distill, evaluate and predict on image folders.

`train` and `distill` write, into `--out`, the model (`model.keras` or
`student.keras`, plain Keras: it reloads with `keras.models.load_model`
alone), `classes.json` (the class names, in the order of the model's
outputs), `epochs.csv` and `report.png`, and keep `run.json` (the command and
its arguments) and, while they run, a `backup/` folder that `--resume`
continues from. While they run they hold a lock file in `--out`, so a second
run into the same folder is refused instead of interleaving its logs with the
first.
`evaluate` and `predict` find `classes.json` beside the model.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import importlib
import json
import math
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_finetune import glyphs
from keras_finetune.backbones import APPLICATIONS, image_classifier, load_keras_model
from keras_finetune.callbacks import AtomicBackup, CosineAnnealing, EpochSeeds, update_batchnorm
from keras_finetune.callbacks.backup import resumed_epoch, write_json
from keras_finetune.callbacks.epoch_seeds import epoch_order
from keras_finetune.distribute import get_strategy
from keras_finetune.freezing import batchnorm_layers, follow_untrained_batchnorm, untrained_batchnorm
from keras_finetune.image_folders import (
    COLOR_MODES,
    ImageFolder,
    image_batches,
    image_files,
    read_image_folder,
    undecodable_images,
)
from keras_finetune.layers import image_augmentation
from keras_finetune.models import Distiller
from keras_finetune.pretrained import names
from keras_finetune.recipe import fine_tune
from keras_finetune.report import plot_history
from keras_finetune.tta import tta_predict
from keras_finetune.validation import check_bool, check_count, check_fraction, check_positive, ends_in_softmax, is_int

__all__ = ["CLASSES_FILE", "RUN_FILE", "distill", "evaluate", "model_classes", "predict", "resume_arguments", "run_record", "train"]

CLASSES_FILE = "classes.json"
RUN_FILE = "run.json"
_BACKUP = "backup"
# The arguments that name a file or folder, and those that name one where it exists (else a model name,
# "pretrained"): run_record makes them absolute.
_PATHS = ("data", "val", "teacher")
_NAMES_OR_PATHS = ("backbone", "weights", "student", "student_weights")
_LOCK = ".keras-finetune.lock"


def _square_size(model: keras.Model) -> int | None:
    """The side of the square images `model` takes, or None when it takes several sizes."""
    height, width = model.input_shape[1:3]
    return height if height is not None and height == width else None


def _input_size(model: keras.Model, image_size: int | None, argument: str) -> int:
    size = _square_size(model)
    if size is None:
        if image_size is None:
            raise ValueError(
                f"{argument} takes images of any size; give --image-size. Received: input shape {model.input_shape[1:3]}"
            )
        return image_size
    return size


def _channels(model: keras.Model, argument: str) -> int:
    channels = model.input_shape[-1]
    if channels not in COLOR_MODES:
        raise ValueError(f"{argument} must take 1, 3 or 4 channels. Received: a model taking {channels}")
    return channels


def _check_images(paths: list[str]) -> None:
    """Every image decodes, checked in parallel before the first epoch (TensorFlow's mid-epoch error names no file)."""
    bad = undecodable_images(paths)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"TensorFlow cannot decode the image {bad[0]}{more}; remove or convert it")


def _held_out(folder: ImageFolder, val: str | None, val_split: float, seed: int) -> tuple[ImageFolder, ImageFolder]:
    if val:
        return folder, read_image_folder(val, "--val", folder.classes)
    return folder.split(val_split, seed)


def _epoch_batches(folder: ImageFolder, size: int, channels: int, batch_size: int, seed: int):
    """`epoch -> batches` in an order of `(seed, epoch)` alone, so a resumed run reads what an uninterrupted one did."""

    def batches(epoch):
        order = epoch_order(len(folder.paths), seed, epoch)
        return image_batches(folder.paths, folder.labels, size, channels, batch_size, order)

    return batches


def _probabilities(model: keras.Model, batches) -> np.ndarray:
    outputs = model.predict(batches, verbose=0)
    if not ends_in_softmax(model):
        outputs = keras.ops.convert_to_numpy(keras.ops.softmax(outputs))
    return outputs


def _tta_probabilities(loaded: keras.Model, path: str, batches, views: int) -> np.ndarray:
    """Plain probabilities when `views` is 0, else `tta_predict` with the views that suit the model:
    the glyphs base's shifts (a flipped glyph is another glyph) when its run says it was trained on
    that base, crops and flips otherwise."""
    if not views:
        return _probabilities(loaded, batches)
    run = os.path.join(os.path.dirname(path), RUN_FILE)
    backbone = None
    if os.path.isfile(run):
        with open(run) as file:
            backbone = json.load(file).get("backbone")
    if backbone in names():
        return tta_predict(loaded, batches, image_augmentation(**{**glyphs.AUGMENTATION, "seed": 0}), n=views, flip=False)
    return tta_predict(loaded, batches, n=views, seed=0)


def _accuracy(model: keras.Model, folder: ImageFolder, size: int, channels: int, batch_size: int) -> float:
    batches = image_batches(folder.paths, None, size, channels, batch_size)
    return float(np.mean(np.argmax(_probabilities(model, batches), axis=-1) == folder.labels))


class _EpochLines(keras.callbacks.Callback):
    """One line per epoch, integers as integers (Keras's bar prints `phase: 0.0000e+00`)."""

    def __init__(self, epochs: int, print_fn):
        super().__init__()
        self.epochs, self.print_fn = epochs, print_fn

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = [f"{k} {v:,}" if isinstance(v, (int, np.integer)) else f"{k} {v:.4g}" for k, v in (logs or {}).items()]
        seconds = time.perf_counter() - self.start
        self.print_fn("  ".join([f"epoch {epoch + 1}/{self.epochs}", *values, f"({seconds:.1f} s)"]))


def _csv_logger(path: str, start: int) -> keras.callbacks.CSVLogger:
    """A CSVLogger that, on a resumed run, keeps the rows of the epochs before `start` and appends."""
    if start and os.path.isfile(path):
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
        with open(path, "w", newline="") as file:  # a header, then the rows of the epochs before `start`
            csv.writer(file).writerows(rows[:1] + [row for row in rows[1:] if int(row[0]) < start])
    return keras.callbacks.CSVLogger(path, append=bool(start))


def _save(model: keras.Model, history, out: str, name: str, title: str, print_fn) -> None:
    path = os.path.join(out, f"{name}.keras")
    partial = os.path.join(out, f"{name}.partial.keras")
    try:
        model.save(partial)  # then renamed: a failed or interrupted save never leaves half a model under the name
        os.replace(partial, path)
    except OSError as error:  # a full disk, a folder made read-only meanwhile: the trained model must not be lost
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise OSError(f"could not write {path} ({error}); {_save_elsewhere(model, name)}") from error
    print_fn(f"Saved {path} (classes in {os.path.join(out, CLASSES_FILE)}), the epoch log {os.path.join(out, 'epochs.csv')}")
    try:
        print_fn(f"Report: {plot_history(history, os.path.join(out, 'report.png'), title)}")
    except ImportError as error:
        print_fn(f"No report: {error}")


def _save_elsewhere(model: keras.Model, name: str) -> str:
    """Saves `model` in the temporary folder when `--out` cannot take it, and says where (or that it failed)."""
    handle, path = tempfile.mkstemp(prefix=f"keras-finetune-{name}-", suffix=".keras")
    os.close(handle)
    try:
        model.save(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(path)
        return f"saving it in the temporary folder failed too ({error}): the trained model is lost"
    return f"the trained model is saved in {path} instead"


def _check_numbers(epochs, batch_size, val_split, seed, learning_rate=None, image_size=None) -> None:
    """The arguments `train` and `distill` share, checked before anything loads (the CLI's parser checks them too)."""
    check_count(epochs, "epochs", 1)
    check_count(batch_size, "batch_size", 1)
    check_fraction(val_split, "val_split", below_one=True)
    if not is_int(seed):
        raise TypeError(f"`seed` must be an int. Received: seed={seed!r}")
    if learning_rate is not None:
        check_positive(learning_rate, "learning_rate")
    if image_size is not None:
        check_count(image_size, "image_size", 1)


def _check_train_options(arguments: dict, resume) -> None:
    """`train`'s own options (beside those `_check_numbers` checks), given as its arguments' dict."""
    check_fraction(arguments["label_smoothing"], "label_smoothing", below_one=True)
    for name in ("augmentation", "mixing", "mixed_precision", "tensorboard"):
        check_bool(arguments[name], name)
    check_bool(resume, "resume")
    if arguments["early_stopping"] is not None:
        check_count(arguments["early_stopping"], "early_stopping", 1)


def _check_out(out: str) -> None:
    """A ValueError for an `--out` that cannot be written or that another run holds: said before
    anything is loaded or trained, and without making the folder."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out must be a folder. Received: {out!r} (a file)")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out!r} cannot be written: {existing!r} is read-only or not a folder")
    _refuse_held(out)


def _refuse_held(out: str) -> None:
    holder = _lock_holder(os.path.join(out, _LOCK))
    if holder is not None and holder != os.getpid() and _alive(holder):
        raise ValueError(f"--out {out!r} is in use by another run (process {holder}): wait for it, or give another --out")


@contextlib.contextmanager
def _holding(out: str):
    """`out` for this process alone while the block runs: a lock file naming it, refused while another
    live process holds one (two runs into one folder would interleave their epoch logs and overwrite
    each other's model). A lock left by a killed process is taken over."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, _LOCK)
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            _refuse_held(out)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    else:
        raise ValueError(f"--out {out!r} is in use by another run that just started: give another --out")
    with os.fdopen(handle, "w") as file:
        file.write(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def _lock_holder(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open(path) as file:
            return int(file.read())
    return None  # unreadable or half written: the process that wrote it died before its first line


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def _precision(mixed: bool, print_fn):
    """Keras's global dtype policy for the block: mixed_float16 on a GPU, mixed_bfloat16 elsewhere (TPU, CPU)."""
    if not mixed:
        yield
        return
    policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    print_fn(f"Mixed precision: {policy}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _check_unfreeze(unfreeze, base: keras.Model) -> None:
    """`--unfreeze` names a layer of the base or counts no more than its layers, checked before any data loads."""
    names = [layer.name for layer in base.layers]
    if isinstance(unfreeze, int) and unfreeze > len(names):
        raise ValueError(f"--unfreeze counts layers from the top of {base.name}, which has {len(names)}. Received: {unfreeze}")
    if isinstance(unfreeze, str) and unfreeze != "all" and unfreeze not in names:
        close = difflib.get_close_matches(unfreeze, names, n=5, cutoff=0.6)
        known = f"close names: {', '.join(close)}" if close else f"its layers run from {names[0]} to {names[-1]}"
        raise ValueError(f"--unfreeze must name a layer of {base.name} ({known}). Received: {unfreeze!r}")


def _untrained(base: keras.Model, backbone: str, weights) -> bool:
    """No pretrained weights: a named base (shipped or keras.applications) without them, or one whose
    BatchNorm never saw data."""
    layers = batchnorm_layers(base)
    named = backbone in APPLICATIONS or backbone in names()
    return (weights is None and named) or (bool(layers) and len(untrained_batchnorm(base)) == len(layers))


def _check_tensorboard() -> None:
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        raise ValueError(
            '--tensorboard needs the tensorboard package (pip install tensorboard, or "keras-finetune[tensorboard]")'
        ) from None


def _check_backup(out: str, resume: bool) -> None:
    interrupted = resumed_epoch(os.path.join(out, _BACKUP)) > 0
    if resume and not interrupted:
        raise ValueError(f"--resume found no interrupted run in {out!r} (no backup: the run completed or never started)")
    if not resume and interrupted:
        raise ValueError(f"--out {out!r} holds an interrupted run: continue it with --resume, or give another --out")


def _epoch_callbacks(out: str, epochs: int, tensorboard: bool, early_stopping: int | None, print_fn) -> list:
    """The epoch log (kept up to the resumed epoch), one printed line per epoch, TensorBoard, early stopping."""
    start = resumed_epoch(os.path.join(out, _BACKUP))
    callbacks = [_csv_logger(os.path.join(out, "epochs.csv"), start), _EpochLines(epochs, print_fn)]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")))
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=early_stopping))
    return callbacks


def resume_arguments(out: str, command: str = "train") -> dict:
    """The arguments `command` (`train` or `distill`) was started with in `out` (its `run.json`)."""
    path = os.path.join(out, RUN_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"--resume needs the {RUN_FILE} of the interrupted run in --out. Received: {out!r} (none there)")
    with open(path) as file:
        arguments = json.load(file)
    started = arguments.pop("command", "train")  # runs written before distill could resume were train's
    if started != command:
        raise ValueError(f"--out {out!r} holds a {started} run: continue it with keras-finetune {started} --resume. "
                         f"Received: {command} --resume")
    return arguments


def run_record(arguments: dict) -> dict:
    """`train`'s or `distill`'s arguments as their `run.json` keeps them: the files and folders they
    name absolute, so that --resume works from another directory."""

    def kept(name, value):
        path = isinstance(value, str) and (name in _PATHS or (name in _NAMES_OR_PATHS and os.path.exists(value)))
        return os.path.abspath(value) if path else value

    return {name: kept(name, value) for name, value in arguments.items()}


def train(
    data: str,
    val: str | None = None,
    val_split: float = 0.2,
    backbone: str = "MobileNetV3Small",
    weights: str | None = "pretrained",
    image_size: int | None = None,
    epochs: int = 10,
    frozen_epochs: int | float | None = None,
    unfreeze="all",
    unfreeze_lr_factor: float | None = None,
    batch_size: int = 32,
    learning_rate: float | None = None,
    label_smoothing: float = 0.1,
    augmentation: bool = True,
    mixing: bool = True,
    swa: int | float | None = 0.75,
    early_stopping: int | None = None,
    mixed_precision: bool = False,
    tensorboard: bool = False,
    seed: int = 0,
    out: str = "keras-finetune-out",
    resume: bool = False,
    print_fn=print,
) -> float:
    """Fine-tune `backbone` on the image folder `data` with `fine_tune`; write the model, its classes,
    `epochs.csv` and `report.png` into `out`. Returns the held-out accuracy of the saved model.

    A base without pretrained weights (`weights=None`, or BatchNorm layers
    that never saw data) trains whole from the first epoch at one rate, its
    BatchNorm included: `frozen_epochs` defaults to 0 and
    `unfreeze_lr_factor` to 1 for it (0.25 and 0.1 for a pretrained one).
    The shipped `glyphs` base gets its head's rate, 1e-2, when
    `learning_rate` is `None` (1e-3 for the others), and shifts of one
    pixel as its augmentation (`glyphs.AUGMENTATION`: a flipped or rotated
    glyph is another glyph) instead of the photographs' preset.
    Every epoch is backed up in `out/backup`; `resume=True` continues an
    interrupted run from there and ends with the uninterrupted run's weights.

    Raises:
        ValueError: bad input (folders, backbone, image size, `unfreeze`,
            images that do not decode, a backup present or missing).
        ConnectionError: the ImageNet weights could not be downloaded.
    """
    arguments = {name: value for name, value in locals().items() if name not in ("out", "resume", "print_fn")}
    arguments = run_record(arguments)
    _check_numbers(epochs, batch_size, val_split, seed, learning_rate, image_size)
    _check_train_options(arguments, resume)
    folder = read_image_folder(data)
    _check_out(out)
    _check_backup(out, resume)
    if tensorboard:
        _check_tensorboard()
    keras.utils.set_random_seed(seed)
    with _precision(mixed_precision, print_fn):
        model, base = image_classifier(backbone, len(folder.classes), image_size, weights)
        size, channels = _input_size(model, image_size, "--backbone"), _channels(model, "--backbone")
        _check_unfreeze(unfreeze, base)
        pretrained = not _untrained(base, backbone, weights)
        shipped = backbone in names()
        kept, held_out = _held_out(folder, val, val_split, seed)
        _check_images(kept.paths + held_out.paths)
        print_fn(
            f"Fine-tuning {base.name} ({base.count_params():,} weights"
            f"{'' if pretrained else ', untrained: the whole network trains from the first epoch'}) "
            f"on {len(kept.paths)} images of {len(folder.classes)} classes: {', '.join(folder.classes)}; "
            f"{len(held_out.paths)} held out"
        )
        with _holding(out):
            write_json(os.path.join(out, RUN_FILE), {"command": "train", **arguments})
            write_json(os.path.join(out, CLASSES_FILE), folder.classes)
            backup = os.path.join(out, _BACKUP)
            history = fine_tune(
                model, _epoch_batches(kept, size, channels, batch_size, seed),
                image_batches(held_out.paths, held_out.labels, size, channels, batch_size), base_model=base,
                epochs=epochs, frozen_epochs=(0.25 if pretrained else 0) if frozen_epochs is None else frozen_epochs,
                unfreeze=unfreeze, learning_rate=(1e-2 if shipped else 1e-3) if learning_rate is None else learning_rate,
                unfreeze_lr_factor=(0.1 if pretrained else 1.0) if unfreeze_lr_factor is None else unfreeze_lr_factor,
                augmentation=glyphs.AUGMENTATION if augmentation and shipped else augmentation, mixing=mixing,
                label_smoothing=label_smoothing, swa=swa, seed=seed,
                backup_dir=backup, callbacks=_epoch_callbacks(out, epochs, tensorboard, early_stopping, print_fn), verbose=0,
            )
            if len(history.epoch) and history.epoch[-1] < epochs - 1:
                print_fn(f"Stopped early after epoch {history.epoch[-1] + 1}: val_loss did not improve for {early_stopping} epochs")
            accuracy = _accuracy(history.model, held_out, size, channels, batch_size)
            print_fn(f"Held-out accuracy of the fine-tuned model: {accuracy:.1%}")
            _save(history.model, history, out, "model", f"fine_tune {base.name} on {os.path.basename(os.path.abspath(data))}", print_fn)
    return accuracy


def _output_size(model: keras.Model, classes: list[str], argument: str) -> None:
    if model.output_shape[-1] != len(classes):
        raise ValueError(
            f"{argument} must output one score per class of --data ({len(classes)}: {', '.join(classes)}). "
            f"Received: output shape {model.output_shape}"
        )


def model_classes(path: str, argument: str = "--model") -> list[str] | None:
    """The class names in `classes.json` beside the model file, or None when there is none."""
    file = os.path.join(os.path.dirname(os.path.abspath(path)), CLASSES_FILE)
    if not os.path.isfile(file):
        return None
    with open(file) as handle:
        classes = json.load(handle)
    if not (isinstance(classes, list) and all(isinstance(name, str) for name in classes)):
        raise ValueError(f"{file} must hold the list of class names beside {argument}. Received: {classes!r}")
    return classes


def _loaded(path: str, argument: str) -> tuple[keras.Model, list[str], int, int]:
    """The model, its class names (one per output), and the square image size and channels it takes."""
    model = load_keras_model(path, argument)
    classes = model_classes(path, argument)
    if classes is None:
        raise ValueError(
            f"{argument} needs its class names in {CLASSES_FILE} beside it (train and distill write it there). "
            f"Received: {path!r}"
        )
    _output_size(model, classes, argument)
    size = _square_size(model)
    if size is None:
        raise ValueError(f"{argument} must take square images of one size, as train and distill save them. "
                         f"Received: input shape {model.input_shape}")
    return model, classes, size, _channels(model, argument)


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
    learning_rate: float | None = None,
    alpha: float = 0.1,
    temperature: float = 3.0,
    seed: int = 0,
    out: str = "keras-finetune-out",
    resume: bool = False,
    print_fn=print,
) -> float:
    """Distil the `.keras` classifier `teacher` into `student` (a `keras.applications` name,
    given a dropout head, or a `.keras` classifier) on the image folder `data` with a `Distiller`;
    write `student.keras`, `classes.json`, `epochs.csv` and `report.png` into `out`. Returns the
    student's held-out accuracy.

    Every epoch is backed up in `out/backup`; `resume=True` continues an
    interrupted run from there and ends with the uninterrupted run's student.

    Raises:
        ValueError: bad input (folders, models, classes, image size, images that do not decode).
        ConnectionError: the student's ImageNet weights could not be downloaded.
    """
    arguments = {name: value for name, value in locals().items() if name not in ("out", "resume", "print_fn")}
    arguments = run_record(arguments)
    _check_numbers(epochs, batch_size, val_split, seed, learning_rate, image_size)
    check_fraction(alpha, "alpha")
    check_positive(temperature, "temperature")
    check_bool(resume, "resume")
    folder = read_image_folder(data)
    _check_out(out)
    _check_backup(out, resume)
    keras.utils.set_random_seed(seed)
    with get_strategy().scope():
        teacher_model = load_keras_model(teacher, "--teacher")
        _output_size(teacher_model, folder.classes, "--teacher")
        known = model_classes(teacher, "--teacher")
        if known not in (None, folder.classes):
            raise ValueError(f"--data must have the teacher's classes {known}. Received: {folder.classes}")
        size, channels = _input_size(teacher_model, image_size, "--teacher"), _channels(teacher_model, "--teacher")
        student_model = _student(student, student_weights, len(folder.classes), size)
        _output_size(student_model, folder.classes, "--student")
        if _channels(student_model, "--student") != channels:
            raise ValueError(f"--student must take the teacher's {channels}-channel images. "
                             f"Received: input shape {student_model.input_shape}")
        follow_untrained_batchnorm(student_model)  # a student from scratch: statistics that keep up
        distiller = Distiller(student_model, teacher_model)
        distiller.compile(
            keras.optimizers.Adam(1e-3 if learning_rate is None else learning_rate),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_in_softmax(student_model)),
            alpha=alpha,
            temperature=temperature,
        )
    kept, held_out = _held_out(folder, val, val_split, seed)
    _check_images(kept.paths + held_out.paths)
    print_fn(
        f"Distilling {teacher_model.name} ({teacher_model.count_params():,} weights) into "
        f"{student_model.name} ({student_model.count_params():,} weights) on {len(folder.classes)} classes"
    )
    with _holding(out):
        write_json(os.path.join(out, RUN_FILE), {"command": "distill", **arguments})
        write_json(os.path.join(out, CLASSES_FILE), folder.classes)
        backup = os.path.join(out, _BACKUP)
        epoch_batches = _epoch_batches(kept, size, channels, batch_size, seed)
        history = distiller.fit(  # the epochs from the resumed one on (every one when not resumed)
            tf.data.Dataset.range(resumed_epoch(backup), epochs).flat_map(epoch_batches).prefetch(tf.data.AUTOTUNE),
            steps_per_epoch=math.ceil(len(kept.paths) / batch_size), epochs=epochs, verbose=0, shuffle=False,
            validation_data=image_batches(held_out.paths, held_out.labels, size, channels, batch_size),
            callbacks=[EpochSeeds(seed), CosineAnnealing(t_max=epochs, warmup_epochs=1),
                       *_epoch_callbacks(out, epochs, False, None, print_fn), AtomicBackup(backup)],
        )
        # The statistics of the final weights, exactly (moving averages lag the weights they average).
        update_batchnorm(student_model, image_batches(kept.paths, kept.labels, size, channels, batch_size))
        accuracy = _accuracy(student_model, held_out, size, channels, batch_size)
        teacher_accuracy = _accuracy(teacher_model, held_out, size, channels, batch_size)
        print_fn(f"Held-out accuracy of the student: {accuracy:.1%} (the teacher: {teacher_accuracy:.1%})")
        _save(student_model, history, out, "student", f"distil {teacher_model.name} into {student_model.name}", print_fn)
        return accuracy


def _student(student: str, weights, num_classes: int, size: int) -> keras.Model:
    """A student by `keras.applications` name (under a dropout head) or from a `.keras` classifier taking `size` images."""
    if not student.endswith(".keras"):
        return image_classifier(student, num_classes, size, weights)[0]
    model = load_keras_model(student, "--student")
    if _input_size(model, size, "--student") != size:
        raise ValueError(f"--student must take the teacher's {size}x{size} images. Received: input shape {model.input_shape}")
    return model


def evaluate(model: str, data: str, batch_size: int = 32, tta: int = 0) -> dict:
    """Accuracy, per-class precision and recall and the confusion matrix of a saved classifier on a labelled folder.

    The folder's subfolders must be classes of the model (`classes.json`
    beside it); a folder may hold only some of them. With `tta` > 0 each
    image's probabilities are averaged over `tta` augmented views
    (`tta_predict`): random crops and flips, or, for a model trained on the
    shipped `glyphs` base (its `run.json` says so), the base's one-pixel
    shifts without flips.

    Returns:
        `{"accuracy", "images", "classes", "per_class": {name: {"precision",
        "recall", "images"}}, "confusion_matrix"}` (rows: true class,
        columns: predicted class; a precision is None for a class never
        predicted).
    """
    check_count(batch_size, "batch_size", 1)
    check_count(tta, "tta", 0)
    loaded, classes, size, channels = _loaded(model, "--model")
    folder = read_image_folder(data, "--data", classes)
    _check_images(folder.paths)
    predicted = np.argmax(_tta_probabilities(loaded, model, image_batches(folder.paths, None, size, channels, batch_size), tta), -1)
    matrix = np.zeros((len(classes), len(classes)), "int64")
    np.add.at(matrix, (folder.labels, predicted), 1)
    per_class = {
        name: {
            "precision": float(matrix[i, i] / matrix[:, i].sum()) if matrix[:, i].sum() else None,
            "recall": float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None,
            "images": int(matrix[i].sum()),
        }
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "images": int(matrix.sum()),
        "classes": classes,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def predict(model: str, images: list[str], top_k: int = 1, batch_size: int = 32, tta: int = 0) -> list[dict]:
    """The `top_k` classes and probabilities a saved classifier gives each image (files, or folders of them);
    with `tta` > 0 averaged over that many augmented views, as `evaluate` does.

    Returns:
        One `{"path", "top": [{"class", "probability"}, ...]}` per image, in
        the order named (a folder's images sorted).
    """
    check_count(top_k, "top_k", 1)
    check_count(batch_size, "batch_size", 1)
    check_count(tta, "tta", 0)
    loaded, classes, size, channels = _loaded(model, "--model")
    if top_k > len(classes):
        raise ValueError(f"--top-k must be at most the model's {len(classes)} classes. Received: {top_k}")
    paths = image_files(images)
    _check_images(paths)
    probabilities = _tta_probabilities(loaded, model, image_batches(paths, None, size, channels, batch_size), tta)
    best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return [
        {"path": path, "top": [{"class": classes[i], "probability": float(row[i])} for i in order]}
        for path, row, order in zip(paths, probabilities, best)
    ]
