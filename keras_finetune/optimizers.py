"""Discriminative learning rates: a lower rate for the pretrained base than for the head.

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

from keras_finetune.freezing import _all_layers
from keras_finetune.validation import check_positive

__all__ = ["discriminative_optimizer"]

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
    template = keras.optimizers.get(optimizer)
    config = {**template.get_config(), **options, "learning_rate": learning_rate}
    return template.__class__.from_config(config)


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
    if _MultiOptimizer is None:
        raise ImportError(
            "discriminative_optimizer needs keras.optimizers.MultiOptimizer, "
            f"added in Keras 3.15. Installed: keras {keras.__version__}"
        )
    for name, value in (("model", model), ("base_model", base_model)):
        if not isinstance(value, keras.Model):
            raise TypeError(f"`{name}` must be a keras.Model. Received: {name}={value!r}")
    check_positive(head_lr, "head_lr")
    check_positive(base_lr, "base_lr")
    if not any(layer is base_model for layer in _all_layers(model)):
        raise ValueError(
            f"`base_model` ({base_model.name!r}) is not a layer of `model` ({model.name!r})."
        )
    base_ids = {id(v) for v in base_model.weights}
    base_paths = {v.path for v in base_model.weights}
    clashes = sorted(v.path for v in model.weights if id(v) not in base_ids and v.path in base_paths)
    if clashes:
        raise ValueError(
            "Weights of the head and of the base share variable paths, so "
            f"they cannot be told apart: {clashes[:3]}. Give their layers unique names."
        )
    head = _make(optimizer, head_lr, optimizer_kwargs)
    base = _make(optimizer, base_lr, optimizer_kwargs)
    routes = keras.optimizers.OptimizerMap(head, {re.escape(path): base for path in sorted(base_paths)})
    return DiscriminativeOptimizer(routes, name="discriminative")
