"""Pretrained bases by name (`keras.applications`) or by path (`.keras`), their preprocessing inside."""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

from keras_finetune import pretrained
from keras_finetune.heads import build_classifier

__all__ = ["APPLICATIONS", "image_classifier", "load_backbone", "load_keras_model", "preprocessing_layer"]

APPLICATIONS = tuple(
    name for name in dir(keras.applications) if name[0].isupper() and callable(getattr(keras.applications, name))
)


def preprocessing_layer(preprocess_input, name: str = "preprocess") -> keras.layers.Layer | None:
    """A frozen 1x1 convolution equal to an affine `preprocess_input`, or `None` for the identity.

    Every `keras.applications` `preprocess_input` is affine per pixel (scale
    to [-1, 1], subtract the ImageNet mean and divide by its deviation, or
    flip RGB to BGR and subtract the mean), so a 1x1 convolution holds it
    exactly. In front of the model, the saved `.keras` file takes raw
    [0, 255] pixels and needs no custom layer to reload.

    Raises:
        ValueError: `preprocess_input` is not affine.
    """
    corners = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).astype("float32")
    out = np.asarray(preprocess_input(corners.reshape(1, 4, 1, 3).copy())).reshape(4, 3)
    bias, kernel = out[0], (out[1:] - out[0]) / 255.0
    probe = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    expected = np.asarray(preprocess_input(probe.copy()))
    if not np.allclose(probe @ kernel + bias, expected, atol=1e-3):
        raise ValueError(f"The backbone's preprocess_input is not affine per pixel. Received: {preprocess_input!r}")
    if np.allclose(kernel, np.eye(3)) and np.allclose(bias, 0.0):
        return None
    layer = keras.layers.Conv2D(3, 1, trainable=False, name=name)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel.reshape(1, 1, 3, 3), bias])
    return layer


def load_keras_model(path: str, argument: str) -> keras.Model:
    """`keras.models.load_model(path)`, or a ValueError naming `argument` and the file."""
    if not os.path.isfile(path):
        raise ValueError(f"{argument} must be a .keras file. Received: {path!r} (no such file)")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises several types for a bad file
        raise ValueError(f"{argument} {path!r} could not be loaded as a Keras model: {error}") from None


def _from_path(path: str, image_size: int | None) -> keras.Model:
    model = load_keras_model(path, "--backbone")
    size = tuple(model.input_shape[1:3])
    if image_size is not None and None not in size and size != (image_size, image_size):
        raise ValueError(
            f"The model {path!r} takes {size[0]}x{size[1]} images. Received: --image-size {image_size}"
        )
    return model


def _shipped(name: str, image_size: int | None, weights) -> keras.Model:
    """A base that ships with the package (`keras_finetune.pretrained`), grey images of its size by default."""
    if weights not in ("pretrained", None):
        raise ValueError(
            f"--weights for the shipped {name} base must be pretrained (its own) or none. Received: {weights!r}"
        )
    shape = None if image_size is None else (image_size, image_size)
    return pretrained.load_base(name, shape) if weights else pretrained.build_base(name, shape)


def load_backbone(
    name: str, image_size: int | None = None, weights: str | None = "pretrained"
) -> tuple[keras.Model, keras.layers.Layer | None]:
    """A base without its classifier: a shipped base's name (`keras_finetune.pretrained.names()`), a
    `keras.applications` name, or a `.keras` path.

    `weights` is `"pretrained"` (a shipped base's own; for
    `keras.applications`, ImageNet's, downloaded by Keras once, which needs
    network access; `"imagenet"` says the same), `None`, or the path of a
    weights file (`.weights.h5`, or Keras's `..._notop.h5`). A `.keras` path
    is loaded as it is (a feature extractor, its preprocessing its own) and
    `weights` is ignored. A shipped base takes grey images, 8x8 unless
    `image_size` says otherwise.

    Returns:
        `(base, preprocess)`: `preprocess` is the frozen layer that does a
        `keras.applications` base's `preprocess_input` (see
        `preprocessing_layer`) or scales a shipped base's [0, 255] pixels
        to [0, 1], or `None`.

    Raises:
        ValueError: an unknown name, an image size the backbone refuses, a
            file that does not load.
        ConnectionError: the ImageNet weights could not be downloaded.
    """
    if name.endswith(".keras") or os.path.sep in name:
        return _from_path(name, image_size), None
    if name in pretrained.names():
        return _shipped(name, image_size, weights), keras.layers.Rescaling(1 / 255.0, name="preprocess")
    if name not in APPLICATIONS:
        raise ValueError(
            f"--backbone must be one of the shipped {', '.join(pretrained.names())}, keras.applications' "
            f"{', '.join(APPLICATIONS)}, or a .keras path. Received: {name!r}"
        )
    weights = "imagenet" if weights == "pretrained" else weights
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise ValueError(f"--weights must be pretrained (imagenet), none or a weights file. Received: {weights!r} (no such file)")
    size = 224 if image_size is None else image_size
    constructor = getattr(keras.applications, name)
    try:
        base = constructor(
            include_top=False, weights="imagenet" if weights == "imagenet" else None, input_shape=(size, size, 3)
        )
    except ValueError as error:  # checked before any download
        raise ValueError(f"{name} refuses --image-size {size}: {error}") from None
    except Exception as error:  # keras.utils.get_file raises a bare Exception offline
        raise ConnectionError(
            f"Could not download {name}'s ImageNet weights ({error}). --weights imagenet needs network "
            f"access; on a machine without it, copy the weights file there and pass --weights PATH"
        ) from None
    if weights not in ("imagenet", None):
        try:
            base.load_weights(weights)
        except Exception as error:  # h5py and Keras raise several types for a wrong file
            raise ValueError(f"--weights {weights!r} does not fit {name} without its top: {error}") from None
    return base, preprocessing_layer(sys.modules[constructor.__module__].preprocess_input)


def image_classifier(
    name: str, num_classes: int, image_size: int | None = None, weights: str | None = "pretrained", head: dict | None = None
) -> tuple[keras.Model, keras.Model]:
    """`load_backbone`'s base under `build_classifier`'s head, taking [0, 255] pixels.

    Returns:
        `(model, base)`: the classifier and the base inside it, to freeze
        and unfreeze (the preprocessing layer in front stays frozen).
    """
    base, preprocess = load_backbone(name, image_size, weights)
    classifier = build_classifier(base, num_classes, **(head or {}))
    if preprocess is None:
        return classifier, base
    inputs = keras.Input(base.input_shape[1:], name="pixels")
    return keras.Model(inputs, classifier(preprocess(inputs)), name=classifier.name), base
