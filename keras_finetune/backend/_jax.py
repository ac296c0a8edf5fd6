"""The JAX backend: a pure train step over state held outside the variables during an epoch."""

import contextlib
import types
import weakref

import jax
import keras

STEP_UPDATES_VARIABLES = False


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

    def run():
        for target, value in zip(targets, jitted([source.value for source in sources])):
            target.assign(value)

    return run


def compiled(pure):
    return jax.jit(pure)


def train_subset(model) -> None:
    """Let `fit`'s `optimizer.stateless_apply` take the variables that train now, a subset of its own.

    Keras's JAX optimizer takes exactly the variables it was built over; its
    `apply`, run in a stateless scope as `stateless_apply` runs it, takes any
    subset. The variables are those of `model.trainable_variables` when the
    train step is traced, in that order, which is the order `fit` hands
    their values in.
    """
    optimizer = model.optimizer
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
    """No `tf.distribute` strategy: one device."""
    if chosen is not None:
        raise ValueError(
            f"A tf.distribute strategy runs TensorFlow's `fit`; the Keras backend is {keras.backend.backend()!r}. "
            f"Leave `strategy` out there. Received: strategy={chosen!r}"
        )


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
