"""Stochastic Weight Averaging as a `fit` callback.

Keras has none: `tfa.optimizers.SWA` went with TensorFlow Addons, worked with
legacy optimizers only and left the BatchNormalization statistics to the user;
the optimizer's EMA averages trainable variables only. This callback averages
every weight at epoch ends, anneals the learning rate, puts the average into
the model when `fit` ends and recomputes the BatchNormalization statistics
(`update_batchnorm`). Its state (the average and its count) can be kept on disk
so that a run resumed by `keras.callbacks.BackupAndRestore` ends as an
uninterrupted one.
"""

from __future__ import annotations

import math
import warnings

import keras

from keras_finetune.callbacks import _optimizer
from keras_finetune.callbacks._averaging import WeightAverage
from keras_finetune.callbacks.batchnorm_statistics import trained_batchnorm_layers, update_batchnorm
from keras_finetune.validation import check_count, check_epoch, check_positive, epoch_of

__all__ = ["SWA"]

_STEM = "swa"  # its state is swa_state.npz in `backup_dir`


class SWA(keras.callbacks.Callback):
    """Stochastic Weight Averaging, with the BatchNormalization statistics recomputed.

    From epoch `start_epoch` on (counted from 0 as Keras counts epochs), the
    weights at the end of every epoch join an equal-weight running average of
    all the model's weights (trainable and not, frozen ones included): the
    weights at the end of epoch `start_epoch` are the first averaged. When
    `fit` ends the average is put into the model and, when `bn_data` is given,
    the statistics of every trainable BatchNormalization layer are recomputed
    with one pass over it (see `update_batchnorm`). Averages are kept in
    float32 (float64 weights in float64) on the host, so they are the same for
    every replica under a `tf.distribute` strategy and keep their precision
    under `mixed_float16`.

    Learning rate: with `swa_lr`, the rate is moved from the rate in effect
    when epoch `start_epoch` begins, `r0`, to `swa_lr` over `anneal_epochs`
    epochs and then held: epoch `start_epoch + k` gets
    `r0 + (swa_lr - r0) * f(min((k + 1) / anneal_epochs, 1))`, with
    `f(x) = (1 - cos(pi * x)) / 2` for `"cos"` and `f(x) = x` for `"linear"`
    (`swa_lr` from `start_epoch` on when `anneal_epochs=0`). From then on SWA
    owns the rate: `StepLR`, `CosineAnnealing` and `ProgressiveUnfreezing`
    leave it alone, whatever their order in `callbacks`. With a
    `LossScaleOptimizer` or a `MultiOptimizer` the rate set is that of the
    default optimizer, the others keep their ratios to it.

    Epoch logs gain `swa_n` (weights averaged so far) and, with `swa_lr`,
    `learning_rate`; put `CSVLogger` after SWA in `callbacks` to see them.
    With `validation_data`, each epoch from `start_epoch` on also evaluates
    the average (after a BatchNormalization pass over `bn_data`) and logs
    `swa_val_loss` and `swa_val_<metric>`; the trained weights are put back
    afterwards, so training goes on undisturbed.

    Interrupted runs: with `backup_dir` (BackupAndRestore's own `backup_dir`
    will do) the state is written there at each epoch end, and a `fit`
    resumed at epoch `e` by BackupAndRestore reads the state of epoch `e - 1`
    back, so it ends with the same weights as an uninterrupted run. The files
    are deleted when `fit` completes. A `fit` that starts after
    `start_epoch` without that state raises a `ValueError` rather than
    average only part of the epochs. A completed `fit` leaves the average in
    the model; another `fit` with `initial_epoch` and the same callback
    object continues the average but trains from the averaged weights.
    `keras.callbacks.EarlyStopping(restore_best_weights=True)` also puts
    weights into the model when `fit` ends: use one or the other.

    Bad input: `start_epoch` negative, a fraction outside [0, 1), or (when
    `fit` starts) at or beyond `fit`'s `epochs` raises `ValueError`: averaging
    would never happen.

    Args:
        start_epoch: int or float. The first epoch averaged, from 0; a float
            in [0, 1) is a fraction of `fit`'s `epochs` (0.75 of 20 epochs is
            epoch 15).
        swa_lr: float. The rate to anneal to and hold during averaging.
            Defaults to `None` (the rate is left to other callbacks).
        anneal_epochs: int. Epochs to reach `swa_lr` in. Defaults to `0`.
        anneal_strategy: str. `"cos"` or `"linear"`. Defaults to `"cos"`.
        bn_data: the data for the BatchNormalization pass, any form
            `update_batchnorm` takes (usually the training dataset).
            Defaults to `None` (no pass; a warning says what to call when the
            model has trainable BatchNormalization layers).
        bn_steps: int. Batches of `bn_data` to use. Defaults to `None` (all).
        validation_data: data to evaluate the average on at each epoch end,
            in a form `model.evaluate` takes (a dataset, or a tuple
            `(x, y)`). Defaults to `None`.
        backup_dir: str. Directory to keep the averaging state in.
            Defaults to `None` (kept in memory only).
        verbose: int. 1 prints the rate set and the count of averaged
            weights at each epoch. Defaults to `0`.

    Example:

    ```python
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(
        train_ds,
        epochs=20,
        callbacks=[SWA(start_epoch=15, swa_lr=0.01, anneal_epochs=2, bn_data=train_ds)],
    )
    # the model now holds the average of the weights of epochs 15-19
    ```

    References:
        Izmailov et al., Averaging Weights Leads to Wider Optima and Better
        Generalization, arXiv 1803.05407.
    """

    def __init__(
        self,
        start_epoch: int | float,
        swa_lr: float | None = None,
        anneal_epochs: int = 0,
        anneal_strategy: str = "cos",
        bn_data=None,
        bn_steps: int | None = None,
        validation_data=None,
        backup_dir: str | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        check_epoch(start_epoch, "start_epoch")
        if swa_lr is not None:
            swa_lr = check_positive(swa_lr, "swa_lr")
        anneal_epochs = check_count(anneal_epochs, "anneal_epochs", 0)
        if anneal_epochs and swa_lr is None:
            raise ValueError(
                f"`anneal_epochs` anneals the rate to `swa_lr`; give `swa_lr` too. Received: anneal_epochs={anneal_epochs}, swa_lr=None"
            )
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f'`anneal_strategy` must be "cos" or "linear". Received: anneal_strategy={anneal_strategy!r}'
            )
        if bn_steps is not None:
            check_count(bn_steps, "bn_steps", 1)
        self.start_epoch = start_epoch
        self.swa_lr = swa_lr
        self.anneal_epochs = anneal_epochs
        self.anneal_strategy = anneal_strategy
        self.bn_data = bn_data
        self.bn_steps = bn_steps
        self.validation_data = validation_data
        self.backup_dir = backup_dir
        self.verbose = verbose
        self._start = None
        self._average = None
        self._resumed = False

    def sets_rate(self, epoch: int) -> bool:
        """Whether SWA sets the learning rate of `epoch` (other callbacks then do not)."""
        return self.swa_lr is not None and self._start is not None and epoch >= self._start

    def _rate(self, epoch: int, anneal_from: float) -> float:
        if not self.anneal_epochs:
            return self.swa_lr
        x = min((epoch - self._start + 1) / self.anneal_epochs, 1.0)
        if self.anneal_strategy == "cos":
            x = (1.0 - math.cos(math.pi * x)) / 2.0
        return anneal_from + (self.swa_lr - anneal_from) * x

    def set_model(self, model) -> None:
        super().set_model(model)
        _optimizer.clear_controllers(model)

    def on_train_begin(self, logs=None) -> None:
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("SWA needs a compiled model: call `compile` first.")
        epochs = self.params.get("epochs")
        start = epoch_of(self.start_epoch, epochs)
        if start >= epochs:
            raise ValueError(
                f"SWA would start averaging at epoch {start} (counted from 0), "
                f"but this `fit` runs epochs 0 to {epochs - 1}: nothing would be "
                f"averaged. Received: start_epoch={self.start_epoch!r}, epochs={epochs}"
            )
        self._start = start
        if self.swa_lr is not None:
            _optimizer.check_settable(self.model.optimizer, "SWA")
            _optimizer.register_controller(self.model, "swa", self)
        if self._average is None or self._average.model is not self.model:
            self._average = WeightAverage(self.model)
        self._resumed = False

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if not self._resumed:
            # Here, not in on_train_begin: BackupAndRestore picks the epoch to
            # resume at in its own on_train_begin.
            self._continue_at(epoch)
            self._resumed = True
        if not self.sets_rate(epoch):
            return
        optimizer = self.model.optimizer
        extras = self._average.extras
        if math.isnan(extras["anneal_from"]):
            extras["anneal_from"] = _optimizer.current_learning_rate(optimizer)
        rate = self._rate(epoch, extras["anneal_from"])
        _optimizer.set_learning_rate(optimizer, rate)
        if self.verbose:
            print(f"Epoch {epoch + 1}: SWA set the learning rate to {rate:.4g}.")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        average = self._average
        if epoch >= self._start:
            self._average_in(epoch)
            average.last_epoch = epoch
            if self.backup_dir is not None:
                average.save(self.backup_dir, _STEM)
            if self.verbose:
                print(f"Epoch {epoch + 1}: SWA averaged {average.count} sets of weights.")
        if logs is None:
            return
        logs["swa_n"] = average.count
        if self.swa_lr is not None:
            logs["learning_rate"] = _optimizer.current_learning_rate(self.model.optimizer)
        if self.validation_data is not None and average.count:
            logs.update(average.evaluate(self.validation_data, "swa_val_", self.bn_data, self.bn_steps))

    def _average_in(self, epoch: int) -> None:
        """Adds the weights at the end of `epoch` to the average, unless one of them is NaN or infinite."""
        average = self._average
        average.update()
        if average.take_skipped():
            warnings.warn(
                f"SWA left the weights at the end of epoch {epoch} out of its average: {average.broken()[:3]} hold NaN or "
                f"infinite values. The average keeps the {average.count} sets of weights before them.",
                stacklevel=3,
            )

    def on_train_end(self, logs=None) -> None:
        _optimizer.clear_controllers(self.model)
        average = self._average
        if average is None or not average.count:
            why = (
                "every set of weights it saw held NaN or infinite values"
                if average is not None and average.last_epoch >= self._start
                else f"`fit` ended before epoch {self._start}, the first one to average"
            )
            warnings.warn(f"SWA averaged nothing: {why}. The model keeps its trained weights.", stacklevel=2)
            return
        average.put_into_model()
        self._update_batchnorm()
        if self.backup_dir is not None:
            average.remove_files(self.backup_dir, _STEM)

    def _update_batchnorm(self) -> None:
        trainable = trained_batchnorm_layers(self.model)
        if not trainable:
            return
        if self.bn_data is not None:
            update_batchnorm(self.model, self.bn_data, steps=self.bn_steps)
        else:
            warnings.warn(
                f"SWA put the averaged weights into model {self.model.name!r}, but its "
                f"{len(trainable)} trainable BatchNormalization layers hold the average "
                "of their moving statistics, not the statistics of the averaged "
                "weights, and accuracy can collapse. Call "
                "`keras_finetune.callbacks.update_batchnorm(model, train_data)` now, "
                "or give SWA `bn_data=train_data`.",
                stacklevel=3,
            )

    def _continue_at(self, epoch: int) -> None:
        """Make the average the one a `fit` starting at `epoch` continues from."""
        average = self._average
        if epoch <= self._start:
            average.restart()
            average.extras = {"anneal_from": math.nan}  # the rate the annealing starts from
            return
        if average.last_epoch == epoch - 1:
            return
        if self.backup_dir is not None and average.load(self.backup_dir, _STEM, epoch - 1):
            return
        raise ValueError(
            f"SWA cannot resume at epoch {epoch}: averaging started at epoch "
            f"{self._start} and no averaging state of epochs {self._start}-{epoch - 1} "
            "was found, so the average would miss them. Give SWA a `backup_dir` "
            "(BackupAndRestore's backup_dir will do) so that its state survives a "
            f"restart. Received: backup_dir={self.backup_dir!r}"
        )
