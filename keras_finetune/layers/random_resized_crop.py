"""Inception-style random resized crop, vectorised over the batch.

Keras has `RandomCrop` (fixed size) and `RandomZoom`, but not the crop that
every ImageNet recipe starts with (torchvision's `RandomResizedCrop`): a box
of random area and aspect ratio, resized to the output size. The usual Keras
snippet maps `tf.image.sample_distorted_bounding_box` + `crop` + `resize`
over single images; here one `crop_and_resize` call handles the whole batch.
"""

from __future__ import annotations

import math

import keras

from keras_finetune.layers.data_layer import DataLayer
from keras_finetune.validation import check_channel_axis, check_count, check_data_format, check_pair

__all__ = ["RandomResizedCrop"]

_ATTEMPTS = 10


def _centre_box(ops, height, width, ratio_min, ratio_max):
    """The largest centred box whose aspect ratio w/h lies in [ratio_min, ratio_max]."""
    height_f, width_f = ops.cast(height, "float32"), ops.cast(width, "float32")
    image_ratio = width_f / height_f
    box_w = ops.numpy.where(image_ratio > ratio_max, ops.numpy.round(height_f * ratio_max), width_f)
    box_h = ops.numpy.where(image_ratio < ratio_min, ops.numpy.round(width_f / ratio_min), height_f)
    box_h, box_w = ops.cast(box_h, "int32"), ops.cast(box_w, "int32")
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def _interpolation(ops, start, size, steps: int, limit):
    """(batch, steps, limit) bilinear weights of `steps` samples spread over [start, start + size - 1]."""
    start, size = ops.cast(start, "float32"), ops.cast(size, "float32")
    if steps > 1:
        where = start[:, None] + ops.numpy.arange(steps, dtype="float32")[None, :] * ((size - 1.0) / (steps - 1))[:, None]
    else:  # crop_and_resize samples a one-pixel side at the box's centre
        where = (start + (size - 1.0) / 2.0)[:, None]
    low = ops.numpy.floor(where)
    weight = (where - low)[..., None]
    low = ops.cast(low, "int32")
    high = ops.numpy.minimum(low + 1, limit - 1)
    return (1.0 - weight) * ops.nn.one_hot(low, limit) + weight * ops.nn.one_hot(high, limit)


@keras.saving.register_keras_serializable(package="keras_finetune")
class RandomResizedCrop(DataLayer):
    """Crop a box of random area and aspect ratio from each image and resize it.

    For each image, up to 10 candidate boxes are drawn at once: area
    `U(scale)·H·W`, aspect ratio `w/h` log-uniform in `ratio`; the first that
    fits inside the image is taken, at a uniform position. When none fits
    (a very elongated image), the largest centred box with an allowed aspect
    ratio is used, as torchvision does. All boxes go through a single
    `tf.image.crop_and_resize` (bilinear) in a `tf.data` pipeline and on
    TensorFlow, or the same bilinear sampling as two small matrix products
    per image on JAX and PyTorch. At inference (`training=False`)
    the image is centre-cropped to the output's aspect ratio and resized, so
    an image already of the output size comes back unchanged.

    Float images keep their dtype; integer images come back float32 in their
    original range (a bilinear resize is not integer). Accepts a batch
    (rank 4), a single image (rank 3), or Keras's dict form (`"images"` is
    cropped, other entries pass through).

    Args:
        height: int. Output height.
        width: int. Output width.
        scale: (min, max). Range of the box's area as a fraction of the
            image's, 0 < min <= max <= 1. Defaults to (0.08, 1.0).
        ratio: (min, max). Range of the box's aspect ratio w/h,
            0 < min <= max. Defaults to (3/4, 4/3).
        data_format: str. `"channels_last"` or `"channels_first"`. Defaults
            to Keras's `image_data_format()`.
        seed: int. Seed of the random draws. Defaults to `None`.

    Example:

    ```python
    crop = RandomResizedCrop(224, 224)
    train_ds = train_ds.batch(64).map(lambda x, y: (crop(x), y))
    ```

    References:
        Szegedy et al., Going Deeper with Convolutions, arXiv 1409.4842.
    """

    def __init__(
        self,
        height,
        width,
        scale=(0.08, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        data_format=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.height = check_count(height, "height", 1)
        self.width = check_count(width, "width", 1)
        self.scale = check_pair(scale, "scale", 0.0, 1.0, open_low=True)
        self.ratio = check_pair(ratio, "ratio", 0.0, open_low=True)
        self.data_format = check_data_format(data_format)
        self.built = True

    def call(self, images, training=True):
        if isinstance(images, dict):
            data = dict(images)
            data["images"] = self.call(data["images"], training=training)
            return data
        ops = self.backend
        images = ops.convert_to_tensor(images)
        rank = len(images.shape)
        if rank not in (3, 4):
            raise ValueError(
                f"`images` must have rank 3 (one image) or 4 (a batch). "
                f"Received: images of shape {tuple(images.shape)}"
            )
        batch = images if rank == 4 else images[None]
        check_channel_axis(batch.shape, self.data_format, "RandomResizedCrop")
        if self.data_format == "channels_first":
            batch = ops.numpy.transpose(batch, (0, 2, 3, 1))
        if training is False:
            boxes = self._inference_boxes(batch)
        else:
            boxes = self.get_random_transformation(batch)["boxes"]
        output = self.transform(batch, boxes)
        if self.data_format == "channels_first":
            output = ops.numpy.transpose(output, (0, 3, 1, 2))
        return output if rank == 4 else output[0]

    def get_random_transformation(self, images):
        """Draw `{"boxes": (batch, 4) int32 y, x, h, w}` for channels-last `images`."""
        ops = self.backend
        generator = self._get_seed_generator(ops.name)
        batch_size, height, width = ops.core.shape(images)[:3]
        height_f, width_f = ops.cast(height, "float32"), ops.cast(width, "float32")
        draws = (batch_size, _ATTEMPTS)
        area = ops.random.uniform(draws, *self.scale, seed=generator) * height_f * width_f
        log_ratio = ops.random.uniform(draws, math.log(self.ratio[0]), math.log(self.ratio[1]), seed=generator)
        aspect = ops.numpy.exp(log_ratio)
        box_w = ops.cast(ops.numpy.round(ops.numpy.sqrt(area * aspect)), "int32")
        box_h = ops.cast(ops.numpy.round(ops.numpy.sqrt(area / aspect)), "int32")
        fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
        first = ops.numpy.argmax(ops.cast(fits, "int32"), axis=1)[:, None]
        box_h = ops.numpy.take_along_axis(box_h, first, axis=1)[:, 0]
        box_w = ops.numpy.take_along_axis(box_w, first, axis=1)[:, 0]
        offsets = ops.random.uniform((batch_size, 2), seed=generator)
        y = ops.cast(offsets[:, 0] * ops.cast(height - box_h + 1, "float32"), "int32")
        x = ops.cast(offsets[:, 1] * ops.cast(width - box_w + 1, "float32"), "int32")
        # A uniform draw can reach 1.0 after rounding to float32; keep the box inside.
        y, x = ops.numpy.minimum(y, height - box_h), ops.numpy.minimum(x, width - box_w)
        centre = ops.numpy.stack(_centre_box(ops, height, width, *self.ratio))
        found = ops.numpy.any(fits, axis=1)
        boxes = ops.numpy.stack([y, x, box_h, box_w], axis=1)
        return {"boxes": ops.numpy.where(found[:, None], boxes, centre[None, :])}

    def _inference_boxes(self, images):
        ops = self.backend
        batch_size, height, width = ops.core.shape(images)[:3]
        target_ratio = self.width / self.height
        centre = ops.numpy.stack(_centre_box(ops, height, width, target_ratio, target_ratio))
        return ops.numpy.broadcast_to(centre[None, :], (batch_size, 4))

    def transform(self, images, boxes):
        """Crop channels-last `images` to integer `boxes` (y, x, h, w) and resize, in one call."""
        ops = self.backend
        images = ops.convert_to_tensor(images)
        floating = "float" in str(images.dtype)
        if ops.name == "tensorflow":
            output = self._crop_and_resize(images, boxes)
        else:  # bilinear sampling as (batch, out_h, h) · image · (batch, w, out_w), per channel
            _, height, width, _ = ops.core.shape(images)
            rows = _interpolation(ops, boxes[:, 0], boxes[:, 2], self.height, height)
            cols = _interpolation(ops, boxes[:, 1], boxes[:, 3], self.width, width)
            output = ops.numpy.einsum("boh,bhwc,bpw->bopc", rows, ops.cast(images, "float32"), cols)
        return ops.cast(output, images.dtype) if floating else output

    def _crop_and_resize(self, images, boxes):
        import tensorflow as tf

        shape = tf.shape(images)
        span_h = tf.cast(tf.maximum(shape[1] - 1, 1), "float32")
        span_w = tf.cast(tf.maximum(shape[2] - 1, 1), "float32")
        boxes = tf.cast(boxes, "float32")
        # crop_and_resize puts the output's corner pixels on the box's corner pixel centres.
        normalised = tf.stack(
            [
                boxes[:, 0] / span_h,
                boxes[:, 1] / span_w,
                (boxes[:, 0] + boxes[:, 2] - 1.0) / span_h,
                (boxes[:, 1] + boxes[:, 3] - 1.0) / span_w,
            ],
            axis=1,
        )
        return tf.image.crop_and_resize(images, normalised, tf.range(shape[0]), (self.height, self.width))

    def compute_output_shape(self, input_shape):
        input_shape = list(input_shape)
        if self.data_format == "channels_first":
            input_shape[-2:] = [self.height, self.width]
        else:
            input_shape[-3:-1] = [self.height, self.width]
        return tuple(input_shape)

    def compute_output_spec(self, images, training=True):
        if isinstance(images, dict):
            return super().compute_output_spec(images, training=training)
        dtype = images.dtype if "float" in str(images.dtype) else "float32"
        return keras.KerasTensor(self.compute_output_shape(images.shape), dtype=dtype)

    def get_config(self):
        config = {
            "height": self.height,
            "width": self.width,
            "scale": self.scale,
            "ratio": self.ratio,
            "data_format": self.data_format,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}

