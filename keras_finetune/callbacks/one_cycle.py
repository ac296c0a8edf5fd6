"""The one-cycle policy as a `fit` callback: a per-step rate and momentum cycle.

fastai's `fit_one_cycle` and PyTorch's `OneCycleLR` warm the rate up from
`max_lr / div` to `max_lr` and anneal it down to `max_lr / (div * final_div)`
along cosines, step by step, while the momentum moves the other way. Keras has
no such schedule, and its optimizers read `beta_1` and `momentum` as Python
floats when the train step is traced, so a callback that sets them does
nothing; this one puts variables in their place for the length of the `fit`.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_finetune import backend
from keras_finetune.callbacks import _optimizer
from keras_finetune.validation import check_bool, check_fraction, check_number, check_positive

__all__ = ["OneCycle"]


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * pct))


def _position(step: int, total: int, pct_start: float) -> tuple[int, float]:
    """(0 for the warm-up or 1 for the annealing, fraction of it done), as `OneCycleLR` steps."""
    warm_end = pct_start * total - 1
    if step <= warm_end:
        return 0, step / warm_end if warm_end else 1.0
    span = (total - 1) - warm_end
    return 1, (step - warm_end) / span if span else 1.0


class OneCycle(keras.callbacks.Callback):
    """The one-cycle policy: per-step cosine warm-up and annealing, momentum cycled inversely.

    Step `t` (from 0) of a cycle of `T` steps gets the rate PyTorch's
    `torch.optim.lr_scheduler.OneCycleLR` (cosine, two phases) gives it:
    with `a = pct_start * T - 1`, steps `t <= a` rise from `max_lr / div` to
    `max_lr` as `end + (start - end) * (1 + cos(pi * t / a)) / 2`, and later
    steps fall from `max_lr` to `max_lr / (div * final_div)` over
    `(t - a) / (T - 1 - a)`. With `cycle_momentum`, the optimizer's momentum
    (`beta_1` of Adam, AdamW, Nadam, Adamax and Lion; `momentum` of SGD and
    RMSprop compiled with momentum > 0) moves from `max_momentum` to
    `base_momentum` and back over the same two phases. The cycle spans the
    `fit`'s `epochs` times its steps per epoch, known from `fit`.

    With `ProgressiveUnfreezing` in the same `fit`, a phase that sets a
    learning rate sets the peak of the cycle (in place of `max_lr`), and
    with `restart_per_phase=True` each phase runs a cycle of its own, as
    fastai's `fine_tune` does (one cycle frozen, one unfrozen). Once `SWA`
    anneals the rate (its `swa_lr`), the rate is left to it. With a
    `keras.optimizers.MultiOptimizer` the rate set is that of the default
    optimizer, the others keep their ratios to it; every sub-optimizer's
    momentum is cycled.

    On JAX, where the step reads only the state `fit` hands it, each
    epoch's rates and momenta are a table in that state, and the step sets
    the next step's from it; elsewhere the callback sets them before each
    step. The rate and momentum follow from the epoch and the batch alone, so a
    run resumed by `keras.callbacks.BackupAndRestore` goes on mid-cycle as
    the uninterrupted one did. When `fit` ends the optimizer gets its
    compiled momentum back (its config, and a saved model, hold a float).
    With `steps_per_execution=k`, Keras calls the callback every `k` steps,
    so the rate changes every `k` steps.

    Epoch logs gain `learning_rate` and `momentum` (those of the epoch's
    last step).

    Args:
        max_lr: float. The peak rate, > 0.
        pct_start: float. The fraction of the cycle spent warming up, in
            (0, 1). Defaults to `0.25` (fastai's; PyTorch's is 0.3).
        div: float. The cycle starts at `max_lr / div`. Defaults to `25.0`.
        final_div: float. It ends at `max_lr / (div * final_div)`. Defaults
            to `1e4`.
        cycle_momentum: bool or `"auto"`. Cycle the momentum too; `"auto"`
            where the optimizer has one. Defaults to `True`.
        base_momentum: float. The momentum at the peak rate. Defaults to `0.85`.
        max_momentum: float. The momentum at both ends. Defaults to `0.95`.
        restart_per_phase: bool. One cycle per phase of a
            `ProgressiveUnfreezing` in the same `fit`. Defaults to `False`.
        verbose: int. 1 prints the rate at each epoch's start. Defaults to `0`.

    Example:

    ```python
    model.compile(keras.optimizers.AdamW(1e-3), "sparse_categorical_crossentropy")
    model.fit(train_ds, epochs=10, callbacks=[OneCycle(max_lr=3e-3)])
    ```

    References:
        Smith and Topin, Super-Convergence: Very Fast Training of Neural
        Networks Using Large Learning Rates, arXiv 1708.07120.
    """

    def __init__(
        self,
        max_lr: float,
        pct_start: float = 0.25,
        div: float = 25.0,
        final_div: float = 1e4,
        cycle_momentum: bool | str = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        restart_per_phase: bool = False,
        verbose: int = 0,
    ):
        super().__init__()
        self.max_lr = check_positive(max_lr, "max_lr")
        self.pct_start = check_number(pct_start, "pct_start", 0.0, 1.0, open_low=True, open_high=True)
        self.div = check_number(div, "div", 1.0)
        self.final_div = check_number(final_div, "final_div", 1.0)
        self.cycle_momentum = cycle_momentum if cycle_momentum == "auto" else check_bool(cycle_momentum, "cycle_momentum")
        self.base_momentum = check_fraction(base_momentum, "base_momentum", below_one=True)
        self.max_momentum = check_fraction(max_momentum, "max_momentum", below_one=True)
        if self.base_momentum > self.max_momentum:
            raise ValueError(
                "`base_momentum` is the momentum at the peak rate, the low end of its cycle, and must not exceed "
                f"`max_momentum`. Received: base_momentum={base_momentum}, max_momentum={max_momentum}"
            )
        self.restart_per_phase = check_bool(restart_per_phase, "restart_per_phase")
        self.verbose = verbose
        self._momenta = []
        self._cycles = None
        self._cycle = False
        self._epoch = 0
        self._table = None  # JAX: this epoch's rates and momenta, read in the step (`_trace`)

    def set_model(self, model) -> None:
        super().set_model(model)
        _optimizer.clear_controllers(model)

    def on_train_begin(self, logs=None) -> None:
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("OneCycle needs a compiled model: call `compile` first.")
        if not self.params.get("steps"):
            raise ValueError(
                "OneCycle needs the number of steps per epoch, and `fit` does not know it for this data "
                "(a dataset of unknown length): pass `steps_per_epoch` to `fit`. "
                f"Received: steps={self.params.get('steps')!r}"
            )
        _optimizer.check_settable(self.model.optimizer, "OneCycle")
        _optimizer.register_controller(self.model, "schedule", self)
        self._cycle = self.cycle_momentum
        if self._cycle == "auto":
            self._cycle = _optimizer.has_momentum(self.model.optimizer)
        self._cycles = None

    def _make_cycles(self) -> list:
        """(first epoch, epoch after the last, peak rate) of each cycle; read once every callback's on_train_begin ran."""
        epochs = self.params["epochs"]
        phases = _optimizer.controller(self.model, "phases")
        if phases is None:
            return [(0, epochs, self.max_lr)]
        if phases.warmup_steps:
            raise ValueError(
                "OneCycle warms the rate up itself; ProgressiveUnfreezing's `warmup_steps` would fight it. "
                f"Leave one out. Received: warmup_steps={phases.warmup_steps}"
            )
        starts = [start for start in phases.phase_starts() if start < epochs] if self.restart_per_phase else [0]
        ends = starts[1:] + [epochs]
        return [(start, end, phases.base_learning_rate(start) or self.max_lr) for start, end in zip(starts, ends)]

    def values(self, epoch: int, batch: int) -> tuple[float, float]:
        """The rate and momentum of step `batch` of `epoch` in this `fit`."""
        first, end, peak = next(cycle for cycle in reversed(self._cycles) if cycle[0] <= epoch)
        steps = self.params["steps"]
        phases = _optimizer.controller(self.model, "phases")
        if phases is not None and not self.restart_per_phase:
            peak = phases.base_learning_rate(epoch) or self.max_lr
        step, total = (epoch - first) * steps + batch, (end - first) * steps
        phase, pct = _position(step, total, self.pct_start)
        rates = (peak / self.div, peak, peak / (self.div * self.final_div))
        momenta = (self.max_momentum, self.base_momentum, self.max_momentum)
        # Phase 0 goes from the first value of each triple to the second, phase 1 from the second to the third.
        return _anneal(rates[phase], rates[phase + 1], pct), _anneal(momenta[phase], momenta[phase + 1], pct)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self._cycles is None:
            self._cycles = self._make_cycles()
            if self._cycle:  # here, once ProgressiveUnfreezing has the optimizer it keeps
                self._momenta = _optimizer.variable_momentum(self.model, "OneCycle")
            if not backend.STEP_UPDATES_VARIABLES:
                self._trace()
            _optimizer.put_back_when_fit_ends(self.model, self._put_back)
        self._epoch = epoch
        if self._table is not None:
            self._fill_table(epoch)
        if self.verbose:
            print(f"Epoch {epoch + 1}: OneCycle starts the epoch at learning rate {self.values(epoch, 0)[0]:.4g}.")

    # On JAX, setting the rate before each step would put `fit`'s state back into the variables
    # first, every step: host work that cost up to 21 % of a MobileNetV3Small step on an H200
    # (benchmarks/RESULTS.md). The step sets the next step's values from a table instead.

    def _trace(self) -> None:
        """Trace the setting of the next step's rate and momentum into the train step, from a per-epoch table."""
        model, optimizer, steps = self.model, self.model.optimizer, self.params["steps"]
        rates = _optimizer.rate_variables(optimizer)
        table = {
            "values": keras.Variable(np.zeros((2, steps), "float32"), trainable=False, name="one_cycle_table"),
            "first": keras.Variable(0, dtype=optimizer.iterations.dtype, trainable=False, name="one_cycle_first_step"),
            "sets_rate": keras.Variable(True, trainable=False, name="one_cycle_sets_rate"),
        }

        def then():  # not `self.model` in the traced step: on JAX that property puts `fit`'s state into the variables
            index = keras.ops.minimum(optimizer.iterations.value - table["first"].value, steps - 1)
            rate, momentum = keras.ops.take(table["values"].value, index, axis=1)
            for variable, ratio in rates:
                variable.assign(keras.ops.where(table["sets_rate"].value, rate * ratio, variable.value))
            for variable in self._momenta:
                variable.assign(momentum)

        _optimizer.join_step_state(optimizer, list(table.values()))
        if _optimizer.trace_after_each_step(model, then):
            self._table = table
        else:
            _optimizer.leave_step_state(optimizer, list(table.values()))

    def _fill_table(self, epoch: int) -> None:
        """Epoch `epoch`'s rates and momenta, each step's those of the batch Keras would call the callback at."""
        every = self.model.steps_per_execution
        values = [self.values(epoch, batch // every * every) for batch in range(self.params["steps"])]
        self._table["values"].assign(np.asarray(values, "float32").T)
        self._table["first"].assign(int(self.model.optimizer.iterations.numpy()))
        self._table["sets_rate"].assign(not _optimizer.swa_sets_rate(self.model, epoch))

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self._table is not None and batch:  # the step before this one set them
            return
        backend.sync(self.model)
        rate, momentum = self.values(self._epoch, batch)
        if not _optimizer.swa_sets_rate(self.model, self._epoch):
            _optimizer.set_learning_rate(self.model.optimizer, rate)
        for variable in self._momenta:
            variable.assign(momentum)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is None:
            return
        logs["learning_rate"] = _optimizer.current_learning_rate(self.model.optimizer)
        if self._momenta:
            logs["momentum"] = float(self._momenta[0].numpy())

    def on_train_end(self, logs=None) -> None:
        _optimizer.put_back_now(self.model, self._put_back)

    def _put_back(self) -> None:
        """The model's own train step, momentum and controllers again (`_optimizer.put_back_when_fit_ends`)."""
        if self._table is not None:
            _optimizer.leave_step_state(self.model.optimizer, list(self._table.values()))
            _optimizer.untrace_steps(self.model)
            self._table = None
        _optimizer.clear_controllers(self.model)
        if self._momenta:
            _optimizer.fixed_momentum(self.model)
            self._momenta = []
