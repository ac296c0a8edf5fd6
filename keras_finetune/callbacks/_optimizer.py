"""Optimizer plumbing shared by the unfreezing and learning-rate callbacks.

What Keras does not offer in public:
- reading and setting "the" learning rate of any compiled optimizer, a
  `LossScaleOptimizer` or a `MultiOptimizer` included (whose sub-optimizers
  keep their ratios to the default one);
- making a built optimizer cover variables that will only start training
  later, keeping the state it already has;
- letting `ProgressiveUnfreezing` hand each phase's learning rate to the one
  schedule of the same `fit`, and both hand the rate over to `SWA` once it
  anneals, whatever order the callbacks run in;
- changing an optimizer's momentum (`beta_1`, or SGD's and RMSprop's
  `momentum`) between steps, which Keras reads as a Python float when it
  traces the train step;
- giving a JAX train step a callback's own variables (a momentum, EMA's
  averages) to read and update: `fit` hands it only the model's, the
  optimizer's and the metrics' state.
"""

from __future__ import annotations

import contextlib
import types
import weakref

import keras
import numpy as np

from keras_finetune import backend

# Absent before Keras 3.15; isinstance(x, ()) is always False.
_MULTI_OPTIMIZER = getattr(keras.optimizers, "MultiOptimizer", ())

# Each sub-optimizer's learning rate as a fraction of the default one's, taken
# the first time a callback sets the rate of that MultiOptimizer.
_RATIOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# model -> {"phases": ProgressiveUnfreezing, "schedule": StepLR/CosineAnnealing,
# "swa": SWA}
# for the `fit` in progress. Every `set_model` call of a `fit` comes before
# any `on_train_begin`, so callbacks clear it in `set_model` and register in
# `on_train_begin`.
_CONTROLLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _holders(optimizer) -> list:
    """The optimizers that own a learning rate, the default one first."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(inner, _MULTI_OPTIMIZER):
        return [inner]
    default = getattr(inner._optimizer_map, "default_optimizer", None)
    rest = [sub for sub in inner.optimizers if sub is not default]
    return ([default] if default is not None else []) + rest


def _rate(holder) -> float:
    # `.numpy()`: numpy 2 warns when it converts a Keras variable itself (its __array__ has no `copy`).
    rate = holder.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


def current_learning_rate(optimizer) -> float:
    """The rate the next step uses (a MultiOptimizer's default optimizer's)."""
    return _rate(_holders(optimizer)[0])


def check_settable(optimizer, caller: str) -> None:
    """Refuse an optimizer whose rate is a `LearningRateSchedule`."""
    for holder in _holders(optimizer):
        schedule = getattr(holder, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                f"{caller} sets the optimizer's learning rate, but "
                f"{holder.name!r} computes its rate itself every step from a "
                "LearningRateSchedule; the two would overwrite each other. "
                "Compile with a float learning rate and let the callbacks "
                f"schedule it, or leave {caller} out. "
                f"Received: learning_rate={type(schedule).__name__}"
            )


def set_learning_rate(optimizer, value: float) -> None:
    """Set the rate; a MultiOptimizer's other sub-optimizers keep their ratios."""
    holders = _holders(optimizer)
    if optimizer not in _RATIOS:
        first = current_learning_rate(optimizer)
        _RATIOS[optimizer] = [
            _rate(h) / first if first else 1.0
            for h in holders
        ]
    for holder, ratio in zip(holders, _RATIOS[optimizer]):
        holder.learning_rate = value * ratio


def rate_variables(optimizer) -> list:
    """`(variable, ratio)` of each optimizer's learning rate: what `set_learning_rate(value)` sets to `value * ratio`."""
    if optimizer not in _RATIOS:
        set_learning_rate(optimizer, current_learning_rate(optimizer))
    return [(holder._learning_rate, ratio) for holder, ratio in zip(_holders(optimizer), _RATIOS[optimizer])]


def _knows(optimizer, variables) -> bool:
    try:
        optimizer._check_variables_are_known(variables)
    except ValueError:
        return False
    return True


def cover_variables(model: keras.Model, variables: list) -> None:
    """Make `model.optimizer` able to update every variable in `variables`.

    An unbuilt optimizer is built over them. A built one that lacks some (under
    a strategy `fit` builds it over what trains at the start) is replaced by a
    copy of itself built over all of them, its state (iterations, moments of
    the variables it knew) carried over by variable path.
    """
    optimizer = model.optimizer
    if not optimizer.built:
        with backend.scope(model):
            optimizer.build(variables)
    elif not _knows(optimizer, variables):
        with backend.scope(model):
            replacement = optimizer.__class__.from_config(optimizer.get_config())
            replacement.build(variables)
        if int(optimizer.iterations.numpy()):
            _carry_state(optimizer, replacement)
        model.optimizer = replacement
    backend.train_subset(model)


def _carry_state(old, new) -> None:
    new_by_path = {v.path: v for v in new.variables}
    lost = [v.path for v in old.variables if v.path not in new_by_path]
    if lost:
        raise ValueError(
            "The compiled optimizer cannot be extended to the variables that "
            "later phases train without losing its state (no counterpart for "
            f"{lost[:3]}). Compile again before `fit`."
        )
    for variable in old.variables:
        new_by_path[variable.path].assign(np.asarray(variable.numpy()))


class _Momentum(keras.Variable):
    """A variable standing in for an optimizer's float momentum while a callback cycles it.

    SGD and RMSprop decide when they are built and traced whether they keep
    momentum slots at all (`momentum != 0`, `momentum > 0`); those Python
    comparisons answer for the value the optimizer was compiled with.
    """

    def __init__(self, value: float, **kwargs):
        super().__init__(value, dtype="float32", trainable=False, aggregation="only_first_replica", **kwargs)
        self.compiled = value

    def __ne__(self, other):
        if isinstance(other, (int, float)):
            return self.compiled != other
        return super().__ne__(other)

    def __gt__(self, other):
        if isinstance(other, (int, float)):
            return self.compiled > other
        return super().__gt__(other)


def momentum_attribute(holder) -> str | None:
    """`beta_1` (the Adam family, Lion), `momentum` (SGD, RMSprop), or None."""
    for attribute in ("beta_1", "momentum"):
        if isinstance(getattr(holder, attribute, None), (float, _Momentum)):
            return attribute
    return None


def _compiled_momentum(holder):
    attribute = momentum_attribute(holder)
    value = getattr(holder, attribute, None) if attribute else None
    return getattr(value, "compiled", value)


def has_momentum(optimizer) -> bool:
    """Whether every optimizer of `optimizer` has a momentum to cycle (`beta_1`, or a `momentum` > 0)."""
    return all(_compiled_momentum(holder) not in (None, 0) for holder in _holders(optimizer))


def variable_momentum(model: keras.Model, caller: str) -> list:
    """Put a `_Momentum` variable in place of each optimizer's momentum; returns them.

    The train step is traced again, so it reads the variables; `fixed_momentum`
    puts the floats back. Meanwhile the optimizer's config holds the compiled
    float, so a model saved mid-`fit` (ModelCheckpoint) reloads. Where the
    step reads only the state `fit` hands it (JAX), each variable joins that
    state for the `fit` (`join_step_state`).
    """
    variables = []
    for holder in _holders(model.optimizer):
        attribute = momentum_attribute(holder)
        value = getattr(holder, attribute, None) if attribute else None
        if _compiled_momentum(holder) in (None, 0):
            raise ValueError(
                f"{caller} cycles the momentum, but {type(holder).__name__} {holder.name!r} has none "
                f"(`beta_1`, or `momentum` > 0 when compiled). Compile SGD or RMSprop with momentum > 0, "
                f"or pass cycle_momentum=False. Received: optimizer={type(holder).__name__}"
                + (f"(momentum={holder.momentum})" if attribute == "momentum" else "")
            )
        if not isinstance(value, _Momentum):
            with backend.scope(model):
                value = _Momentum(value, name=f"{holder.name}_{attribute}")
            # Past the optimizer's tracker: the variable must not join its saved state.
            object.__setattr__(holder, attribute, value)
            object.__setattr__(holder, "get_config", types.MethodType(_compiled_config, holder))
            join_step_state(model.optimizer, [value], holder)
        variables.append(value)
    model.make_train_function(force=True)
    return variables


def _compiled_config(holder) -> dict:
    config = type(holder).get_config(holder)
    return {key: value.compiled if isinstance(value, _Momentum) else value for key, value in config.items()}


def fixed_momentum(model: keras.Model) -> None:
    """Put back the compiled floats that `variable_momentum` replaced."""
    momenta = []
    for holder in _holders(model.optimizer):
        attribute = momentum_attribute(holder)
        value = getattr(holder, attribute, None) if attribute else None
        if isinstance(value, _Momentum):
            object.__setattr__(holder, attribute, value.compiled)
            object.__delattr__(holder, "get_config")
            momenta.append(value)
    leave_step_state(model.optimizer, momenta)
    model.make_train_function(force=True)


# A callback's variables that a train step on JAX reads or updates: `fit` hands the step only the
# model's, the optimizer's and the metrics' variables, so these join an optimizer's for a `fit`.
# optimizer -> the variables that joined its `variables`.
_JOINED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def join_step_state(optimizer, variables: list, holder=None) -> None:
    """Make `variables` part of the state `fit` hands its train step, where that is all the step reads (JAX).

    They join the `variables` of `holder` (by default the optimizer that
    owns the default learning rate), which `fit` hands the step and puts
    back after it, until `leave_step_state`; every optimizer that lists
    them leaves them out of what it saves and loads, so a checkpoint taken
    meanwhile reloads into the compiled optimizer. Where the train step
    reads the variables themselves (TensorFlow, PyTorch), nothing changes.
    """
    if backend.STEP_UPDATES_VARIABLES:
        return
    holder = holder or _holders(optimizer)[0]
    holder._variables.extend(variables)
    _JOINED.setdefault(holder, []).extend(variables)
    for saver in _savers(optimizer):
        object.__setattr__(saver, "save_own_variables", types.MethodType(_save_without_joined, saver))
        object.__setattr__(saver, "load_own_variables", types.MethodType(_load_without_joined, saver))


def leave_step_state(optimizer, variables: list) -> None:
    """Take `variables` out of the train step's state again (`join_step_state`)."""
    if backend.STEP_UPDATES_VARIABLES:
        return
    leaving = {id(v) for v in variables}
    for holder in _holders(optimizer):
        holder._variables[:] = [v for v in holder._variables if id(v) not in leaving]
        staying = [v for v in _JOINED.pop(holder, []) if id(v) not in leaving]
        if staying:
            _JOINED[holder] = staying
    if not any(holder in _JOINED for holder in _holders(optimizer)):
        for saver in _savers(optimizer):
            for method in ("save_own_variables", "load_own_variables"):
                if method in vars(saver):
                    object.__delattr__(saver, method)


def trace_after_each_step(model: keras.Model, then) -> bool:
    """For this `fit`, make the model's train step Keras's and then `then()`, traced into it
    (`backend.step_then`), where one device runs it; whether it could. `then` reads and sets
    variables, which must have joined the step's state (`join_step_state`); `untrace_steps`
    gives the model its own step back."""
    step = backend.step_then(model, model.train_step, then) if backend.one_device(model) else None
    if step is None:
        return False
    object.__setattr__(model, "train_step", step)  # past Keras's attribute tracking
    model.make_train_function(force=True)
    return True


def untrace_steps(model: keras.Model) -> None:
    """The model's own train step again, after `trace_after_each_step`."""
    if "train_step" in vars(model):
        object.__delattr__(model, "train_step")
        model.make_train_function(force=True)


def _savers(optimizer) -> list:
    """Every optimizer whose `variables` list holds its holders' (a LossScaleOptimizer, a MultiOptimizer, the holders)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return list({id(o): o for o in (optimizer, inner, *_holders(optimizer))}.values())


@contextlib.contextmanager
def _joined_left_out(holders):
    everything = [(holder, list(holder._variables)) for holder in holders if holder in _JOINED]
    for holder, _ in everything:
        joined = {id(v) for v in _JOINED[holder]}
        holder._variables[:] = [v for v in holder._variables if id(v) not in joined]
    try:
        yield
    finally:
        for holder, variables in everything:
            holder._variables[:] = variables


def _save_without_joined(self, store) -> None:
    with _joined_left_out(_holders(self)):
        type(self).save_own_variables(self, store)


def _load_without_joined(self, store) -> None:
    with _joined_left_out(_holders(self)):
        type(self).load_own_variables(self, store)


# model -> what callbacks changed in it for the `fit` under way and must put back when it ends (each
# callback's on_train_end does). A `fit` that dies by an exception skips on_train_end: the model's next
# `fit` puts them back before it starts, or it would run a dead callback's step (JAX) or momentum.
_TO_PUT_BACK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def put_back_when_fit_ends(model, put_back) -> None:
    """Register `put_back`, which undoes what a callback changed in `model` for this `fit`; the callback's
    `on_train_end` calls `put_back_now`, and when the `fit` dies first, the model's next `fit` calls it."""
    _TO_PUT_BACK.setdefault(model, []).append(put_back)
    if "fit" not in vars(model):
        object.__setattr__(model, "fit", types.MethodType(_fit_after_putting_back, model))


def put_back_now(model, put_back) -> None:
    """Call `put_back` (registered or not) and forget it."""
    pending = _TO_PUT_BACK.get(model, [])
    if put_back in pending:
        pending.remove(put_back)
    if not pending:
        _forget_put_backs(model)
    put_back()


def _forget_put_backs(model) -> None:
    _TO_PUT_BACK.pop(model, None)
    if "fit" in vars(model):
        object.__delattr__(model, "fit")


def _fit_after_putting_back(model, *args, **kwargs):
    """The model's `fit` after its last one died: what that one's callbacks changed is put back first."""
    pending = _TO_PUT_BACK.get(model, [])
    _forget_put_backs(model)
    for put_back in pending:
        put_back()
    return model.fit(*args, **kwargs)


def clear_controllers(model) -> None:
    _CONTROLLERS.pop(model, None)


def register_controller(model, role: str, callback) -> None:
    controllers = _CONTROLLERS.setdefault(model, {})
    if controllers.get(role) not in (None, callback):
        raise ValueError(
            f"One `fit` can take one {role} callback; got "
            f"{type(controllers[role]).__name__} and {type(callback).__name__}."
        )
    controllers[role] = callback


def controller(model, role: str):
    return _CONTROLLERS.get(model, {}).get(role)


def swa_sets_rate(model, epoch: int) -> bool:
    """Whether an `SWA` callback of this `fit` sets the rate of `epoch`."""
    swa = controller(model, "swa")
    return swa is not None and swa.sets_rate(epoch)
