"""`fine_tune`'s training and validation batches as a `tf.data` pipeline (TensorFlow's, on every backend).

The augmentation and mixing layers run in the pipeline's maps with
TensorFlow's ops, reseeded from `(seed, epoch)` at each epoch's start; the
labels become one-hot rows first. Where TensorFlow is missing, `fine_tune`
feeds `ArrayBatches` and runs those layers in the training step instead.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_finetune.callbacks.epoch_seeds import epoch_order, reseed
from keras_finetune.layers.data_layer import pipeline_seed_states
from keras_finetune.validation import check_not_empty, check_one_label_per_image, class_ids

__all__ = ["training_pipeline", "validation_pipeline"]


def _arrays(data: tuple, argument: str) -> tuple:
    """(images, labels) as tensors of as many samples each, or a ValueError naming `argument`."""
    arrays = tuple(tf.convert_to_tensor(array) for array in data)
    check_one_label_per_image(*arrays, argument)
    return arrays


def _epoch_source(data, batch_size: int, seed):
    """`epoch -> that epoch's batches`, from a dataset, an (images, labels) tuple or such a function."""
    if isinstance(data, tf.data.Dataset):
        return lambda epoch: data
    if isinstance(data, tuple) and len(data) == 2:
        arrays = _arrays(data, "train_data")
        count = int(arrays[0].shape[0])

        def shuffled(epoch):  # epoch e's order depends on (seed, e) alone, as a resumed run needs
            indices = tf.data.Dataset.from_tensor_slices(epoch_order(count, seed, epoch)).batch(batch_size)
            return indices.map(lambda index: tuple(tf.gather(array, index) for array in arrays))

        return shuffled
    if callable(data):
        return data
    raise TypeError(
        "Data must be a tf.data.Dataset of (images, labels) batches, a tuple (images, labels), "
        f"or a function epoch -> such a dataset. Received: {type(data).__name__}"
    )


def _batches(data, batch_size: int) -> tf.data.Dataset:
    """Validation batches, in their order."""
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return tf.data.Dataset.from_tensor_slices(_arrays(data, "validation_data")).batch(batch_size)
    raise TypeError(
        "`validation_data` must be a tf.data.Dataset of (images, labels) batches or a tuple (images, labels). "
        f"Received: {type(data).__name__}"
    )


def _one_hot(dataset: tf.data.Dataset, num_classes: int, argument: str) -> tf.data.Dataset:
    """Integer class ids become float32 one-hot rows; one-hot labels pass through."""
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"`{argument}` must yield (images, labels) pairs. Received: elements {spec}")
    labels = spec[1]
    if labels.dtype.is_floating and labels.shape[-1] == num_classes:
        return dataset.map(lambda x, y: (x, tf.cast(y, "float32")))
    if labels.dtype.is_integer:
        return dataset.map(lambda x, y: (x, tf.one_hot(class_ids(tf.reshape(y, [-1]), num_classes), num_classes)))
    raise ValueError(
        f"`{argument}` labels must be integer class ids or one-hot rows of {num_classes} "
        f"classes. Received: labels {labels}"
    )


def training_pipeline(train_data, batch_size: int, classes: int, epochs: int, start: int, augment, mix, seed):
    """The training pipeline from epoch `start` on, its steps per epoch, and the un-augmented batches.

    With a known number of batches it is one iterator over the remaining
    epochs (a new one each short epoch costs more than the epoch), each epoch
    built from `train_data` (see `fine_tune`); with a `seed`, the random
    layers `augment` and `mix` (or None) are reseeded from `(seed, epoch)` at
    its start, so epoch e draws the same whether the run got there in one go
    or was resumed there.
    """
    source = _epoch_source(train_data, batch_size, seed)
    plain = _one_hot(source(tf.constant(0, "int64")), classes, "train_data")
    # Parallel calls would draw the random parameters in no fixed order.
    parallel = None if seed is not None else tf.data.AUTOTUNE
    states = pipeline_seed_states(*(part for part in (augment, mix) if isinstance(part, keras.layers.Layer)))

    def randomised(batches: tf.data.Dataset) -> tf.data.Dataset:
        if augment is not None:
            batches = batches.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=parallel)
        return batches if mix is None else batches.map(mix, num_parallel_calls=parallel)

    @tf.autograph.experimental.do_not_convert  # plain Python control flow on Python values
    def epoch_batches(epoch):
        if seed is not None:
            reseed(states, seed, epoch)
        return randomised(_one_hot(source(epoch), classes, "train_data"))

    steps = int(plain.cardinality())
    check_not_empty(plain, "train_data")
    if steps < 0:  # unknown length: Keras iterates the dataset anew each epoch
        return randomised(plain).prefetch(tf.data.AUTOTUNE), None, plain
    train = tf.data.Dataset.range(start, max(epochs, start + 1)).flat_map(epoch_batches)
    return train.prefetch(tf.data.AUTOTUNE), steps, plain


def validation_pipeline(data, batch_size: int, classes: int) -> tf.data.Dataset:
    """Validation batches in their order, labels one-hot, from a dataset or an `(images, labels)` tuple."""
    batches = _one_hot(_batches(data, batch_size), classes, "validation_data")
    check_not_empty(batches, "validation_data")
    return batches.prefetch(tf.data.AUTOTUNE)


