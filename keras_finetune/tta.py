"""Test-time augmentation: class probabilities averaged over augmented views of each image.

fastai's `Learner.tta` predicts each image `n` times under the training
augmentation and blends the mean with the plain prediction:
`(1 - beta) * mean(augmented) + beta * plain`. The usual Keras snippet loops
`model.predict` `n` times over a dataset and averages, which redraws nothing
when the augmentation layers sit inside the model (they are identity at
inference) and averages logits or probabilities as they come. Here the views
are drawn from the data (augmentation in training mode): in a `tf.data` map,
with TensorFlow's generators on every backend, for a dataset or for arrays
where TensorFlow is installed; with the backend's own ops for a
`keras.utils.PyDataset`, or for arrays where it is not. Each batch's `n`
views and the plain image go through the model together, in one call, and
logits are turned into probabilities before averaging.
"""

from __future__ import annotations

import sys

import keras
import numpy as np

from keras_finetune.layers import RandomResizedCrop
from keras_finetune.validation import check_bool, check_count, check_fraction, is_dataset, output_activation, tensorflow_installed

__all__ = ["tta_predict"]

# The default views' crops: most of the image, as evaluation crops are.
_CROP_SCALE = (0.5, 1.0)


def _is_array(data) -> bool:
    tf = sys.modules.get("tensorflow")  # a TensorFlow tensor means it is imported
    return isinstance(data, np.ndarray) or keras.ops.is_tensor(data) or (tf is not None and tf.is_tensor(data))


def _in_pipeline(data, batch_size: int, n: int, views):
    """`(plain, drawn)` numpy batches, the views drawn in a `tf.data` map (TensorFlow's generators, on any backend)."""
    import tensorflow as tf

    if not is_dataset(data):
        data = tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    elif isinstance(data.element_spec, tuple):
        data = data.map(lambda *element: element[0])
    augmentation = views(*data.element_spec.shape[1:3])
    data = data.map(lambda batch: (batch, tf.cast(augmentation(tf.repeat(batch, n, axis=0), training=True), batch.dtype)))
    return data.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _in_process(data, batch_size: int, n: int, views):
    """`(plain, drawn)` numpy batches, the views drawn with the backend's ops (no TensorFlow needed)."""
    if _is_array(data):
        data = keras.ops.convert_to_numpy(data)
        batches = (data[start : start + batch_size] for start in range(0, len(data), batch_size))
    else:
        batches = (element[0] if isinstance(element, (tuple, list)) else element for element in map(data.__getitem__, range(len(data))))
    augmentation = None
    for batch in batches:
        batch = keras.ops.convert_to_numpy(batch)
        if augmentation is None:  # made once, from the first batch's size
            augmentation = views(*batch.shape[1:3])
        drawn = augmentation(keras.ops.repeat(batch, n, axis=0), training=True)
        yield batch, keras.ops.convert_to_numpy(drawn).astype(batch.dtype, copy=False)  # `_stacked` copies it


def _stacked(plain: np.ndarray, drawn: np.ndarray, n: int, flip: bool, beta: float) -> np.ndarray:
    """The `B * views` images of one model call, each image's together: the plain one first (with beta), then the n drawn."""
    drawn = np.array(drawn).reshape(len(plain), n, *plain.shape[1:])  # a copy: the pipeline's arrays are read-only
    if flip:
        drawn[:, 1::2] = drawn[:, 1::2, :, ::-1]
    if beta:
        drawn = np.concatenate([plain[:, None], drawn], axis=1)
    return drawn.reshape(-1, *plain.shape[1:])


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
        data: images (an array or tensor, batched by `batch_size`), or a
            `tf.data.Dataset` or `keras.utils.PyDataset` of image batches or
            of `(images, labels)` batches. Arrays need no TensorFlow: where
            it is missing, their views are drawn with the backend's ops (the
            same kind of views, other draws for the same seed).
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
    if augmentation is not None and not callable(augmentation):
        raise TypeError(f"`augmentation` must be a layer or a callable on image batches. Received: augmentation={augmentation!r}")

    def views(height, width):
        if augmentation is not None:
            return augmentation
        if height is None or width is None:
            raise ValueError(f"The default augmentation needs images of a known size. Received: images of size {(height, width)}")
        return RandomResizedCrop(height, width, scale=_CROP_SCALE, seed=seed)

    if is_dataset(data) or (_is_array(data) and tensorflow_installed()):
        batches = _in_pipeline(data, batch_size, n, views)
    elif _is_array(data) or isinstance(data, keras.utils.PyDataset):
        batches = _in_process(data, batch_size, n, views)
    else:
        raise TypeError(
            "`data` must be an array of images, a keras.utils.PyDataset or a tf.data.Dataset of image batches "
            f"(or of (images, labels)). Received: data of type {type(data).__name__}"
        )
    # One batch at a time, one model call each: the draws come in a fixed order for a fixed seed.
    per_view = []
    for plain, drawn in batches:
        outputs = probabilities(model.predict_on_batch(_stacked(plain, drawn, n, flip, beta)))
        per_view.append(np.asarray(outputs, "float32").reshape(len(plain), n + (1 if beta else 0), -1))
    per_view = np.concatenate(per_view)
    if not beta:
        return per_view.mean(axis=1)
    return (1.0 - beta) * per_view[:, 1:].mean(axis=1) + beta * per_view[:, 0]
