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
