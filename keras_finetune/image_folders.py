"""Image folders (`keras.utils.image_dataset_from_directory` layout): listed once, checked before training.

A folder is read once into an `ImageFolder` (its classes and every image
file with its class id); the split, the decodability check, the training
pipeline, `evaluate` and `predict` all work from that listing. Images are
decoded and resized as `image_dataset_from_directory` does them
(`tf.io.decode_image`, bilinear `tf.image.resize`), float32 in [0, 255].
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

__all__ = [
    "COLOR_MODES",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "class_folders",
    "decode_image",
    "image_batches",
    "image_files",
    "load_image_folder",
    "read_image_folder",
    "undecodable_images",
]

# The files image_dataset_from_directory reads; it skips every other file.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


@dataclasses.dataclass
class ImageFolder:
    """The image files of a folder of class subfolders, each with its class id."""

    directory: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray

    def subset(self, indices) -> ImageFolder:
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        return ImageFolder(self.directory, self.classes, [self.paths[i] for i in indices], self.labels[indices])

    def split(self, fraction: float, seed: int, argument: str = "--data") -> tuple[ImageFolder, ImageFolder]:
        """`(kept, held_out)`: a seeded `fraction` of each class held out (at least one image of a class of two or more)."""
        rng = np.random.default_rng(seed)
        held = []
        for label in range(len(self.classes)):
            members = rng.permutation(np.flatnonzero(self.labels == label))
            count = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction else 0
            held.extend(members[:count])
        if not held:
            raise ValueError(
                f"{argument} is too small to hold out a fraction {fraction} for validation. "
                f"Received: {self.directory!r} with {len(self.paths)} images"
            )
        kept = np.setdiff1d(np.arange(len(self.paths)), held)
        return self.subset(kept), self.subset(held)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(directory: str, argument: str = "--data", class_names: list[str] | None = None) -> ImageFolder:
    """List a folder of class subfolders once: its classes (the subfolders holding images, sorted) and images.

    With `class_names` (a model's classes), each subfolder must be one of
    them, and class ids are positions in `class_names`: a folder may lack a
    class, but not hold one the model does not know.

    Raises:
        ValueError: `directory` is not a folder; without `class_names`,
            fewer than two of its subfolders hold images; with them, a
            subfolder of another class, or no image at all.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"{argument} must be a folder of class subfolders. Received: {directory!r} (no such folder)")
    images = {p.name: files for p in sorted(path.iterdir()) if p.is_dir() and (files := _images(p))}
    found = list(images)
    if class_names is None and len(found) < 2:
        what = f"one, {found[0]!r}" if found else "none"
        raise ValueError(
            f"{argument} needs one subfolder of images per class, at least two. "
            f"Received: {directory!r} with {what} ({', '.join(IMAGE_EXTENSIONS)} files)"
        )
    classes = found if class_names is None else list(class_names)
    unknown = [name for name in found if name not in classes]
    if unknown or not found:
        raise ValueError(
            f"{argument} must hold subfolders of the classes {classes}. "
            f"Received: {directory!r} with {found or 'no image in a class subfolder'}"
        )
    paths = [str(file) for files in images.values() for file in files]
    labels = np.concatenate([np.full(len(files), classes.index(name), "int32") for name, files in images.items()])
    return ImageFolder(directory, classes, paths, labels)


def class_folders(directory: str, argument: str = "--data") -> list[str]:
    """The class names of an image folder: its subfolders that hold images, sorted (see `read_image_folder`)."""
    return read_image_folder(directory, argument).classes


def image_files(paths: list[str], argument: str = "IMAGE") -> list[str]:
    """The image files named, and those inside the folders named (recursively, sorted).

    Raises:
        ValueError: a path that does not exist, or no image at all.
    """
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(str(p) for p in _images(path))
        elif path.is_file():
            files.append(str(path))
        else:
            raise ValueError(f"{argument} must be an image file or a folder. Received: {name!r} (no such file)")
    if not files:
        raise ValueError(f"{argument} holds no image ({', '.join(IMAGE_EXTENSIONS)} files). Received: {paths}")
    return files


def decode_image(path, image_size: int, channels: int):
    """One image file as image_dataset_from_directory loads it: float32 in [0, 255], `image_size` square."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size))
    image.set_shape((image_size, image_size, channels))
    return image


def image_batches(
    paths: list[str], labels, image_size: int, channels: int, batch_size: int, order=None
) -> tf.data.Dataset:
    """Batches of `(images, labels)` (or of images when `labels` is None), in `order` if given (a tensor of indices)."""
    examples = (tf.constant(paths),) if labels is None else (tf.constant(paths), tf.constant(labels))
    indices = tf.data.Dataset.range(len(paths)) if order is None else tf.data.Dataset.from_tensor_slices(order)

    def load(index):
        image = decode_image(examples[0][index], image_size, channels)
        return image if labels is None else (image, examples[1][index])

    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)


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
    """Batches of `(images, class ids)` from an image folder, images float32 in [0, 255], in file order.

    With `validation_split`, a seeded fraction of each class is held out
    (`ImageFolder.split`) and returned second; otherwise the second value is
    `None`. With `class_names` (those of the training folder), class ids are
    positions in it (see `read_image_folder`).

    Returns:
        `(train, validation, class_names)`.
    """
    channels = {mode: count for count, mode in COLOR_MODES.items()}[color_mode]
    folder = read_image_folder(directory, argument, class_names)
    kept, held_out = folder.split(validation_split, seed, argument) if validation_split else (folder, None)

    def batches(part):
        return None if part is None else image_batches(part.paths, part.labels, image_size, channels, batch_size)

    return batches(kept), batches(held_out), folder.classes


def _decodes(path: str) -> bool:
    try:
        tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return False
    return True


def undecodable_images(directory_or_paths) -> list[str]:
    """The image files (of a folder, or a list of paths) that TensorFlow cannot decode, checked in parallel."""
    paths = (
        [str(p) for p in _images(Path(directory_or_paths))]
        if isinstance(directory_or_paths, (str, os.PathLike))
        else list(directory_or_paths)
    )
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:  # decoding releases the GIL
        return [path for path, ok in zip(paths, pool.map(_decodes, paths)) if not ok]
