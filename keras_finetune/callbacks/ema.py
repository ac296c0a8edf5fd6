"""An exponential moving average of every weight, per step, as a `fit` callback.

Keras's `use_ema=True` optimizer option averages the trainable variables
only: not the BatchNormalization statistics, and not a weight that was frozen
when the optimizer was built and trains later; it starts at step 0 with a
fixed decay, and its swap callback does not recompute statistics. timm's
`ModelEma` and Lightning's `EMAWeightAveraging` average everything. So does
this callback, with the averaging core it shares with `SWA`.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from keras_finetune import backend
from keras_finetune.callbacks import _optimizer
from keras_finetune.callbacks._averaging import WeightAverage
from keras_finetune.callbacks.batchnorm_statistics import trained_batchnorm_layers, update_batchnorm
from keras_finetune.validation import check_bool, check_count, check_fraction

__all__ = ["EMA"]


_STEM = "ema"  # its state is ema_state.npz in `backup_dir`


class EMA(keras.callbacks.Callback):
    """An exponential moving average of all the model's weights, updated per step, put in the model when `fit` ends.

    The average starts as a copy of the weights after optimizer step
    `start_step` (`0`: the weights `fit` starts from) and, after every
    `every_n_steps`-th step from then on, becomes
    `decay_n * average + (1 - decay_n) * weights`. With `warmup=True`,
    `decay_n = min(decay, (1 + n) / (10 + n))` for the `n`-th update (from 0)
    of a weight, the warm-up of timm's `ModelEma` and of TensorFlow's
    `ExponentialMovingAverage(num_updates=...)`, so an average is not held
    back by weights it saw ten steps ago; else `decay_n = decay`. Every float
    weight is averaged in float32 (float64 weights in float64), trainable or
    not, BatchNormalization statistics included, on the model's device.

    A weight joins the average once it trains (a trainable variable, or the
    moving statistics of a trainable BatchNormalization layer, read at each
    epoch's first step): a weight frozen when the average starts (a base
    under `ProgressiveUnfreezing`, the statistics of a frozen
    BatchNormalization layer) stays equal to itself, and once it trains it
    is averaged from then on, with a warm-up of its own. A weight element
    that is NaN or infinite at an update keeps its average; an epoch that
    ends with such weights warns.

    When `fit` ends the average is put into the model. BatchNormalization
    statistics: the averaged statistics by default (timm's choice), or, with
    `bn_data`, the exact statistics of the averaged weights over it (see
    `update_batchnorm`). With `validation_data`, each epoch also evaluates
    the average (the same statistics) and logs `ema_val_loss` and
    `ema_val_<metric>`; the trained weights are put back afterwards.

    On one device the update is traced into the train step (`fit` runs the
    model's `train_step` and then the update, in one function, as Keras's
    own `use_ema` does; on JAX the averages travel in the state `fit` hands
    the step, among the optimizer's variables but never saved with them);
    under a `tf.distribute` strategy or a JAX distribution it runs after
    each step. The model gets its own `train_step` back when `fit` ends.

    Interrupted runs: the step count is the optimizer's `iterations`, which
    `keras.callbacks.BackupAndRestore` restores; with `backup_dir` (theirs
    will do) the average is also written there at each epoch end, so a
    resumed `fit` ends as an uninterrupted one. The files are deleted when
    `fit` completes. Under a `tf.distribute` strategy the replicas hold the
    same weights, and the average is the one of a single device.

    Args:
        decay: float. The decay per update, in [0, 1). Defaults to `0.9998`.
        warmup: bool. Warm the decay up as above. Defaults to `True`.
        every_n_steps: int. Update after every n-th step. Defaults to `1`.
        start_step: int. The optimizer step after which averaging starts.
            Defaults to `0`.
        bn_data: data for a BatchNormalization pass over the average, any
            form `update_batchnorm` takes. Defaults to `None` (the averaged
            statistics are kept).
        bn_steps: int. Batches of `bn_data` to use. Defaults to `None` (all).
        validation_data: data to evaluate the average on at each epoch end,
            a dataset or a tuple `(x, y)`. Defaults to `None`.
        backup_dir: str. Directory to keep the average in between epochs.
            Defaults to `None` (kept in memory only).

    Example:

    ```python
    model.fit(train_ds, epochs=10, callbacks=[EMA(decay=0.999, validation_data=val_ds)])
    # the model now holds the average; history.history["ema_val_accuracy"] its accuracy per epoch
    ```

    References:
        Polyak and Juditsky, Acceleration of Stochastic Approximation by
        Averaging, SIAM J. Control Optim. 30(4), 1992; Tan and Le,
        EfficientNet, arXiv 1905.11946 (EMA of weights with decay 0.9999).
    """

    def __init__(
        self,
        decay: float = 0.9998,
        warmup: bool = True,
        every_n_steps: int = 1,
        start_step: int = 0,
        bn_data=None,
        bn_steps: int | None = None,
        validation_data=None,
        backup_dir: str | None = None,
    ):
        super().__init__()
        self.decay = check_fraction(decay, "decay", below_one=True)
        self.warmup = check_bool(warmup, "warmup")
        self.every_n_steps = check_count(every_n_steps, "every_n_steps", 1)
        self.start_step = check_count(start_step, "start_step", 0)
        if bn_steps is not None:
            check_count(bn_steps, "bn_steps", 1)
        self.bn_data = bn_data
        self.bn_steps = bn_steps
        self.validation_data = validation_data
        self.backup_dir = backup_dir
        self._average = None
        self._resumed = False
        self._next_update = None
        self._first_step = 0
        self._live = None
        self._fused = False  # the update traced into the train step
        self._begun_flag = None  # whether averaging has begun, for the traced update to read

    def on_train_begin(self, logs=None) -> None:
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("EMA needs a compiled model: call `compile` first.")
        if self._average is None or self._average.model is not self.model:
            self._average = WeightAverage(self.model, decay=self.decay, warmup=self.warmup)
            self._begun_flag = keras.Variable(False, trainable=False)
        self._resumed = False
        self._fused = None  # decided at the first epoch's start

    # On one device the update runs inside the train step, as Keras's own `use_ema` does: a call of its
    # own after each step cost 3.9 % of a MobileNetV3Small step on 2 CPU cores (TensorFlow) and 40 % of
    # one on an H200 (JAX, with `fit`'s state put back into the variables for it each step); inside,
    # about what Keras's costs, and 1.8 % on the H200 (benchmarks/RESULTS.md). Under a distribution the
    # replicas run the step, so the update stays a call after it.

    def _fuse(self) -> None:
        """Trace the update into the train step; once every callback's on_train_begin ran (the optimizer kept)."""
        model = self.model

        def then():  # not `self.model` in the traced step: on JAX that property puts `fit`'s state into the variables
            self._fold_in_step(model.optimizer.iterations)

        self._fused = _optimizer.trace_after_each_step(model, then)
        if self._fused:
            _optimizer.join_step_state(model.optimizer, self._step_state())
        _optimizer.put_back_when_fit_ends(model, self._unfuse)

    def _step_state(self) -> list:
        average = self._average
        return [self._begun_flag, average.live, average.counts, average.skipped, *average.averages]

    def _fold_in_step(self, step) -> None:
        """The update of the step just taken, `step` the optimizer's `iterations`, when one is due (traced)."""
        due = keras.ops.logical_and(
            self._begun_flag,
            keras.ops.logical_and(step > self.start_step, keras.ops.equal((step - self.start_step) % self.every_n_steps, 0)),
        )
        self._average.update(when=due)

    def _unfuse(self) -> None:
        if self._fused:
            _optimizer.leave_step_state(self.model.optimizer, self._step_state())
        _optimizer.untrace_steps(self.model)

    @property
    def begun(self) -> bool:
        """Whether averaging has started."""
        return self._average is not None and bool(self._average.extras.get("begun"))

    def _set_begun(self, begun: bool) -> None:
        self._average.extras = {"begun": int(begun)}
        self._sync_begun()

    def _sync_begun(self) -> None:
        self._begun_flag.assign(self.begun)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self._fused is None:
            self._fuse()
        # The step count read once per epoch: `iterations`, which BackupAndRestore restores.
        self._first_step = int(self.model.optimizer.iterations.numpy())
        self._live = None
        if not self._resumed:
            # Here, not in on_train_begin: BackupAndRestore picks the epoch to resume at in its own.
            self._continue_at(epoch)
            self._resumed = True
        self._after(self._first_step)

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self._live is None:  # once an epoch, after every callback's on_epoch_begin (phases)
            self._live = np.asarray(self._training(), bool)
            self._average.live.assign(self._live)
        # What the step before this one called for, here rather than in on_train_batch_end: a callback
        # with an on_train_batch_end makes Keras wait for each step's logs (JAX, PyTorch), where it
        # would otherwise queue the next step on the device while this one runs.
        self._after(self._first_step + batch)

    def _after(self, step: int) -> None:
        """Begin the average, or (not fused) update it, now that `step` optimizer steps are done."""
        if not self.begun:
            if step < self.start_step:
                return
            backend.sync(self.model)
            self._average.restart()
            self._set_begun(True)
        elif not self._fused and self._next_update is not None and step >= self._next_update:
            backend.sync(self.model)
            self._average.update()
        # None after a resume: the update of `step` itself, if it had one, is in the average already.
        self._next_update = self.start_step + self.every_n_steps * ((step - self.start_step) // self.every_n_steps + 1)

    def _training(self) -> list:
        """Whether each averaged weight trains now: read after every callback's on_epoch_begin (phases)."""
        training = {id(v) for v in self.model.trainable_variables}
        for layer in trained_batchnorm_layers(self.model):
            training.update(id(v) for v in layer.non_trainable_weights)
        return [id(v) in training for v in self._average.variables]

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._after(int(self.model.optimizer.iterations.numpy()))  # the epoch's last step
        average = self._average
        broken = average.broken()
        if broken:
            warnings.warn(
                f"EMA: at the end of epoch {epoch}, {broken[:3]} hold NaN or infinite values; those values "
                "were left out of the average, which keeps what it had.",
                stacklevel=2,
            )
        average.last_epoch = epoch
        if self.backup_dir is not None:
            average.save(self.backup_dir, _STEM)
        if logs is not None and self.validation_data is not None and self.begun:
            logs.update(average.evaluate(self.validation_data, "ema_val_", self.bn_data, self.bn_steps))

    def on_train_end(self, logs=None) -> None:
        _optimizer.put_back_now(self.model, self._unfuse)
        if not self.begun:
            warnings.warn(
                f"EMA averaged nothing: `fit` ended before optimizer step {self.start_step}, where averaging "
                "starts. The model keeps its trained weights.",
                stacklevel=2,
            )
            return
        self._average.put_into_model()
        if self.bn_data is not None and trained_batchnorm_layers(self.model):
            update_batchnorm(self.model, self.bn_data, steps=self.bn_steps)
        if self.backup_dir is not None:
            self._average.remove_files(self.backup_dir, _STEM)

    def _continue_at(self, epoch: int) -> None:
        """Make the average the one a `fit` starting at `epoch` continues from."""
        average = self._average
        self._next_update = None
        if epoch == 0 or self._first_step <= self.start_step:
            self._set_begun(False)
            average.last_epoch = epoch - 1
            return
        if average.last_epoch == epoch - 1 and self.begun:
            return
        if self.backup_dir is not None and average.load(self.backup_dir, _STEM, epoch - 1):
            self._sync_begun()
            return
        raise ValueError(
            f"EMA cannot resume at epoch {epoch}: averaging started at optimizer step {self.start_step}, "
            f"{self._first_step} steps ago, and no average of them was found. Give EMA a `backup_dir` "
            "(BackupAndRestore's backup_dir will do) so that its average survives a restart. "
            f"Received: backup_dir={self.backup_dir!r}"
        )
