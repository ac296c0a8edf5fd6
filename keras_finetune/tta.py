"""Test-time augmentation: class probabilities averaged over augmented views of each image.

fastai's `Learner.tta` predicts each image `n` times under the training
augmentation and blends the mean with the plain prediction:
`(1 - beta) * mean(augmented) + beta * plain`. The usual Keras snippet loops
`model.predict` `n` times over a dataset and averages, which redraws nothing
when the augmentation layers sit inside the model (they are identity at
inference) and averages logits or probabilities as they come. Here the views
are drawn in the input pipeline (augmentation in training mode), each batch's
`n` views and the plain image go through the model together, in one
`predict`, and logits are turned into probabilities before averaging.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_finetune.layers import RandomResizedCrop
from keras_finetune.validation import check_bool, check_count, check_fraction, output_activation

__all__ = ["tta_predict"]

# The default views' crops: most of the image, as evaluation crops are.
_CROP_SCALE = (0.5, 1.0)


def _images(data, batch_size: int) -> tf.data.Dataset:
    """Batches of images alone, from an array, a tensor or a dataset of images or (images, labels, ...)."""
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        return data.map(lambda *element: element[0]) if isinstance(spec, tuple) else data
    if isinstance(data, (np.ndarray, tf.Tensor)) or keras.ops.is_tensor(data):
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    raise TypeError(
        "`data` must be an array of images or a tf.data.Dataset of image batches (or of (images, labels)). "
        f"Received: data of type {type(data).__name__}"
    )


def _to_probabilities(model: keras.Model):
    """`outputs -> probabilities` for a model that ends in a softmax or outputs logits; a ValueError otherwise."""
    activation = output_activation(model)
    if activation == "softmax":
        return lambda outputs: outputs
    if activation == "linear":
        return lambda outputs: keras.ops.convert_to_numpy(keras.ops.softmax(outputs, axis=-1))
    raise ValueError(
        "tta_predict averages class probabilities and reads from the model's last layer whether it outputs "
        f"logits or probabilities; this one ends in {activation or 'a layer without activation'!r}. "
        "Received: a model that ends in neither a softmax nor a linear layer"
    )


def tta_predict(
    model: keras.Model,
    data,
    augmentation=None,
    n: int = 8,
    flip: bool = True,
    beta: float | None = 0.25,
    batch_size: int = 32,
    seed: int | None = None,
) -> np.ndarray:
    """Class probabilities averaged over `n` augmented views of each image, blended with the plain one.

    For each image, `n` views are drawn by `augmentation` (called in training
    mode on the batch repeated `n` times), every second view is also
    flipped left-right when `flip` is True, and the result is
    `(1 - beta) * mean(view probabilities) + beta * plain probabilities`, as
    fastai's `tta`. A batch of `B` images costs one model call on
    `(n + 1) * B` images (`n * B` when `beta` is None or 0): the work of
    `n + 1` passes, no more. Logits are turned into probabilities first.

    Args:
        model: keras.Model. A classifier ending in a softmax or in logits.
        data: images (an array or tensor, batched by `batch_size`) or a
            `tf.data.Dataset` of image batches or `(images, labels)` batches.
        augmentation: a layer or callable applied to image batches, in
            training mode. Defaults to `None`: a `RandomResizedCrop` to the
            images' size with scale (0.5, 1), seeded by `seed`.
        n: int >= 1. Augmented views per image. Defaults to 8.
        flip: bool. Flip every second view left-right (not for images a
            flip changes the class of, such as digits). Defaults to True.
        beta: float in [0, 1] or None. Weight of the plain prediction.
            Defaults to 0.25 (fastai's).
        batch_size: int. Batch size for array data. Defaults to 32.
        seed: int. Seed of the default augmentation. Defaults to `None`.

    Returns:
        A numpy array `(images, classes)` of probabilities.

    Example:

    ```python
    probabilities = keras_finetune.tta_predict(model, test_ds, n=8)
    accuracy = np.mean(probabilities.argmax(-1) == test_labels)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    n = check_count(n, "n", 1)
    flip = check_bool(flip, "flip")
    beta = 0.0 if beta is None else check_fraction(beta, "beta")
    check_count(batch_size, "batch_size", 1)
    probabilities = _to_probabilities(model)
    images = _images(data, batch_size)
    if augmentation is None:
        height, width = images.element_spec.shape[1:3]
        if height is None or width is None:
            raise ValueError(f"The default augmentation needs images of a known size. Received: images {images.element_spec}")
        augmentation = RandomResizedCrop(height, width, scale=_CROP_SCALE, seed=seed)
    elif not callable(augmentation):
        raise TypeError(f"`augmentation` must be a layer or a callable on image batches. Received: augmentation={augmentation!r}")
    views = n + (1 if beta else 0)

    def stacked(batch):
        """(B, ...) -> (B * views, ...), each image's views together: the plain one first (with beta), then n augmented."""
        repeated = tf.repeat(batch, n, axis=0)
        drawn = tf.cast(augmentation(repeated, training=True), batch.dtype)
        if flip:
            odd = tf.reshape(tf.range(tf.shape(drawn)[0]) % n % 2 == 1, (-1, 1, 1, 1))
            drawn = tf.where(odd, tf.reverse(drawn, axis=[2]), drawn)
        drawn = tf.reshape(drawn, tf.concat([[-1, n], tf.shape(batch)[1:]], axis=0))
        if beta:
            drawn = tf.concat([batch[:, None], drawn], axis=1)
        return tf.reshape(drawn, tf.concat([[-1], tf.shape(batch)[1:]], axis=0))

    # One batch at a time: the draws come in a fixed order for a fixed seed.
    outputs = model.predict(images.map(stacked).prefetch(tf.data.AUTOTUNE), verbose=0)
    per_view = np.asarray(probabilities(outputs), "float32").reshape(-1, views, outputs.shape[-1])
    if not beta:
        return per_view.mean(axis=1)
    return (1.0 - beta) * per_view[:, 1:].mean(axis=1) + beta * per_view[:, 0]
