"""Freeze and unfreeze a pretrained base, with a BatchNormalization policy.

Keras 3 decides what trains from `layer.trainable`, and a
`BatchNormalization` layer with `trainable=False` runs in inference mode even
when `fit` passes `training=True`. A `training=False` baked into a functional
graph does not help: `fit` overrides it (keras#20285). So the `trainable` flag
of each BatchNormalization layer is the one switch that keeps its moving
statistics from being overwritten by the small batches of a fine-tuning set.
`unfreeze` leaves those layers frozen unless asked otherwise.

The policy follows where the weights come from: a BatchNormalization layer
whose moving statistics still hold their initial values (mean 0, variance 1)
has never seen data, and freezing it would normalise with statistics that
are wrong for every input; a randomly initialised base then trains nothing
(its loss stays at ln K). `freeze_batchnorm="auto"` freezes the layers with
learned statistics and lets those still at their initial values train.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_finetune.blocks import all_layers, children, units
from keras_finetune.validation import check_layer

__all__ = [
    "batchnorm_layers",
    "batchnorm_to_freeze",
    "freeze",
    "unfreeze",
    "follow_untrained_batchnorm",
    "trainable_summary",
    "TrainableSummary",
    "untrained_batchnorm",
]

# PyTorch's default (its momentum=0.1): moving statistics that follow a from-scratch layer within an epoch or two.
_UNTRAINED_MOMENTUM = 0.9


def batchnorm_layers(model_or_layer: keras.layers.Layer) -> list:
    """Every `keras.layers.BatchNormalization` inside `model_or_layer`.

    Nested models are searched too; `model_or_layer` itself is included when
    it is a BatchNormalization layer.

    Args:
        model_or_layer: keras.layers.Layer. The model or layer to search.

    Returns:
        A list of BatchNormalization layers, in depth-first order.
    """
    check_layer(model_or_layer, "model_or_layer")
    return [
        layer
        for layer in all_layers(model_or_layer)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def untrained_batchnorm(model_or_layer: keras.layers.Layer) -> list:
    """The BatchNormalization layers that have never seen data.

    Their moving mean is still all zeros and their moving variance all ones
    (Keras's initial values, which no trained layer keeps), or they are not
    built yet.

    Args:
        model_or_layer: keras.layers.Layer. The model or layer to search.

    Returns:
        A list of BatchNormalization layers, in depth-first order.
    """
    return [
        layer
        for layer in batchnorm_layers(model_or_layer)
        if not layer.built
        or (
            np.all(layer.moving_mean.numpy() == 0.0)
            and np.all(layer.moving_variance.numpy() == 1.0)
        )
    ]


def follow_untrained_batchnorm(model_or_layer: keras.layers.Layer) -> list:
    """Give the BatchNormalization layers that never saw data a momentum of 0.9 at most; returns them.

    keras.applications build their BatchNormalization layers with momentum
    0.99 or 0.999, which suits statistics that only need to drift: trained
    from scratch, such a layer's moving statistics stay near their initial
    values for hundreds of steps, and the model in inference mode (every
    validation, every prediction) outputs nearly the same thing for every
    input until then.
    """
    untrained = untrained_batchnorm(model_or_layer)
    for layer in untrained:
        layer.momentum = min(layer.momentum, _UNTRAINED_MOMENTUM)
    return untrained


def batchnorm_to_freeze(base_model: keras.layers.Layer, freeze_batchnorm) -> list:
    """The BatchNormalization layers of `base_model` that a `freeze_batchnorm` policy keeps frozen.

    Args:
        base_model: keras.layers.Layer. The base.
        freeze_batchnorm: `True` (all of them), `False` (none), `"auto"`
            (those with learned statistics, see `untrained_batchnorm`), or a
            list of the BatchNormalization layers to keep frozen.

    Returns:
        A list of BatchNormalization layers.
    """
    if isinstance(freeze_batchnorm, (list, tuple)):
        if not all(isinstance(layer, keras.layers.BatchNormalization) for layer in freeze_batchnorm):
            raise TypeError(
                "A list `freeze_batchnorm` must hold BatchNormalization layers. "
                f"Received: freeze_batchnorm={freeze_batchnorm!r}"
            )
        return list(freeze_batchnorm)
    if freeze_batchnorm is not True and freeze_batchnorm is not False and freeze_batchnorm != "auto":
        raise ValueError(
            '`freeze_batchnorm` must be True, False, "auto" or a list of BatchNormalization layers. '
            f"Received: freeze_batchnorm={freeze_batchnorm!r}"
        )
    if freeze_batchnorm is False:
        return []
    layers = batchnorm_layers(base_model)
    if freeze_batchnorm is True:
        return layers
    untrained = {id(layer) for layer in untrained_batchnorm(base_model)}
    return [layer for layer in layers if id(layer) not in untrained]


def freeze(model_or_layer: keras.layers.Layer) -> keras.layers.Layer:
    """Make a model or layer, and everything nested in it, non-trainable.

    Its weights stop training and its BatchNormalization layers run in
    inference mode. If the model was already compiled, the change reaches
    `fit` only after `compile` is called again (Keras traces the train step
    once).

    Args:
        model_or_layer: keras.layers.Layer. The model or layer to freeze.

    Returns:
        `model_or_layer`, for chaining.

    Example:

    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> freeze(base).trainable_weights
    []
    """
    check_layer(model_or_layer, "model_or_layer")
    model_or_layer.trainable = False
    return model_or_layer


def named_layer(base_model: keras.Model, from_layer, what: str = "`from_layer` must name", received: str | None = None):
    """`from_layer` as a layer of `base_model`, nested ones included; a ValueError that starts with `what`."""
    layers = all_layers(base_model)[1:]
    if isinstance(from_layer, str):
        for layer in layers:
            if layer.name == from_layer:
                return layer
        names = [layer.name for layer in layers]
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        raise ValueError(
            f"{what} a layer of {base_model.name!r}, nested ones included "
            f"(known: {shown}). {received or f'Received: from_layer={from_layer!r}'}"
        )
    check_layer(from_layer, "from_layer")
    if not any(layer is from_layer for layer in layers):
        raise ValueError(f"`from_layer` is not a layer of {base_model.name!r}. Received: from_layer={from_layer.name!r}")
    return from_layer


def _first_unfrozen_unit(base_model: keras.Model, found: list, top, from_layer) -> int:
    """Index in `found` (the base's units) of the lowest unit to make trainable."""
    if top is not None and from_layer is not None:
        raise ValueError(
            "Pass `top` or `from_layer`, not both. "
            f"Received: top={top!r}, from_layer={from_layer!r}"
        )
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)):
            raise TypeError(
                f"`top` must be an int. Received: top={top!r} "
                f"of type {type(top).__name__}"
            )
        if not 0 <= top <= len(found):
            raise ValueError(
                f"`top` must be between 0 and the {len(found)} {describe_units(found)} of "
                f"{base_model.name!r}. Received: top={top}"
            )
        return len(found) - int(top)
    if from_layer is None:
        return 0
    index = found.index_of(named_layer(base_model, from_layer))
    return len(found) if index is None else index


def describe_units(found) -> str:
    """What a base's units are, in words: "units (the stem and 16 blocks)" or "entries of `base_model.layers`"."""
    if found.blocks:
        return f"units (the stem and {len(found) - 1} blocks)"
    return "entries of `base_model.layers`"


def unfreeze(
    base_model: keras.Model,
    top: int | None = None,
    from_layer: str | keras.layers.Layer | None = None,
    freeze_batchnorm: bool | str | list = True,
    blocks=None,
) -> keras.Model:
    """Make the top of a pretrained base trainable, the rest frozen.

    The base is counted in units, bottom to top (see `keras_finetune.blocks`):
    where it has blocks (the residual blocks of a ResNet, the MBConv blocks
    of an EfficientNet, the transformer blocks of a keras-hub ViT, or the
    ones `blocks` names), its stem and then each block, what lies above the
    last block joining it; otherwise each entry of `base_model.layers` (the
    input layer the lowest). With neither `top` nor `from_layer`, the whole
    base becomes trainable. With `top=N`, the top N units; `top=0` freezes
    the whole base. With `from_layer` (a layer of the base, nested ones
    included, by name or object), the unit that holds it and every unit
    above. Everything below is frozen, so successive calls can move the
    boundary either way.

    BatchNormalization layers anywhere in the base stay frozen, which keeps
    them in inference mode with their pretrained moving statistics, unless
    `freeze_batchnorm=False`. Small fine-tuning batches otherwise overwrite
    those statistics and accuracy collapses.

    If the model was already compiled, the change reaches `fit` only after
    `compile` is called again.

    Args:
        base_model: keras.Model. The pretrained base.
        top: int. How many units, counted from the top, to make trainable.
            Defaults to `None` (the whole base).
        from_layer: str or keras.layers.Layer. The lowest layer to make
            trainable, by name or by object. Defaults to `None`.
        freeze_batchnorm: bool, `"auto"` or list. Keep BatchNormalization
            layers frozen: `True` all, `False` none, `"auto"` those with
            learned statistics (a layer still at its initial statistics
            trains; see `untrained_batchnorm`), or the list of layers to keep
            frozen. Defaults to `True`.
        blocks: list of str or callable. The base's blocks, as
            `keras_finetune.blocks.units` takes them. Defaults to `None`
            (found from the layer names).

    Returns:
        `base_model`, for chaining.

    Example:

    >>> base = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(8)]
    ... )
    >>> len(unfreeze(base, top=1).trainable_weights)
    2
    """
    if not isinstance(base_model, keras.Model):
        raise TypeError(
            "`base_model` must be a keras.Model. "
            f"Received: base_model={base_model!r} of type {type(base_model).__name__}"
        )
    found = units(base_model, blocks)
    start = _first_unfrozen_unit(base_model, found, top, from_layer)
    frozen_batchnorm = batchnorm_to_freeze(base_model, freeze_batchnorm)
    if start == len(found):
        base_model.trainable = False
        return base_model
    # Keras 3 ignores setting `trainable` to the value it already has, which
    # would leave sublayers frozen by an earlier call frozen: reset through False.
    base_model.trainable = False
    base_model.trainable = True
    for unit in found[:start]:
        for layer in unit:
            layer.trainable = False
    for layer in frozen_batchnorm:
        layer.trainable = False
    return base_model


class TrainableSummary(dict):
    """The counts of `trainable_summary`, a dict that prints as a table."""

    def __str__(self) -> str:
        rows = [
            ("", "trainable", "non-trainable"),
            ("parameters", self["trainable_params"], self["non_trainable_params"]),
            ("layers with weights", self["trainable_layers"], self["frozen_layers"]),
            ("BatchNorm layers", self["batchnorm_training"], self["batchnorm_inference"]),
        ]
        lines = [f"{rows[0][0]:<20}{rows[0][1]:>12}{rows[0][2]:>16}"]
        lines += [f"{name:<20}{a:>12,}{b:>16,}" for name, a, b in rows[1:]]
        lines.append("(BatchNorm: trainable = training mode, non-trainable = inference mode)")
        return "\n".join(lines)


def parameter_count(variables) -> int:
    """The number of scalars in `variables` (a model's trainable weights, say)."""
    return int(sum(np.prod(v.shape, dtype=np.int64) for v in variables))


def trainable_summary(model: keras.layers.Layer) -> TrainableSummary:
    """Count what trains in a model: parameters, layers, BatchNorm modes.

    Parameter counts are those Keras reports in `model.summary()`. A layer is
    counted if it owns weights and has no sublayers; it is trainable if any of
    its weights is among `model.trainable_weights` (a layer whose own flag is
    `True` inside a frozen parent does not train). A BatchNormalization layer
    runs in training mode during `fit` when its own `trainable` flag is set.

    Args:
        model: keras.layers.Layer. The model (or layer) to summarise.

    Returns:
        A `TrainableSummary` dict with keys `trainable_params`,
        `non_trainable_params`, `trainable_layers`, `frozen_layers`,
        `batchnorm_training` and `batchnorm_inference`; `print()` it for a
        table.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> trainable_summary(model)["trainable_params"]
    10
    """
    check_layer(model, "model")
    trainable_ids = {id(v) for v in model.trainable_weights}
    leaves = [
        layer
        for layer in all_layers(model)
        if layer.weights and not children(layer)
    ]
    trainable_layers = sum(
        any(id(v) in trainable_ids for v in layer.weights) for layer in leaves
    )
    batchnorm = batchnorm_layers(model)
    batchnorm_training = sum(bool(layer.trainable) for layer in batchnorm)
    return TrainableSummary(
        trainable_params=parameter_count(model.trainable_weights),
        non_trainable_params=parameter_count(model.non_trainable_weights),
        trainable_layers=trainable_layers,
        frozen_layers=len(leaves) - trainable_layers,
        batchnorm_training=batchnorm_training,
        batchnorm_inference=len(batchnorm) - batchnorm_training,
    )
