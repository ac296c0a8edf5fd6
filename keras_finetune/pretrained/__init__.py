"""Pretrained bases that ship inside the package: fine-tuning with no download.

`glyphs`: a small convolutional feature extractor (four 3x3 convolutions
with BatchNorm, 241 k weights) pretrained to tell apart 107 printed glyphs
(digits, Latin and Cyrillic capitals, Latin small letters, symbols) rendered
from the fonts that install with matplotlib and distorted at random, at 8x8
pixels formed the way scikit-learn's handwritten digits were
(`keras_finetune.glyphs`). It takes grey images in [0, 1], ink bright on a
dark ground, and outputs a 2x2x128 feature map. Its weights, the source
task's held-out accuracy and the file's SHA-256 are in this folder
(`glyphs.weights.h5`, `glyphs.json`); `python -m keras_finetune.pretrained
--rebuild` trains them again from a fixed seed (about 10 minutes on 2 CPU
cores).
"""

from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np

from keras_finetune.validation import check_bool, is_int

__all__ = ["names", "info", "build_base", "source_classifier", "load_base", "weights_path", "sha256"]

_FOLDER = os.path.dirname(os.path.abspath(__file__))
_NAMES = ("glyphs",)
_FILTERS = (32, 64, 128, 128)
_GREY = (0.2989, 0.587, 0.114)  # tf.image.rgb_to_grayscale's weights


def names() -> tuple[str, ...]:
    """The names of the bases that ship with the package."""
    return _NAMES


def _check_name(name) -> str:
    if name not in _NAMES:
        raise ValueError(f"`name` must be one of {', '.join(_NAMES)}. Received: name={name!r}")
    return name


def weights_path(name: str = "glyphs") -> str:
    """The shipped weights file of base `name` (its source classifier's, head included)."""
    return os.path.join(_FOLDER, f"{_check_name(name)}.weights.h5")


def info(name: str = "glyphs") -> dict:
    """What base `name` was trained on and how, its source-task accuracy and its file's SHA-256,
    as `python -m keras_finetune.pretrained --rebuild` recorded them."""
    with open(os.path.join(_FOLDER, f"{_check_name(name)}.json"), encoding="utf-8") as file:
        return json.load(file)


def sha256(path: str) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _input_shape(input_shape) -> tuple[int | None, int | None, int]:
    """`(height, width, channels)` from None (8x8x1), (H, W) or (H, W, C) with C 1 or 3."""
    if input_shape is None:
        return (8, 8, 1)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is not None and len(shape) == 2:
        shape = (*shape, 1)
    if (
        shape is None or len(shape) != 3 or shape[2] not in (1, 3)
        or any(s is not None and not (is_int(s) and s >= 4) for s in shape[:2])
    ):
        raise ValueError(
            "`input_shape` must be (height, width) or (height, width, channels) with sides >= 4 "
            f"(or None) and 1 or 3 channels. Received: input_shape={input_shape!r}"
        )
    return shape


def build_base(name: str = "glyphs", input_shape=None, filters=None) -> keras.Model:
    """Base `name`'s architecture with fresh weights (what `load_base` fills).

    A 3-channel `input_shape` puts a frozen 1x1 convolution in front that
    turns RGB into grey with `tf.image.rgb_to_grayscale`'s weights.
    `filters`, four widths other than the shipped (32, 64, 128, 128), gives
    a network of the same shape that the shipped weights do not fit, named
    after them (the demo's student).
    """
    _check_name(name)
    shape = _input_shape(input_shape)
    widths = _FILTERS if filters is None else tuple(filters)
    if len(widths) != 4 or not all(is_int(width) and width >= 1 for width in widths):
        raise ValueError(f"`filters` must be four positive ints. Received: filters={filters!r}")
    inputs = keras.Input(shape, name="images")
    x = inputs
    if shape[2] == 3:
        grey = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="grey")
        x = grey(x)
        grey.set_weights([np.array(_GREY, "float32").reshape(1, 1, 3, 1)])
    for index, width in enumerate(widths):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        if index % 2:
            x = keras.layers.MaxPooling2D(name=f"pool{index // 2}")(x)
    return keras.Model(inputs, x, name=name if widths == _FILTERS else f"{name}_{'x'.join(map(str, widths))}")


def source_classifier(base: keras.Model, classes: int, dropout: float = 0.3) -> keras.Model:
    """The head the base was pretrained under: flatten, dropout, one softmax layer."""
    return keras.Sequential(
        [base, keras.layers.Flatten(name="flatten"), keras.layers.Dropout(dropout, name="dropout"),
         keras.layers.Dense(classes, activation="softmax", name="classes")],
        name=f"{base.name}_source",
    )


def load_base(name: str = "glyphs", input_shape=None, include_top: bool = False) -> keras.Model:
    """A pretrained base that ships with the package, as a `keras.Model` feature extractor.

    Args:
        name: str. One of `names()`. Defaults to `"glyphs"`.
        input_shape: `None` (the 8x8x1 images it was trained on), `(height,
            width)` or `(height, width, channels)` with 1 or 3 channels:
            the convolutions take any size (their features are those of
            8x8 glyphs), and 3 channels are turned grey first. Defaults to
            `None`.
        include_top: bool. Return the source classifier instead (the base
            under its softmax over `info(name)["characters"]`); 8x8x1 only.
            Defaults to False.

    Returns:
        The base (output `(batch, height / 4, width / 4, 128)`) with its
        pretrained weights, BatchNorm statistics included; or with
        `include_top`, the source classifier.

    Raises:
        ValueError: an unknown name, a bad `input_shape`, `include_top`
            with another input shape.
        TypeError: `include_top` is not a bool.

    Example:

    ```python
    base = keras_finetune.pretrained.load_base("glyphs")
    # the demo's settings: the head alone at 1e-2, then everything at 1e-3
    history = fine_tune(base, (images, labels), num_classes=10, head={"pooling": "avg"},
                        learning_rate=1e-2, unfreeze_lr_factor=0.1, frozen_epochs=0.5)
    ```
    """
    _check_name(name)
    check_bool(include_top, "include_top")
    if include_top and _input_shape(input_shape) != (8, 8, 1):
        raise ValueError(f"The source classifier takes 8x8x1 images. Received: input_shape={input_shape!r}")
    source = source_classifier(build_base(name), len(info(name)["characters"]))
    source.load_weights(weights_path(name))
    if include_top:
        return source
    base = build_base(name, input_shape)
    for layer in source.layers[0].layers[1:]:
        base.get_layer(layer.name).set_weights(layer.get_weights())
    return base
