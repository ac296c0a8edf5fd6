"""Recompute BatchNormalization moving statistics with one pass over data.

After weights are averaged (SWA, an optimizer's EMA) the moving statistics
no longer match them: each BatchNormalization layer still holds statistics of
the activations of weights that no longer exist. Keras has no way to
recompute them, and the usual snippet (a few `fit` steps with momentum 0.99)
moves them only a little. This module runs the data through the model once and
sets every layer to the exact mean and variance of its inputs over that data.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence

import keras
import numpy as np

from keras_finetune import backend
from keras_finetune.blocks import all_layers
from keras_finetune.freezing import batchnorm_layers
from keras_finetune.validation import check_count, check_layer

__all__ = ["update_batchnorm"]


def _batches(data, steps: int | None, batch_size: int):
    """Model inputs, one batch at a time, from the forms `fit` takes."""
    if isinstance(data, tuple):  # (x, y) or (x, y, sample_weight) arrays
        data = data[0]
    if isinstance(data, (np.ndarray, dict)) or keras.ops.is_tensor(data) or hasattr(data, "__array__"):
        samples = keras.tree.map_structure(np.asarray, data)
        count = len(keras.tree.flatten(samples)[0])
        data = (keras.tree.map_structure(lambda x: x[start : start + batch_size], samples) for start in range(0, count, batch_size))
    if not hasattr(data, "__iter__"):
        raise TypeError(
            "`data` must be a tf.data.Dataset, an array, a tuple (x, y) or an iterable of batches. "
            f"Received: data={data!r}"
        )
    for batch in itertools.islice(data, steps):
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def trained_batchnorm_layers(model) -> list:
    """The BatchNormalization layers whose statistics `fit` updates: the trainable ones."""
    return [layer for layer in batchnorm_layers(model) if layer.trainable]


def _select(model, layers) -> list:
    if layers is None:
        return trained_batchnorm_layers(model)
    every = batchnorm_layers(model)
    for layer in layers:
        if not any(layer is known for known in every):
            raise ValueError(
                "`layers` must hold BatchNormalization layers of `model`. "
                f"Received: layers containing {getattr(layer, 'name', layer)!r}"
            )
    return list(layers)


def update_batchnorm(
    model: keras.Model,
    data,
    steps: int | None = None,
    batch_size: int = 32,
    layers: Sequence[keras.layers.BatchNormalization] | None = None,
) -> list:
    """Set BatchNormalization moving statistics to their values over `data`.

    Runs `model(x, training=True)` once over `data` (traced, one call per
    batch) and sets each selected layer's `moving_mean` and `moving_variance`
    to the mean and the (biased) variance of that layer's inputs over every
    sample of `data`, exactly: batches are weighted by their size, and the
    variance includes the spread between batch means, which the cumulative
    average of batch variances used by PyTorch's `update_bn` leaves out.

    By default the layers recomputed are those that train, i.e. have
    `trainable=True`: `fit` updates their statistics. A frozen
    BatchNormalization layer runs in inference mode during `fit`, so its
    statistics are part of the function that was trained and are left alone;
    name it in `layers` to recompute it anyway. The other layers run as in
    `fit`'s training mode (Dropout active, frozen BatchNormalization in
    inference mode). Each layer's `momentum`, `trainable` flag and, for a
    layer not selected, its statistics are restored afterwards.

    Under a `tf.distribute` strategy the pass runs in cross-replica context
    and every replica ends with the same statistics (Keras keeps them per
    replica, and they drift apart during `fit`).

    Use it after `SWA` without `bn_data`, after `keras.callbacks.SwapEMAWeights`
    or an optimizer with `use_ema=True`, or whenever weights were set by hand.

    Args:
        model: keras.Model. A built model.
        data: the inputs: a `tf.data.Dataset` of `x` or `(x, y, ...)`
            batches, an array or tensor of samples, a tuple `(x, y)` of them,
            or any iterable of batches (a generator, a `keras.utils.PyDataset`).
        steps: int. Use only this many batches. Defaults to `None` (all).
        batch_size: int. Batch size for array data. Defaults to `32`.
        layers: list. The BatchNormalization layers to recompute. Defaults to
            `None` (every trainable one).

    Returns:
        The list of layers whose statistics were recomputed.

    Example:

    ```python
    model.compile(keras.optimizers.AdamW(use_ema=True), "sparse_categorical_crossentropy")
    model.fit(train_ds, epochs=10, callbacks=[keras.callbacks.SwapEMAWeights()])
    keras_finetune.callbacks.update_batchnorm(model, train_ds)  # statistics of the EMA weights
    ```

    References:
        Izmailov et al., Averaging Weights Leads to Wider Optima and Better
        Generalization, arXiv 1803.05407 (section 3.2, batch normalization).
    """
    check_layer(model, "model")
    if steps is not None:
        check_count(steps, "steps", 1)
    check_count(batch_size, "batch_size", 1)
    selected = _select(model, layers)
    if not selected:
        return []
    selected_ids = {id(layer) for layer in selected}
    # Trainable layers left out still update in training mode: their
    # statistics are put back afterwards; so are all of them on failure.
    saved = [
        (id(layer) in selected_ids, variable, np.array(variable.numpy()))
        for layer in batchnorm_layers(model)
        if layer.trainable or id(layer) in selected_ids
        for variable in (layer.moving_mean, layer.moving_variance)
    ]
    flags = [(layer, layer.momentum, layer.trainable) for layer in selected]
    done = False
    try:
        with backend.scope(model):
            for layer in selected:
                # momentum 0: after each batch the moving statistics are that
                # batch's moments, read and accumulated below.
                layer.momentum = 0.0
                layer.trainable = True
                layer.moving_mean.assign(keras.ops.zeros(layer.moving_mean.shape))
                layer.moving_variance.assign(keras.ops.ones(layer.moving_variance.shape))
            total, sums, squares = _accumulate(model, selected, _batches(data, steps, batch_size))
            if total == 0:
                raise ValueError(
                    "update_batchnorm needs data to compute statistics from, and "
                    f"`data` yielded no batch. Received: data={data!r}"
                )
            moments = [(first / total, np.maximum(second / total - (first / total) ** 2, 0.0)) for first, second in zip(sums, squares)]
            broken = [layer.name for layer, (mean, variance) in zip(selected, moments) if not np.isfinite(mean).all() or not np.isfinite(variance).all()]
            if broken:  # the finally clause puts the last good statistics back
                raise ValueError(
                    f"update_batchnorm computed NaN or infinite statistics for {broken}: the data or the weights "
                    "hold non-finite values. The layers keep their statistics from before the call. "
                    f"Received: data={data!r}"
                )
            for layer, (mean, variance) in zip(selected, moments):
                layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
                layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
        done = True
    finally:
        for layer, momentum, trainable in flags:
            layer.momentum = momentum
            layer.trainable = trainable
        with backend.scope(model):
            for is_selected, variable, value in saved:
                if not (done and is_selected):
                    variable.assign(value)
    return selected


# model -> (the flags it was traced under, traced pass). Tracing costs about
# as much as a pass; SWA's evaluation calls this every epoch with equal flags.
_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced_pass(model, layers: list):
    """`x -> moving statistics of layers after model(x, training=True)`, traced once per set of flags."""
    flags = (
        tuple(id(layer) for layer in layers),
        tuple((id(layer), layer.trainable, getattr(layer, "momentum", None)) for layer in all_layers(model)),
    )
    cached = _PASSES.get(model)
    if cached is not None and cached[0] == flags:
        return cached[1]
    model_ref = weakref.ref(model)  # the cache must not keep the model alive
    # The statistics `model(x, training=True)` leaves, from `stateless_call`: the same on every backend.
    positions = {id(variable): index for index, variable in enumerate(model.non_trainable_variables)}
    wanted = [(positions[id(layer.moving_mean)], positions[id(layer.moving_variance)]) for layer in layers]

    def moments(trainable, non_trainable, x):
        _, updated = model_ref().stateless_call(trainable, non_trainable, x, training=True)
        return [(updated[mean], updated[variance]) for mean, variance in wanted]

    traced = backend.compiled(moments)

    def run(x):
        model = model_ref()
        values = [[variable.value for variable in variables] for variables in (model.trainable_variables, model.non_trainable_variables)]
        return traced(*values, keras.tree.map_structure(keras.ops.convert_to_tensor, x))

    _PASSES[model] = (flags, run)
    return run


def _accumulate(model, layers: list, batches) -> tuple:
    """Samples seen, and per layer the size-weighted sums of batch E[x] and E[x²]."""
    moments = _traced_pass(model, layers)
    total = 0
    sums = [0.0] * len(layers)
    squares = [0.0] * len(layers)
    for x in batches:
        size = int(keras.tree.flatten(x)[0].shape[0])
        for index, (mean, variance) in enumerate(moments(x)):
            mean = np.asarray(mean, dtype="float64")
            sums[index] = sums[index] + size * mean
            squares[index] = squares[index] + size * (np.asarray(variance, dtype="float64") + mean**2)
        total += size
    return total, sums, squares
