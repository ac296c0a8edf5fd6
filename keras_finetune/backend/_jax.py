"""The JAX backend: a pure train step over state held outside the variables during an epoch."""

import contextlib
import logging
import types
import weakref

import jax
import keras

STEP_UPDATES_VARIABLES = False
COMPILES_IMAGE_TRANSFORMS = True
_logger = logging.getLogger("keras_finetune.distribute")


def scope(model):
    return contextlib.nullcontext()


def one_device(model) -> bool:
    return keras.distribution.distribution() is None


def sync(model) -> None:
    # Puts the state of the epoch so far back into the variables; `fit` reads
    # them again before its next step (its documented hook for callbacks).
    model.jax_state_sync()


def assigning(pure, targets, sources, xla=False):
    jitted = jax.jit(pure)

    def run(when=None):
        values = jitted([source.value for source in sources])
        if when is not None:  # a select, not a `cond`: traced into a step, a branch may not assign
            values = [jax.numpy.where(when, value, target.value) for value, target in zip(values, targets)]
        for target, value in zip(targets, values):
            target.assign(value)

    return run


def step_then(model, step, then):
    """`step` (what `fit` calls), then `then()` run over the state it returns, in one traced function.

    `then` is stateful Keras code; it reads and assigns the model's and the
    optimizer's variables, so the variables of its own must have joined the
    optimizer's (`callbacks._optimizer.join_step_state`). None with Flax NNX
    enabled: Keras's trainer then calls the class's `train_step`, not the
    model's own.
    """
    if getattr(keras.config, "is_nnx_enabled", lambda: False)():
        return None

    def train_step(state, data):
        logs, (trainable_values, non_trainable_values, optimizer_values, metrics_values) = step(state, data)
        variables = [*model.trainable_variables, *model.non_trainable_variables, *model.optimizer.variables]
        _, values = _stateless(variables, [*trainable_values, *non_trainable_values, *optimizer_values], then)
        first, split = len(trainable_values), len(trainable_values) + len(non_trainable_values)
        return logs, (values[:first], values[first:split], values[split:], metrics_values)

    return train_step


def compiled(pure):
    return jax.jit(pure)


def train_subset(model) -> None:
    """Let `fit`'s `optimizer.stateless_apply` take the variables that train now, a subset of its own.

    Keras's JAX optimizer takes exactly the variables it was built over; its
    `apply`, run in a stateless scope as `stateless_apply` runs it, takes any
    subset. The variables are those of `model.trainable_variables` when the
    train step is traced, in that order, which is the order `fit` hands
    their values in. A `LossScaleOptimizer` hands its inner optimizer the
    unscaled gradients, so the inner one takes the subset.
    """
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if "stateless_apply" in vars(optimizer):
        return
    model_ref = weakref.ref(model)

    def stateless_apply(self, optimizer_variables, grads, trainable_values):
        trainable = model_ref().trainable_variables
        mapping = list(zip(trainable, trainable_values)) + list(zip(self.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping) as stateless:
            self.apply(grads, trainable)
        return (
            [stateless.get_current_value(v) for v in trainable],
            [stateless.get_current_value(v) for v in self.variables],
        )

    # Past the optimizer's attribute tracking: a method of this instance, not state to save.
    object.__setattr__(optimizer, "stateless_apply", types.MethodType(stateless_apply, optimizer))


def strategy(chosen):
    """`keras.distribution.DataParallel` over every device when there are several (or `chosen`); None on one.

    JAX's `fit` reads the distribution from Keras's global setting: `fit`
    runs inside `chosen.scope()`, and a model built outside it is copied
    into it. On several machines, call `keras.distribution.initialize()` in
    each process first: `jax.devices()` then lists every machine's devices.
    """
    if chosen is not None and not isinstance(chosen, (keras.distribution.DataParallel, keras.distribution.ModelParallel)):
        raise TypeError(
            "On the JAX backend `strategy` must be a keras.distribution.DataParallel or ModelParallel, "
            f"or None. Received: strategy={chosen!r}"
        )
    devices = jax.devices()
    if chosen is None and len(devices) > 1:
        chosen = keras.distribution.DataParallel(devices=devices)
    if chosen is None:
        _logger.info("keras_finetune fits on one device: %s", devices[0])
    else:
        _logger.info(
            "keras_finetune fits under %s over %d device(s): %s",
            type(chosen).__name__, chosen.device_mesh.devices.size, ", ".join(map(str, chosen.device_mesh.devices.ravel())),
        )
    return chosen


def made_in(model, chosen) -> bool:
    """Whether every variable of `model` lies on all of `chosen`'s devices (made in its scope)."""
    wanted = {device.id for device in chosen.device_mesh.devices.ravel()}
    return all({device.id for device in v.value.sharding.device_set} == wanted for v in model.variables)


def _stateless(variables, values, run):
    """`run()` with `variables` reading `values`; its result and the variables' values after it."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as stateless:
        result = run()
    return result, [stateless.get_current_value(v) for v in variables]


def train_step(model, step, state, data):
    """One optimizer step of `model` on the loss `step(data, training=True)` returns with its logs.

    `step` is stateful Keras code (model calls, metric updates); it runs in
    a stateless scope over `fit`'s state, as Keras's own JAX train step runs
    the model, so its updates (BatchNorm statistics, seeds, metrics) come
    back as new state.
    """
    trainable_values, non_trainable_values, optimizer_values, metrics_values = state
    trainable, rest = model.trainable_variables, model.non_trainable_variables + model.metrics_variables

    def loss_of(trainable_now, rest_values):
        (loss, logs), values = _stateless(trainable + rest, list(trainable_now) + list(rest_values), lambda: step(data, True))
        return model.optimizer.scale_loss(loss), (values[len(trainable) :], logs)

    (_, (rest_values, logs)), gradients = jax.value_and_grad(loss_of, has_aux=True)(
        trainable_values, list(non_trainable_values) + list(metrics_values)
    )
    trainable_values, optimizer_values = model.optimizer.stateless_apply(optimizer_values, gradients, trainable_values)
    split = len(non_trainable_values)
    return logs, (trainable_values, rest_values[:split], optimizer_values, rest_values[split:])


def test_step(model, step, state, data):
    trainable_values, non_trainable_values, metrics_values = state
    variables = model.trainable_variables + model.non_trainable_variables + model.metrics_variables
    (_, logs), values = _stateless(
        variables, [*trainable_values, *non_trainable_values, *metrics_values], lambda: step(data, False)
    )
    first, split = len(trainable_values), len(trainable_values) + len(non_trainable_values)
    return logs, (trainable_values, values[first:split], values[split:])


def prepared_step(model, prepare, step, state, data):
    """Keras's own `step` of `model` on `prepare(data)`, `prepare` stateful Keras code (a random layer).

    `prepare` runs in a stateless scope over the model's non-trainable state
    (second in both the train and the test step's state), so the seeds it
    draws from advance in the state `step` gets.
    """
    variables = model.non_trainable_variables
    data, values = _stateless(variables, state[1], lambda: prepare(data))
    return step((state[0], values, *state[2:]), data)


def fitting(chosen):
    """Where `fit` runs: inside the distribution's scope, which JAX's `fit` reads it from."""
    return contextlib.nullcontext() if chosen is None else chosen.scope()
