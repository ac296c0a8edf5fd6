"""`image_augmentation`: the usual fine-tuning augmentation as one `keras.layers.Pipeline`.

Built from Keras's own layers (flip, rotation, zoom, translation, brightness,
contrast, saturation, hue) plus `RandomResizedCrop`, which Keras lacks. It is
the torchvision-style recipe that fine-tuning snippets copy, with every part
adjustable and each one switched off by passing `None` (or 0).
"""

from __future__ import annotations

import keras

from keras_finetune.layers.data_layer import DataLayer
from keras_finetune.layers.random_resized_crop import RandomResizedCrop
from keras_finetune.validation import check_channel_axis, check_data_format, check_number, check_pair

__all__ = ["image_augmentation"]

_FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")


def _check_amount(value, argument: str, high: float):
    """None or a float in [0, high]; 0 means off."""
    return None if value is None else check_number(value, argument, 0.0, high) or None


@keras.saving.register_keras_serializable(package="keras_finetune")
class PixelRange(DataLayer):
    """Passes images through after asserting that their pixels lie in `value_range`.

    Keras's colour layers take the range on trust: images in [0, 1] given to
    `RandomBrightness(0.2, value_range=(0, 255))` get shifts of ±51. A batch
    whose pixels leave the range, or one that looks scaled to [0, 1] (largest
    pixel in (0, 1]) while the range reaches above 1, stops with an
    `InvalidArgumentError` that names `value_range`. A batch whose channels
    plainly sit on the other axis than `data_format` is refused as well (the
    colour layers would mix rows instead of channels). The pixel check runs
    wherever TensorFlow runs the layer: on the TensorFlow backend, and in a
    `tf.data` pipeline on every backend. Inside a JAX or PyTorch model the
    images pass unchecked: a check there would wait for the device on every
    batch (PyTorch) or cannot see values at all (a compiled JAX step).

    Args:
        value_range: (min, max). The range the colour layers were given.
        data_format: str. `"channels_last"` or `"channels_first"`. Defaults
            to Keras's `image_data_format()`.
    """

    def __init__(self, value_range, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.value_range = check_pair(value_range, "value_range", strict=True)
        self.data_format = check_data_format(data_format)
        self.built = True

    def call(self, images):
        check_channel_axis(images.shape, self.data_format, "image_augmentation")
        if self.backend.name != "tensorflow":
            return images
        import tensorflow as tf

        pixels = tf.cast(images, "float32")
        low, high = self.value_range
        smallest, largest = tf.reduce_min(pixels), tf.reduce_max(pixels)
        checks = [
            tf.debugging.Assert(
                (smallest >= low) & (largest <= high),
                [f"image_augmentation: pixels outside value_range={self.value_range}; smallest and largest:", smallest, largest],
            )
        ]
        if high > 1.0:
            checks.append(
                tf.debugging.Assert(
                    (largest > 1.0) | (largest <= 0.0),
                    [f"image_augmentation: images look scaled to [0, 1], but value_range={self.value_range}: "
                     "pass value_range=(0, 1). Largest pixel:", largest],
                )
            )
        with tf.control_dependencies(checks):
            return tf.identity(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "value_range": self.value_range, "data_format": self.data_format}


def image_augmentation(
    height: int | None = None,
    width: int | None = None,
    crop_scale=(0.08, 1.0),
    crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
    flip: str | None = "horizontal",
    rotation: float | None = 30.0,
    zoom: float | None = 0.1,
    translation: float | None = 0.1,
    brightness: float | None = 0.2,
    contrast: float | None = 0.2,
    saturation: float | None = 0.2,
    hue: float | None = 0.2,
    value_range=(0, 255),
    data_format: str | None = None,
    seed: int | None = None,
    name: str = "image_augmentation",
) -> keras.layers.Pipeline:
    """A `keras.layers.Pipeline` of augmentation layers for training images.

    In order: a `PixelRange` check of `value_range` (when a colour layer is
    on), `RandomResizedCrop(height, width, crop_scale, crop_ratio)` (only
    when `height` and `width` are given), `RandomFlip(flip)`,
    `RandomRotation(±rotation°)`, `RandomZoom(±zoom)`,
    `RandomTranslation(±translation)`, `RandomBrightness`, `RandomContrast`,
    `RandomSaturation`, `RandomHue`. Every layer is identity at inference
    except the crop, which centre-crops to the output's aspect ratio and
    resizes. Map it over the dataset (`ds.map(lambda x, y: (aug(x), y))`, or
    the dict form) or put it at the start of the model.

    Args:
        height: int. Output height of the random resized crop; with `width`,
            turns the crop on. Defaults to `None` (no crop).
        width: int. Output width of the crop. Defaults to `None`.
        crop_scale: (min, max). Area range of the crop. Defaults to
            (0.08, 1.0).
        crop_ratio: (min, max). Aspect-ratio range of the crop. Defaults to
            (3/4, 4/3).
        flip: str. `"horizontal"`, `"vertical"`, `"horizontal_and_vertical"`
            or `None`. Defaults to `"horizontal"`.
        rotation: float. Maximum rotation in degrees, either way (at most
            180). Defaults to 30.
        zoom: float. Maximum zoom in or out, as a fraction of the size
            (Keras's `RandomZoom` factor). Defaults to 0.1.
        translation: float. Maximum shift as a fraction of height and width.
            Defaults to 0.1.
        brightness: float. Keras's `RandomBrightness` factor: a shift of up to
            ±brightness of `value_range`'s span. Defaults to 0.2.
        contrast: float. Contrast scaled by a factor in [1 − c, 1 + c], as
            Keras's `RandomContrast` (and torchvision). Defaults to 0.2.
        saturation: float. Saturation scaled by a factor in [1 − s, 1 + s],
            as torchvision's `ColorJitter`; converted to Keras's
            `RandomSaturation` factor (which has 0.5 as identity). At most 1.
            Defaults to 0.2.
        hue: float. Hue shifted by up to ±hue of a full turn, as
            torchvision's `ColorJitter` (at most 0.5); converted to Keras's
            `RandomHue` factor. Defaults to 0.2.
        value_range: (min, max). Range of the pixel values, for the colour
            layers, which a `PixelRange` check in front of them asserts on
            every batch (images in [0, 1] with the default range are refused,
            not shifted by ±51). Defaults to (0, 255).
        data_format: str. `"channels_last"` or `"channels_first"`. Defaults
            to Keras's `image_data_format()`.
        seed: int. Base seed; layer `i` gets `seed + i`. Defaults to `None`.
        name: str. Name of the Pipeline. Defaults to
            `"image_augmentation"`.

    Returns:
        A `keras.layers.Pipeline` of the parts switched on (an `Identity`
        layer when none is): unlike a `keras.Sequential`, it stays in
        TensorFlow inside a `tf.data` map on every backend, and its layers
        compute with the backend's ops inside a model.

    Example:

    ```python
    augment = image_augmentation(224, 224, rotation=None, hue=0.05)
    train_ds = train_ds.batch(64).map(lambda x, y: (augment(x), y))
    ```
    """
    if (height is None) != (width is None):
        raise ValueError(
            f"`height` and `width` turn the crop on together. Received: height={height!r}, width={width!r}"
        )
    if flip is not None and flip not in _FLIPS:
        raise ValueError(f"`flip` must be one of {_FLIPS} or None. Received: flip={flip!r}")
    rotation = _check_amount(rotation, "rotation", 180.0)
    zoom = _check_amount(zoom, "zoom", 1.0)
    translation = _check_amount(translation, "translation", 1.0)
    brightness = _check_amount(brightness, "brightness", 1.0)
    contrast = _check_amount(contrast, "contrast", 1.0)
    saturation = _check_amount(saturation, "saturation", 1.0)
    hue = _check_amount(hue, "hue", 0.5)
    value_range = check_pair(value_range, "value_range", strict=True)

    def layer_seed(index):
        return None if seed is None else seed + index

    common = {"data_format": data_format}
    parts = []
    if height is not None:
        parts.append(RandomResizedCrop(height, width, crop_scale, crop_ratio, seed=layer_seed(0), **common))
    candidates = [
        (flip, lambda s: keras.layers.RandomFlip(flip, seed=s, **common)),
        (rotation, lambda s: keras.layers.RandomRotation(rotation / 360.0, seed=s, **common)),
        (zoom, lambda s: keras.layers.RandomZoom(zoom, seed=s, **common)),
        (translation, lambda s: keras.layers.RandomTranslation(translation, translation, seed=s, **common)),
        (brightness, lambda s: keras.layers.RandomBrightness(brightness, value_range=value_range, seed=s, **common)),
        # A single float would give Keras's [1, 1 + c] (its factor bounds clip −c to 0).
        (contrast, lambda s: keras.layers.RandomContrast((contrast, contrast), value_range=value_range, seed=s, **common)),
        # Keras scales saturation by f / (1 − f): f = m / (1 + m) gives the multiplier m.
        (
            saturation,
            lambda s: keras.layers.RandomSaturation(
                ((1 - saturation) / (2 - saturation), (1 + saturation) / (2 + saturation)),
                value_range=value_range, seed=s, **common,
            ),
        ),
        # Keras shifts hue by ±factor/2 of a turn.
        (hue, lambda s: keras.layers.RandomHue(2.0 * hue, value_range=value_range, seed=s, **common)),
    ]
    for index, (setting, make) in enumerate(candidates, start=1):
        if setting is not None:
            parts.append(make(layer_seed(index)))
    if any(setting is not None for setting, _ in candidates[-4:]):  # the colour layers take value_range on trust
        parts.insert(0, PixelRange(value_range, **common))
    # A Pipeline of no layer returns nothing.
    return keras.layers.Pipeline(parts or [keras.layers.Identity()], name=name)
