"""Random draws that depend on (seed, epoch) alone, so a resumed `fit` draws what an uninterrupted one would.

Keras's random layers (Dropout, the augmentation layers, our mixing layers)
draw from a `keras.random.SeedGenerator`, a `[seed, counter]` variable that
every draw advances. `keras.callbacks.BackupAndRestore` saves the weights and
the optimizer but not these counters, so a run resumed at epoch `e` replays
the draws of epoch 0 instead of those of epoch `e`: its dropout masks,
crops and mixes differ, and so do its final weights. Setting every counter
at the start of each epoch to a value that depends only on `(seed, epoch)`
makes the draws of epoch `e` the same whether the run got there in one go or
resumed there.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_finetune.validation import is_int

__all__ = ["EpochSeeds", "epoch_order", "reseed", "seed_states"]

# Draws a layer may take in one epoch before its counter reaches the next epoch's start.
_DRAWS_PER_EPOCH = 2**20
_STATE_NAME = "seed_generator_state"


def seed_states(*layers) -> list:
    """The `SeedGenerator` state variables of `layers` and everything inside them, in a fixed order."""
    states, seen = [], set()
    for layer in layers:
        for variable in layer.variables:
            if variable.name == _STATE_NAME and id(variable) not in seen:
                seen.add(id(variable))
                states.append(variable)
    return states


def reseed(states: list, seed: int, epoch) -> None:
    """Set state `i` to `[seed + i, epoch * 2**20]`: distinct per layer, disjoint per epoch.

    `epoch` may be a tensor (inside a `tf.data` function), so the pipeline can
    reseed its own layers in order with the batches it produces; their states
    are TensorFlow variables then, whatever the backend
    (`layers.data_layer.pipeline_seed_states`).
    """
    for index, state in enumerate(states):
        first = (seed + index) % 2**32
        if is_int(epoch):
            state.assign(np.array([first, epoch * _DRAWS_PER_EPOCH], keras.backend.standardize_dtype(state.dtype)))
        else:
            import tensorflow as tf

            counter = tf.reshape(tf.cast(epoch, state.dtype) * _DRAWS_PER_EPOCH, (1,))
            state.assign(tf.concat([tf.constant([first], dtype=state.dtype), counter], axis=0))


def epoch_order(count: int, seed: int | None, epoch):
    """The indices `0..count-1` in epoch `epoch`'s order: a permutation of `(seed, epoch)` alone (random without a seed)."""
    import tensorflow as tf  # for a tf.data pipeline

    if seed is None:
        return tf.random.shuffle(tf.range(count))
    return tf.random.experimental.stateless_shuffle(
        tf.range(count), seed=tf.stack([tf.constant(seed, "int64"), tf.cast(epoch, "int64")])
    )


class EpochSeeds(keras.callbacks.Callback):
    """Reseed the model's random layers (Dropout, noise, in-model augmentation) at each epoch's start.

    With it, epoch `e`'s dropout masks depend on `(seed, e)` alone, and a run
    resumed at epoch `e` by `keras.callbacks.BackupAndRestore` ends with the
    weights of the uninterrupted run (when its data are the same per epoch,
    too: `fine_tune` with a `seed` reseeds its pipeline the same way).

    Args:
        seed: int. The seed every epoch's draws derive from.

    Example:

    ```python
    model.fit(train_ds, epochs=10, callbacks=[
        keras.callbacks.BackupAndRestore("backup"), EpochSeeds(seed=0),
    ])
    ```
    """

    def __init__(self, seed: int):
        super().__init__()
        if not is_int(seed):
            raise TypeError(f"`seed` must be an int. Received: seed={seed!r}")
        self.seed = int(seed)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        reseed(seed_states(self.model), self.seed, epoch)
