"""Label smoothing for one-hot and sparse integer labels, in two conventions.

Keras 3 smooths only one-hot labels (`CategoricalCrossentropy`); its
`SparseCategoricalCrossentropy` has no `label_smoothing`. Two conventions are
in use, and papers differ on which they mean by "label smoothing ε":

- `mode="uniform"` (Keras, PyTorch, Szegedy et al.): mix the one-hot target
  with the uniform distribution, so the true class gets `1 - ε + ε/K` and
  every other class `ε/K`.
- `mode="others"`: the true class gets `1 - ε` and the `K - 1` other classes
  share `ε`, `ε/(K-1)` each.

References:
    Szegedy et al., Rethinking the Inception Architecture for Computer
    Vision, arXiv 1512.00567.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_finetune.validation import check_bool, check_fraction, class_ids, is_int

__all__ = ["smooth_labels", "CategoricalCrossentropy", "SparseCategoricalCrossentropy"]

_MODES = ("uniform", "others")


def _check_smoothing(epsilon, mode, argument: str) -> float:
    """ε in [0, 1): at 1 every target is the uniform distribution and nothing is learnt."""
    epsilon = check_fraction(epsilon, argument, below_one=True)
    if mode not in _MODES:
        raise ValueError(f'`mode` must be "uniform" or "others". Received: mode={mode!r}')
    return epsilon


def _smooth(one_hot, epsilon: float, mode: str):
    """Smooth float targets whose last axis holds the K class probabilities."""
    num_classes = one_hot.shape[-1]
    if mode == "uniform":
        return one_hot * (1.0 - epsilon) + epsilon / num_classes
    if num_classes < 2:
        raise ValueError(
            'mode="others" needs at least 2 classes to share epsilon. '
            f"Received: {num_classes} class"
        )
    return one_hot * (1.0 - epsilon) + (1.0 - one_hot) * (epsilon / (num_classes - 1))


def smooth_labels(labels, epsilon: float, num_classes: int | None = None, mode: str = "uniform"):
    """Smooth one-hot or integer class labels.

    Integer labels of shape `(...)` become float targets of shape
    `(..., num_classes)`. Float labels are taken as (possibly soft) class
    probabilities on their last axis, so MixUp/CutMix targets work too; with
    `mode="others"` a soft target `y` becomes `y (1 - ε) + (1 - y) ε/(K-1)`,
    which still sums to 1.

    Args:
        labels: integer class ids or float one-hot targets; a tensor or array.
        epsilon: float. Smoothing in [0, 1).
        num_classes: int. Number of classes; required for integer labels,
            checked against the last axis of float labels. Defaults to `None`.
        mode: str. `"uniform"` (true class `1-ε+ε/K`, others `ε/K`, as Keras)
            or `"others"` (true class `1-ε`, others `ε/(K-1)`). Defaults to
            `"uniform"`.

    Returns:
        A float tensor of smoothed targets.

    Example:

    >>> ops.convert_to_numpy(smooth_labels([0, 2], 0.1, num_classes=3, mode="others"))
    array([[0.9 , 0.05, 0.05],
           [0.05, 0.05, 0.9 ]], dtype=float32)
    """
    epsilon = _check_smoothing(epsilon, mode, "epsilon")
    labels = ops.convert_to_tensor(labels)
    if "int" in keras.backend.standardize_dtype(labels.dtype):
        if not is_int(num_classes) or num_classes < 1:
            raise ValueError(
                "Integer labels need `num_classes`, a positive int. "
                f"Received: num_classes={num_classes!r}"
            )
        labels = ops.one_hot(class_ids(labels, num_classes), num_classes)
    elif len(labels.shape) == 0 or labels.shape[-1] == 1:
        raise ValueError(
            "Float labels are class probabilities on their last axis, and these have one class: "
            "class ids must be integers (`labels.astype('int32')`) with `num_classes`. "
            f"Received: labels of shape {tuple(labels.shape)}"
        )
    elif num_classes is not None and labels.shape[-1] != num_classes:
        raise ValueError(
            f"Float labels of shape {tuple(labels.shape)} have {labels.shape[-1]} classes "
            f"on their last axis. Received: num_classes={num_classes!r}"
        )
    return _smooth(labels, epsilon, mode)


class _SmoothedCrossentropy(keras.losses.Loss):
    """Shared arguments, validation and config of the two losses."""

    def __init__(self, label_smoothing, mode, from_logits, reduction, name, dtype):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = _check_smoothing(label_smoothing, mode, "label_smoothing")
        self.mode = mode
        self.from_logits = check_bool(from_logits, "from_logits")

    def _crossentropy(self, one_hot, y_pred):
        if self.label_smoothing:
            one_hot = _smooth(one_hot, self.label_smoothing, self.mode)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits
        )

    def get_config(self):
        config = {
            "label_smoothing": self.label_smoothing,
            "mode": self.mode,
            "from_logits": self.from_logits,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_finetune")
class CategoricalCrossentropy(_SmoothedCrossentropy):
    """Cross-entropy on one-hot (or soft) targets, smoothed in either convention.

    With `mode="uniform"` this computes what
    `keras.losses.CategoricalCrossentropy(label_smoothing=ε)` computes;
    `mode="others"` gives the true class `1-ε` and the rest `ε/(K-1)` each.

    Args:
        label_smoothing: float. ε in [0, 1). Defaults to 0.
        mode: str. `"uniform"` or `"others"` (see `smooth_labels`).
            Defaults to `"uniform"`.
        from_logits: bool. Whether `y_pred` are logits. Defaults to `False`.
        reduction: str. As in `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"categorical_crossentropy"`.
        dtype: str. Dtype of the loss computation. Defaults to `None`
            (Keras's float type).

    Example:

    >>> loss = CategoricalCrossentropy(label_smoothing=0.1, mode="others")
    >>> model.compile(optimizer="adam", loss=loss)

    References:
        Szegedy et al., arXiv 1512.00567.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        mode: str = "uniform",
        from_logits: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(label_smoothing, mode, from_logits, reduction, name, dtype)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        return self._crossentropy(ops.cast(y_true, y_pred.dtype), y_pred)


@keras.saving.register_keras_serializable(package="keras_finetune")
class SparseCategoricalCrossentropy(_SmoothedCrossentropy):
    """Cross-entropy on integer class ids, with the label smoothing Keras lacks.

    Keras 3's `SparseCategoricalCrossentropy` has no `label_smoothing`; users
    one-hot their labels in the pipeline to get it. This loss takes the ids as
    they come (shape `(batch,)` or `(batch, 1)`, int or float) and smooths on
    the fly. Without smoothing it computes exactly Keras's sparse loss. An id
    outside [0, K) or a float id that is not a whole number stops training
    with an `InvalidArgumentError` that says so (except in a model compiled
    with `jit_compile=True`: XLA drops the check).

    Args:
        label_smoothing: float. ε in [0, 1). Defaults to 0.
        mode: str. `"uniform"` (Keras's convention: true class `1-ε+ε/K`) or
            `"others"` (true class `1-ε`, others `ε/(K-1)`). Defaults to
            `"uniform"`.
        from_logits: bool. Whether `y_pred` are logits. Defaults to `False`.
        reduction: str. As in `keras.losses.Loss`. Defaults to
            `"sum_over_batch_size"`.
        name: str. Defaults to `"sparse_categorical_crossentropy"`.
        dtype: str. Dtype of the loss computation. Defaults to `None`
            (Keras's float type).

    Example:

    >>> loss = SparseCategoricalCrossentropy(label_smoothing=0.1)
    >>> model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    >>> model.fit(images, integer_labels)

    References:
        Szegedy et al., arXiv 1512.00567.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        mode: str = "uniform",
        from_logits: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "sparse_categorical_crossentropy",
        dtype=None,
    ):
        super().__init__(label_smoothing, mode, from_logits, reduction, name, dtype)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        y_true = class_ids(y_true, y_pred.shape[-1])
        if not self.label_smoothing:
            return keras.losses.sparse_categorical_crossentropy(
                y_true, y_pred, from_logits=self.from_logits
            )
        one_hot = ops.one_hot(y_true, y_pred.shape[-1], dtype=y_pred.dtype)
        return self._crossentropy(one_hot, y_pred)
