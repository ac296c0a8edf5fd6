"""Dropout classification heads on a pretrained base."""

from __future__ import annotations

import random
from collections.abc import Sequence

import keras

from keras_finetune.validation import check_count, is_int, is_number

__all__ = ["build_classifier"]

_POOLING = {
    "avg": {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D,
            5: keras.layers.GlobalAveragePooling3D},
    "max": {3: keras.layers.GlobalMaxPooling1D, 4: keras.layers.GlobalMaxPooling2D,
            5: keras.layers.GlobalMaxPooling3D},
}


def _as_tuple(value, argument: str) -> tuple:
    if is_number(value):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    raise TypeError(
        f"`{argument}` must be a number or a sequence of numbers. "
        f"Received: {argument}={value!r}"
    )


def _dropout(rate: float, name: str) -> keras.layers.Dropout:
    """A Dropout with a seed of its own, drawn as Keras draws one for `seed=None`.

    The same draw from Python's `random` (which `keras.utils.set_random_seed`
    seeds), so nothing changes on TensorFlow and JAX. On PyTorch an unseeded
    Dropout draws its masks from torch's global generator, which no backup
    holds: a run resumed by `BackupAndRestore` would draw other masks than
    the uninterrupted one. A seeded one draws from its own seed state, a
    variable the backup restores.
    """
    return keras.layers.Dropout(rate, seed=random.randint(1, int(1e9)), name=name)


def _check_arguments(num_classes, hidden_units, dropout, pooling):
    check_count(num_classes, "num_classes", 1)
    if not all(is_int(units) and units >= 1 for units in hidden_units):
        raise ValueError(
            "`hidden_units` must be positive ints. "
            f"Received: hidden_units={hidden_units!r}"
        )
    if len(dropout) == 1:
        dropout = dropout * (len(hidden_units) + 1)
    if len(dropout) != len(hidden_units) + 1:
        raise ValueError(
            "`dropout` needs one rate before each dense layer: "
            f"{len(hidden_units) + 1} rates for hidden_units={hidden_units!r}. "
            f"Received: dropout={dropout!r}"
        )
    if not all(is_number(rate) and 0.0 <= rate < 1.0 for rate in dropout):
        raise ValueError(f"Dropout rates must be in [0, 1). Received: dropout={dropout!r}")
    if pooling not in ("avg", "max", "flatten", None):
        raise ValueError(
            '`pooling` must be "avg", "max", "flatten" or None. '
            f"Received: pooling={pooling!r}"
        )
    return dropout


def _pool(features, pooling):
    """Reduce the base's feature map to one vector per example."""
    rank = len(features.shape)
    if rank == 2:
        return features
    if pooling == "flatten":
        return keras.layers.Flatten(name="head_flatten")(features)
    if pooling is None:
        raise ValueError(
            f"The base outputs rank-{rank} features {tuple(features.shape)}; "
            '`pooling` must be "avg", "max" or "flatten" to reduce them. '
            "Received: pooling=None"
        )
    if rank not in _POOLING[pooling]:
        raise ValueError(
            f"`pooling={pooling!r}` handles rank 3 to 5 features. "
            f"Received: base output of shape {tuple(features.shape)}"
        )
    return _POOLING[pooling][rank](name="head_pool")(features)


def _base_input_shape(base_model) -> tuple:
    """The base's one input shape, without the batch axis."""
    try:
        shape = base_model.input_shape
    except (AttributeError, ValueError):
        # A subclassed model has no input shape, but remembers the one it was built (called) with.
        built = list((getattr(base_model, "_build_shapes_dict", None) or {}).values())
        if len(built) != 1 or not isinstance(built[0], (tuple, list)):
            raise ValueError(
                f"The base {base_model.name!r} has no input shape yet (never called on data); "
                "pass `input_shape`. Received: input_shape=None"
            ) from None
        shape = (None, *built[0][1:])
    if isinstance(shape, list) or (shape and isinstance(shape[0], (tuple, list))):
        raise ValueError(
            "build_classifier supports bases with one input. "
            f"Received: base_model with input shapes {shape}"
        )
    return tuple(shape[1:])


def build_classifier(
    base_model: keras.Model,
    num_classes: int,
    hidden_units: Sequence[int] = (128,),
    dropout: float | Sequence[float] = (0.5, 0.3),
    pooling: str | None = "avg",
    activation: str | None = "softmax",
    input_shape: tuple | None = None,
) -> keras.Model:
    """Put a dropout classification head on a pretrained base.

    The layout practitioners build by hand: base, global pooling, dropout,
    `Dense(relu)` for each of `hidden_units` followed by its dropout, and a
    final `Dense(num_classes)`. The final layers compute in float32 so that a
    `mixed_float16` policy does not round the probabilities.

    The base is called as it is. Freeze it with
    `keras_finetune.freezing.freeze` (or `unfreeze(..., freeze_batchnorm=True)`)
    and its BatchNormalization layers run in inference mode: in Keras 3 that
    flag, not a `training=False` argument, is what `fit` respects.

    With `num_classes=1` the head is binary: one unit, and a `"softmax"`
    activation (constant 1 on one unit) becomes `"sigmoid"`.

    Args:
        base_model: keras.Model. The pretrained base, for example a
            `keras.applications` model built with `include_top=False`.
        num_classes: int. Number of classes; 1 for a binary sigmoid output.
        hidden_units: sequence of int. Units of each hidden `Dense(relu)`
            layer; `()` for a linear head. Defaults to `(128,)`.
        dropout: float or sequence of float. Dropout rate before each dense
            layer (one more rate than hidden layers); a single float is used
            everywhere; 0 skips that dropout. Defaults to `(0.5, 0.3)`.
        pooling: str or None. `"avg"`, `"max"` or `"flatten"` to reduce a
            feature map; ignored when the base already outputs vectors.
            Defaults to `"avg"`.
        activation: str or None. Activation of the output layer; `None`
            gives logits (use `from_logits=True` in the loss). Defaults to
            `"softmax"`.
        input_shape: tuple. Input shape without the batch axis, needed only
            when the base has none (an unbuilt subclassed model). Defaults to
            `None` (the base's own).

    Returns:
        A functional `keras.Model` from the base's input to class
        probabilities (or logits).

    Example:

    >>> base = keras.applications.MobileNetV3Small(
    ...     input_shape=(32, 32, 3), include_top=False, weights=None
    ... )
    >>> model = build_classifier(base, num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    if not isinstance(base_model, keras.layers.Layer):
        raise TypeError(
            "`base_model` must be a keras Model. "
            f"Received: base_model={base_model!r} of type {type(base_model).__name__}"
        )
    hidden_units = _as_tuple(hidden_units, "hidden_units")
    dropout = _check_arguments(
        num_classes, hidden_units, _as_tuple(dropout, "dropout"), pooling
    )
    if input_shape is None:
        input_shape = _base_input_shape(base_model)
    if num_classes == 1 and activation == "softmax":
        activation = "sigmoid"

    inputs = keras.Input(shape=tuple(input_shape))
    x = _pool(base_model(inputs), pooling)
    for index, (units, rate) in enumerate(zip(hidden_units, dropout)):
        if rate:
            x = _dropout(rate, f"head_dropout_{index}")(x)
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{index}")(x)
    if dropout[-1]:
        x = _dropout(dropout[-1], f"head_dropout_{len(hidden_units)}")(x)
    outputs = keras.layers.Dense(
        num_classes, activation=activation, dtype="float32", name="head_output"
    )(x)
    return keras.Model(inputs, outputs, name=f"{base_model.name}_classifier")
