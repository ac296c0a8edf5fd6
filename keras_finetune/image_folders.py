"""Image folders (`keras.utils.image_dataset_from_directory` layout), checked before training."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

__all__ = ["IMAGE_EXTENSIONS", "class_folders", "load_image_folder", "undecodable_images"]

# The files image_dataset_from_directory reads; it skips every other file.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_images(directory: str, argument: str) -> dict[str, list[Path]]:
    """Each class subfolder's image files, by class name in sorted order (see `class_folders`)."""
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"{argument} must be a folder of class subfolders. Received: {directory!r} (no such folder)")
    images = {p.name: files for p in sorted(path.iterdir()) if p.is_dir() and (files := _images(p))}
    classes = list(images)
    if len(classes) < 2:
        found = f"one, {classes[0]!r}" if classes else "none"
        raise ValueError(
            f"{argument} needs one subfolder of images per class, at least two. "
            f"Received: {directory!r} with {found} ({', '.join(IMAGE_EXTENSIONS)} files)"
        )
    return images


def class_folders(directory: str, argument: str = "--data") -> list[str]:
    """The class names of an image folder: its subfolders that hold images, sorted.

    Raises:
        ValueError: `directory` is not a folder, or fewer than two of its
            subfolders hold images (a classifier needs two classes).
    """
    return list(_class_images(directory, argument))


def load_image_folder(
    directory: str,
    image_size: int,
    batch_size: int = 32,
    color_mode: str = "rgb",
    class_names: list[str] | None = None,
    validation_split: float | None = None,
    seed: int = 0,
    argument: str = "--data",
) -> tuple[tf.data.Dataset, tf.data.Dataset | None, list[str]]:
    """Batches of `(images, class ids)` from an image folder, images float32 in [0, 255].

    With `validation_split`, a seeded fraction of the images is held out and
    returned second; otherwise the second value is `None`. `class_names`
    (those of the training folder) requires the same classes.

    Returns:
        `(train, validation, class_names)`.
    """
    images = _class_images(directory, argument)
    classes = list(images)
    if class_names is not None and classes != list(class_names):
        raise ValueError(
            f"{argument} must have the training folder's classes {list(class_names)}. "
            f"Received: {directory!r} with {classes}"
        )
    count = sum(len(files) for files in images.values())
    if validation_split and int(validation_split * count) < 1:  # Keras would then train on nothing
        raise ValueError(
            f"{argument} is too small to hold out a fraction {validation_split} for validation. "
            f"Received: {directory!r} with {count} images"
        )
    split = {"validation_split": validation_split, "subset": "both"} if validation_split else {}
    datasets = keras.utils.image_dataset_from_directory(
        directory, class_names=classes, image_size=(image_size, image_size), batch_size=batch_size,
        color_mode=color_mode, seed=seed, verbose=False, **split,
    )
    train, validation = datasets if validation_split else (datasets, None)
    return train, validation, classes


def undecodable_images(directory: str) -> list[str]:
    """Paths of the image files in `directory` that TensorFlow cannot decode."""
    bad = []
    for path in _images(Path(directory)):
        try:
            tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            bad.append(str(path))
    return bad
