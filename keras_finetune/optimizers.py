"""Discriminative learning rates: a lower rate for the pretrained base than for the head, or per block.

Keras 3.15 added `keras.optimizers.MultiOptimizer`, which routes each variable
to a sub-optimizer by variable-path regex; `discriminative_optimizer` writes
those paths for you. Its `DiscriminativeOptimizer` also accepts gradients for
part of the variables it was built over, which `ProgressiveUnfreezing` needs
(Keras's own refuses anything but all of them). A sub-optimizer whose
variables are all frozen does not count steps, so the base's Adam starts its
bias correction afresh when the base is unfrozen.
"""

from __future__ import annotations

import re

import keras

from keras_finetune.blocks import all_layers, units
from keras_finetune.validation import check_number, check_positive

__all__ = ["discriminative_optimizer", "layer_decay_optimizer", "layer_decay_scales"]

_MultiOptimizer = getattr(keras.optimizers, "MultiOptimizer", None)

if _MultiOptimizer is not None:
    __all__.append("DiscriminativeOptimizer")

    @keras.saving.register_keras_serializable(package="keras_finetune")
    class DiscriminativeOptimizer(_MultiOptimizer):
        """A `keras.optimizers.MultiOptimizer` that can update a subset of its variables.

        Built over every variable any phase trains, it routes the gradients of
        whatever trains now to their sub-optimizers and leaves the others
        alone. Its learning rate, for the callbacks of this package, is that
        of the default optimizer; the others keep their ratio to it.
        """

        def apply(self, grads, trainable_variables=None):
            if trainable_variables is None or not self.built:
                return super().apply(grads, trainable_variables)
            grouped = [[] for _ in self._inner_optimizers]
            for grad, variable in zip(grads, trainable_variables):
                index = self._var_to_optimizer_idx.get(self._var_key(variable))
                if index is None:
                    raise ValueError(
                        f"Unknown variable: {variable.path}. This optimizer was "
                        "built over other variables."
                    )
                if grad is not None:
                    grouped[index].append((grad, variable))
            for optimizer, pairs in zip(self._inner_optimizers, grouped):
                if pairs:
                    optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
            self._iterations.assign_add(1)


def _make(optimizer, learning_rate: float, options: dict):
    template = keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer
    config = {**template.get_config(), **options, "learning_rate": learning_rate}
    return template.__class__.from_config(config)


def _check_models(model, base_model, caller: str) -> None:
    """Keras 3.15's MultiOptimizer, two models, the base inside the model, and variable paths that tell weights apart."""
    if _MultiOptimizer is None:
        raise ImportError(
            f"{caller} needs keras.optimizers.MultiOptimizer, "
            f"added in Keras 3.15. Installed: keras {keras.__version__}"
        )
    for name, value in (("model", model), ("base_model", base_model)):
        if not isinstance(value, keras.Model):
            raise TypeError(f"`{name}` must be a keras.Model. Received: {name}={value!r}")
    if not any(layer is base_model for layer in all_layers(model)):
        raise ValueError(
            f"`base_model` ({base_model.name!r}) is not a layer of `model` ({model.name!r})."
        )
    paths = [v.path for v in model.weights]
    clashes = sorted({path for path in paths if paths.count(path) > 1})
    if clashes:
        raise ValueError(
            "Weights of the model share variable paths, so the optimizer's routes "
            f"cannot tell them apart: {clashes[:3]}. Give their layers unique names."
        )


def discriminative_optimizer(
    model: keras.Model,
    base_model: keras.Model,
    head_lr: float,
    base_lr: float,
    optimizer="adam",
    **optimizer_kwargs,
):
    """A MultiOptimizer with one rate for `base_model`'s weights, another for the rest.

    Every weight of `base_model` (trainable now or later) goes to a copy of
    `optimizer` at `base_lr`, every other weight of `model` (the head) to a
    copy at `head_lr`. Compile with it and add `ProgressiveUnfreezing`: a
    phase's learning rate then sets the head's rate and the base's follows at
    the same ratio (`base_lr / head_lr`).

    Needs Keras 3.15 or newer (`keras.optimizers.MultiOptimizer`).

    Args:
        model: keras.Model. The model that will be compiled.
        base_model: keras.Model. The pretrained base inside `model`.
        head_lr: float. Learning rate of everything outside the base, > 0.
        base_lr: float. Learning rate of the base, > 0.
        optimizer: str or keras.optimizers.Optimizer. The kind of optimizer
            (an instance serves as a template; its rate is replaced).
            Defaults to `"adam"`.
        **optimizer_kwargs: More arguments for both sub-optimizers, such as
            `weight_decay`.

    Returns:
        A `DiscriminativeOptimizer` (a `keras.optimizers.MultiOptimizer`).

    Example:

    ```python
    optimizer = discriminative_optimizer(model, base, head_lr=1e-3, base_lr=1e-4)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    ```
    """
    _check_models(model, base_model, "discriminative_optimizer")
    check_positive(head_lr, "head_lr")
    check_positive(base_lr, "base_lr")
    base_paths = {v.path for v in base_model.weights}
    head = _make(optimizer, head_lr, optimizer_kwargs)
    base = _make(optimizer, base_lr, optimizer_kwargs)
    routes = keras.optimizers.OptimizerMap(head, {re.escape(path): base for path in sorted(base_paths)})
    return DiscriminativeOptimizer(routes, name="discriminative")


# Weights that timm's ViTs also keep out of weight decay, whatever their rank.
_NO_DECAY_NAMES = ("position_embedding", "pos_embed", "class_token", "cls_token")


def _no_weight_decay(variable) -> bool:
    """timm's rule: biases, norm scales and offsets (rank <= 1), and position embeddings and class tokens."""
    return len(variable.shape) <= 1 or any(name in variable.path for name in _NO_DECAY_NAMES)


def _kernel_led(found) -> list:
    """Blocks for a base without any: a layer with a kernel starts one; the layers after it (its
    normalisation, its activation) join it; layers below the first kernel are the stem."""
    groups = [[]]
    for unit in found:
        for layer in unit:
            if any(v.path.endswith("kernel") for v in layer.weights):
                groups.append([])
            groups[-1].append(layer)
    return groups


def layer_decay_scales(model: keras.Model, base_model: keras.Model, decay: float, blocks=None) -> dict:
    """`variable path -> learning-rate scale` of layer-wise decay, timm's `param_groups_layer_decay`'s `lr_scale`.

    With the base's stem and its B blocks bottom to top (`keras_finetune.blocks.units`),
    the stem gets `decay ** (B + 1)`, block j (from 1) `decay ** (B + 1 - j)`, and
    everything above the last block and outside the base (its final norm, the head) 1.
    """
    found = units(base_model, blocks)
    groups = [list(unit) for unit in found] if found.blocks else _kernel_led(found)
    above = {id(layer) for layer in found.above}
    depth = len(groups)
    scales = {v.path: 1.0 for v in model.weights}
    for index, group in enumerate(groups):
        for layer in group:
            if id(layer) in above:
                continue
            for variable in layer.weights:
                scales[variable.path] = decay ** (depth - index)
    return scales


def layer_decay_optimizer(
    model: keras.Model,
    base_model: keras.Model,
    learning_rate: float,
    decay: float = 0.75,
    optimizer="adamw",
    blocks=None,
    **optimizer_kwargs,
):
    """An optimizer with layer-wise learning-rate decay: the head at `learning_rate`, each block below at `decay` times the one above.

    BEiT's and timm's `param_groups_layer_decay`: the base's stem and blocks
    are found from its layer names (keras.applications ResNets, EfficientNets,
    ConvNeXts, MobileNets; keras-hub ViTs; see `keras_finetune.blocks`) or
    from `blocks`; the rates are `learning_rate` times `layer_decay_scales`.
    A base with no blocks to find is split at each layer with a kernel (a
    convolution and the normalisation after it form one block). As in timm,
    weight decay leaves out biases, normalisation weights, position
    embeddings and class tokens: each block has one sub-optimizer with the
    optimizer's weight decay and one without, so the split survives saving.

    Compile with it and add `ProgressiveUnfreezing` or an epoch schedule:
    the rate they set is the head's, and every block keeps its ratio to it.
    Variables frozen for a while are skipped (see `DiscriminativeOptimizer`).
    Needs Keras 3.15 or newer (`keras.optimizers.MultiOptimizer`).

    Args:
        model: keras.Model. The model that will be compiled.
        base_model: keras.Model. The pretrained base inside `model`.
        learning_rate: float. The head's rate, > 0.
        decay: float. The factor from one block to the one below, in (0, 1].
            Defaults to `0.75`.
        optimizer: str or keras.optimizers.Optimizer. The kind of optimizer
            (an instance serves as a template; its rate is replaced).
            Defaults to `"adamw"`.
        blocks: list of str or callable. The base's blocks, as
            `keras_finetune.blocks.units` takes them. Defaults to `None`.
        **optimizer_kwargs: More arguments for every sub-optimizer, such as
            `weight_decay`.

    Returns:
        A `DiscriminativeOptimizer` (a `keras.optimizers.MultiOptimizer`).

    Example:

    ```python
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    model = keras_finetune.build_classifier(base, num_classes=10)
    model.compile(layer_decay_optimizer(model, base, 1e-3, decay=0.8, weight_decay=0.05), "sparse_categorical_crossentropy")
    ```

    References:
        Bao et al., BEiT: BERT Pre-Training of Image Transformers, arXiv 2106.08254.
    """
    _check_models(model, base_model, "layer_decay_optimizer")
    check_positive(learning_rate, "learning_rate")
    decay = check_number(decay, "decay", 0.0, 1.0, open_low=True)
    scales = layer_decay_scales(model, base_model, decay, blocks)
    template = keras.optimizers.get(optimizer)
    weight_decay = {**template.get_config(), **optimizer_kwargs}.get("weight_decay")
    made = {}
    routes = {}
    for variable in model.weights:
        group = (scales[variable.path], bool(weight_decay) and _no_weight_decay(variable))
        if group not in made:
            extra = {"weight_decay": 0.0} if group[1] else {}
            made[group] = _make(template, learning_rate * group[0], {**optimizer_kwargs, **extra})
        routes[variable.path] = made[group]
    default = made.setdefault((1.0, False), _make(template, learning_rate, optimizer_kwargs))
    mapping = {re.escape(path): sub for path, sub in routes.items() if sub is not default}
    return DiscriminativeOptimizer(keras.optimizers.OptimizerMap(default, mapping), name="layer_decay")
