"""`StopMixing`: train the last epochs on unmixed images (timm's "mixup off epoch").

The mixing layers read a boolean variable, `layer.enabled`, on every batch,
inside the traced `tf.data` map or training step, so flipping it from a
callback takes effect without rebuilding the pipeline.
"""

from __future__ import annotations

import keras

from keras_finetune import backend
from keras_finetune.layers.mixing import MixingLayer
from keras_finetune.validation import check_epoch, epoch_of

__all__ = ["StopMixing"]


class StopMixing(keras.callbacks.Callback):
    """Turns MixUp/CutMix layers off from epoch `epoch` on, and back on after `fit`.

    Each epoch begins by setting `layer.enabled = epoch < stop epoch`, so the
    state follows the epoch number: a `fit` resumed with `initial_epoch` or by
    `BackupAndRestore` mixes exactly when an uninterrupted one would. With
    mixing off the layers still turn integer labels one-hot and smooth them.
    `on_train_end` puts back the flags found at `on_train_begin`.

    Keras starts a fresh iterator over a finite dataset each epoch, after
    `on_epoch_begin`, so the switch is exact. A `.repeat()`ed dataset with
    `steps_per_epoch` keeps one iterator: batches already prefetched when the
    flag flips (up to the prefetch buffer) are still mixed.

    Epoch logs gain `mixing` (1.0 or 0.0).

    Args:
        layers: a mixing layer (`MixUp`, `CutMix`, `MixUpOrCutMix`) or a list
            of them.
        epoch: int or float. The first unmixed epoch, from 0; a float in
            [0, 1) is a fraction of `fit`'s epochs (floored).

    Example:

    ```python
    mixing = MixUpOrCutMix(num_classes=10)
    model.fit(train_ds.map(mixing), epochs=30, callbacks=[StopMixing(mixing, epoch=25)])
    ```
    """

    def __init__(self, layers, epoch: int | float):
        super().__init__()
        layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        for layer in layers:
            if not isinstance(layer, MixingLayer):
                raise TypeError(
                    "StopMixing needs keras_finetune MixUp, CutMix or MixUpOrCutMix layers. "
                    f"Received: layers containing {layer!r} of type {type(layer).__name__}"
                )
        if not layers:
            raise ValueError("StopMixing needs at least one mixing layer. Received: layers=[]")
        check_epoch(epoch, "epoch")
        self.layers = layers
        self.epoch = epoch

    def on_train_begin(self, logs=None) -> None:
        self._stop = epoch_of(self.epoch, self.params.get("epochs"))
        self._checked = False
        self._flags_before = [bool(layer.enabled.numpy()) for layer in self.layers]

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        changed = False
        for layer in self.layers:
            changed |= bool(layer.enabled.numpy()) != (epoch < self._stop)
            layer.enabled.assign(epoch < self._stop)
        if changed and not backend.STEP_UPDATES_VARIABLES and self.model is not None:
            # A compiled JAX step read the switch as a constant when traced (MixingModel): trace it again.
            self.model.make_train_function(force=True)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self._checked:  # by now the pipeline's map and the training step have called their layers
            self._checked = True
            unused = [layer.name for layer in self.layers if not layer.used]
            if unused:
                raise ValueError(
                    f"StopMixing switches layers that this fit never called: {unused}. The pipeline mixes with "
                    "other layer objects, which would go on mixing. Pass the layers mapped over the training "
                    f"dataset (or given to MixingModel). Received: layers={self.layers}"
                )
        if logs is not None:
            logs["mixing"] = float(epoch < self._stop)

    def on_train_end(self, logs=None) -> None:
        for layer, flag in zip(self.layers, self._flags_before):
            layer.enabled.assign(flag)
