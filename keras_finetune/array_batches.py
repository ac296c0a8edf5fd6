"""`ArrayBatches`: `(images, labels)` arrays as a `keras.utils.PyDataset`, in an order of `(seed, epoch)` alone.

It is how `fine_tune` feeds arrays to `fit` where TensorFlow (and so
`tf.data`) is missing, as on a GPU machine with JAX or PyTorch alone: Keras
reads a `PyDataset` on every backend, and the random layers run inside the
training step instead (`MixingModel`). Epoch `e`'s order is a permutation of
`(seed, e)` drawn by numpy, so a resumed run reads what an uninterrupted one
reads; it is not the permutation `epoch_order` draws with TensorFlow for a
`tf.data` pipeline. The epoch is the one `fit` is in: `follow_epochs()` is
the callback that tells it.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_finetune.validation import check_class_ids, check_count, check_not_empty, check_one_label_per_image, is_int

__all__ = ["ArrayBatches"]


def _labels_one_hot(labels: np.ndarray, num_classes: int, argument: str) -> np.ndarray:
    """Integer class ids, or one-hot rows of `num_classes`, as float32 one-hot rows."""
    if labels.dtype.kind in "iu" and labels.shape[1:] in ((), (1,)):
        check_class_ids(labels, num_classes)
        return np.eye(num_classes, dtype="float32")[labels.reshape(-1)]
    if labels.dtype.kind == "f" and labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels.astype("float32", copy=False)
    raise ValueError(
        f"`{argument}` labels must be integer class ids or one-hot rows of {num_classes} classes. "
        f"Received: labels of dtype {labels.dtype} and shape {labels.shape}"
    )


class ArrayBatches(keras.utils.PyDataset):
    """Batches of `(images, one-hot labels)` from arrays, reshuffled per epoch from `(seed, epoch)`.

    Args:
        images: array of images, one per label.
        labels: integer class ids or one-hot rows of `num_classes`.
        batch_size: int >= 1. The last batch holds what is left.
        num_classes: int >= 2. The labels become float32 one-hot rows of it.
        seed: int or None. With a seed, epoch `e`'s order depends on
            `(seed, e)` alone; without, it is random. Defaults to `None`.
        shuffle: bool. False keeps the arrays' order (validation data).
            Defaults to `True`.
        argument: str. The argument named in errors. Defaults to `"train_data"`.
    """

    def __init__(self, images, labels, batch_size: int, num_classes: int, seed=None, shuffle=True, argument="train_data"):
        super().__init__()
        self.images = np.asarray(images)
        labels = np.asarray(labels)
        check_one_label_per_image(self.images, labels, argument)
        check_not_empty((self.images, labels), argument)
        self.labels = _labels_one_hot(labels, num_classes, argument)
        self.batch_size = check_count(batch_size, "batch_size", 1)
        if seed is not None and not is_int(seed):
            raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self._order_of = (None, None)  # (epoch, its order)

    def __len__(self) -> int:
        return math.ceil(self.images.shape[0] / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices in epoch `epoch`'s order."""
        count = self.images.shape[0]
        if not self.shuffle:
            return np.arange(count)
        if self._order_of[0] != epoch:
            generator = np.random.default_rng(None if self.seed is None else [self.seed, epoch])
            self._order_of = (epoch, generator.permutation(count))
        return self._order_of[1]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        chosen = self.order(self.epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        return self.images[chosen], self.labels[chosen]

    def follow_epochs(self) -> keras.callbacks.Callback:
        """A callback that sets `epoch` to the epoch `fit` begins, before its first batch is read."""
        return _FollowEpochs(self)


class _FollowEpochs(keras.callbacks.Callback):
    def __init__(self, batches: ArrayBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.batches.epoch = epoch
