"""Epoch-based learning-rate schedules that know about unfreezing phases.

Keras's `LearningRateScheduler` takes a function of the epoch and knows
nothing of a phase's rate; Keras's `LearningRateSchedule`s count steps, are
fixed when the optimizer is built, and make `ReduceLROnPlateau` refuse to run.
These callbacks follow PyTorch's `StepLR` and `CosineAnnealingLR`: the rate of
epoch `e` is set when the epoch begins, from the base rate and `e`.

The rule when they share a `fit` with other callbacks:
- base rate: the optimizer's rate when `fit` starts (the first `fit` with this
  callback), or, with `ProgressiveUnfreezing`, the rate of the current phase
  (its `learning_rates`); the epoch count does not restart at a phase change.
- `ReduceLROnPlateau`: a reduction it makes is kept, as a factor on top of the
  schedule, until the next phase change sets a new base rate.
- `SWA` with `swa_lr`: from its `start_epoch` on, SWA sets the rate and the
  schedule leaves it alone.
"""

from __future__ import annotations

import math

import keras

from keras_finetune.callbacks import _optimizer
from keras_finetune.validation import check_count, check_number, check_positive

__all__ = ["StepLR", "CosineAnnealing"]


class _EpochSchedule(keras.callbacks.Callback):
    """Sets `rate(epoch, base)` at each epoch begin; composes as the module says."""

    def __init__(self, verbose: int = 0):
        super().__init__()
        self.verbose = verbose
        self._initial_rate = None
        self._last_base = None
        self._last_set = None
        self._plateau = 1.0

    def rate(self, epoch: int, base: float) -> float:
        raise NotImplementedError

    def set_model(self, model) -> None:
        super().set_model(model)
        _optimizer.clear_controllers(model)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and self._initial_rate is None:
            # Read before any on_train_begin: BackupAndRestore restores a
            # decayed rate there, which must not become the base.
            self._initial_rate = _optimizer.current_learning_rate(optimizer)

    def on_train_begin(self, logs=None) -> None:
        if self._initial_rate is None:
            raise ValueError(f"{type(self).__name__} needs a compiled model: call `compile` first.")
        _optimizer.check_settable(self.model.optimizer, type(self).__name__)
        _optimizer.register_controller(self.model, "schedule", self)
        self._last_base = self._last_set = None

    def _base(self, epoch: int) -> float:
        phases = _optimizer.controller(self.model, "phases")
        rate = phases.base_learning_rate(epoch) if phases is not None else None
        return self._initial_rate if rate is None else rate

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if _optimizer.swa_sets_rate(self.model, epoch):
            return
        optimizer = self.model.optimizer
        base = self._base(epoch)
        if base != self._last_base:
            self._plateau = 1.0
        elif self._last_set:
            # Anything that changed the rate since we set it (ReduceLROnPlateau)
            # scales the schedule from now on. The rate reads back rounded to
            # float32: that rounding is no change (counted as one, it drifted the
            # factor from 1, and a resumed run, whose factor restarts at 1, ended elsewhere).
            current = _optimizer.current_learning_rate(optimizer)
            if not math.isclose(current, self._last_set, rel_tol=1e-6):
                self._plateau *= current / self._last_set
        self._last_base = base
        self._last_set = self.rate(epoch, base) * self._plateau
        _optimizer.set_learning_rate(optimizer, self._last_set)
        if self.verbose:
            print(f"Epoch {epoch + 1}: {type(self).__name__} set the learning rate to {self._last_set:.4g}.")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None:
            logs["learning_rate"] = _optimizer.current_learning_rate(self.model.optimizer)

    def on_train_end(self, logs=None) -> None:
        _optimizer.clear_controllers(self.model)


class StepLR(_EpochSchedule):
    """Multiply the learning rate by `gamma` every `step_size` epochs.

    The rate of epoch `e` (counted from 0) is `base * gamma ** (e // step_size)`,
    as PyTorch's `torch.optim.lr_scheduler.StepLR`. The base is the rate the
    optimizer had when `fit` started, or the current phase's rate under
    `ProgressiveUnfreezing`; reductions made by `ReduceLROnPlateau` are kept
    until the next phase (see the module docstring).

    Args:
        step_size: int. Epochs between two decays, >= 1.
        gamma: float. The factor applied at each decay, > 0. Defaults to `0.1`.
        verbose: int. 1 prints the rate set at each epoch. Defaults to `0`.

    Example:

    ```python
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, epochs=30, callbacks=[StepLR(step_size=10, gamma=0.1)])
    # epochs 0-9: 0.1, 10-19: 0.01, 20-29: 0.001
    ```
    """

    def __init__(self, step_size: int, gamma: float = 0.1, verbose: int = 0):
        super().__init__(verbose)
        self.step_size = check_count(step_size, "step_size", 1)
        self.gamma = check_positive(gamma, "gamma")

    def rate(self, epoch: int, base: float) -> float:
        return base * self.gamma ** (epoch // self.step_size)


class CosineAnnealing(_EpochSchedule):
    """Anneal the learning rate from its base to `eta_min` along a half cosine.

    Epoch `e` (counted from 0) of the `t_max` annealing epochs gets
    `eta_min + (base - eta_min) * (1 + cos(pi * e / t_max)) / 2`, as
    PyTorch's `CosineAnnealingLR` for `e <= t_max`; after `t_max` the rate
    stays at `eta_min` (PyTorch's closed form would climb back up). With
    `warmup_epochs=w`, epochs `0 .. w-1` ramp linearly as
    `base * (e + 1) / (w + 1)` and the annealing starts at epoch `w`, so the
    rate reaches `eta_min` at epoch `w + t_max`. The base is the rate the
    optimizer had when `fit` started, or the current phase's rate under
    `ProgressiveUnfreezing` (see the module docstring).

    Args:
        t_max: int. Epochs of annealing, >= 1.
        eta_min: float. The final rate, >= 0. Defaults to `0.0`.
        warmup_epochs: int. Epochs of linear warm-up before the annealing.
            Defaults to `0`.
        verbose: int. 1 prints the rate set at each epoch. Defaults to `0`.

    Example:

    ```python
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, epochs=12, callbacks=[CosineAnnealing(t_max=10, warmup_epochs=2)])
    ```

    References:
        Loshchilov and Hutter, SGDR: Stochastic Gradient Descent with Warm
        Restarts, arXiv 1608.03983.
    """

    def __init__(self, t_max: int, eta_min: float = 0.0, warmup_epochs: int = 0, verbose: int = 0):
        super().__init__(verbose)
        self.t_max = check_count(t_max, "t_max", 1)
        self.eta_min = check_number(eta_min, "eta_min", 0.0)
        self.warmup_epochs = check_count(warmup_epochs, "warmup_epochs", 0)
        if self.warmup_epochs > self.t_max:
            raise ValueError(
                f"`warmup_epochs` longer than the schedule's {t_max} epochs (`t_max`) would never reach "
                f"the full rate. Received: warmup_epochs={warmup_epochs!r}, t_max={t_max!r}"
            )

    def rate(self, epoch: int, base: float) -> float:
        if epoch < self.warmup_epochs:
            return base * (epoch + 1) / (self.warmup_epochs + 1)
        t = min(epoch - self.warmup_epochs, self.t_max)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2
