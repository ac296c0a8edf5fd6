"""The TensorFlow backend: variables updated in place, `tf.distribute` strategies, `tf.function`."""

import contextlib

import tensorflow as tf

from keras_finetune.backend import _in_place

STEP_UPDATES_VARIABLES = True
COMPILES_IMAGE_TRANSFORMS = False


def scope(model):
    # In the strategy's scope a cross-replica assignment reaches every replica.
    return model.distribute_strategy.scope()


def one_device(model) -> bool:
    return isinstance(model.distribute_strategy, type(tf.distribute.get_strategy()))


def sync(model) -> None:
    """The variables are current: the train step assigns them."""


def assigning(pure, targets, sources, xla=False):
    @tf.function(jit_compile=xla)
    def assign():
        for target, value in zip(targets, pure([source.value for source in sources])):
            target.assign(value)

    def run(when=None):
        if when is None:
            assign()
        else:
            tf.cond(when, assign, lambda: None)

    return run


step_then = _in_place.step_then


def compiled(pure):
    return tf.function(pure, reduce_retracing=True)


def train_subset(model) -> None:
    """TensorFlow's optimizers update any subset of the variables they were built over."""


def strategy(chosen):
    """The `tf.distribute` strategy to fit under: `chosen`, or the one this machine calls for (logged)."""
    from keras_finetune.distribute import get_strategy

    return chosen or get_strategy()


def made_in(model, chosen) -> bool:
    """Whether every variable of `model` belongs to the strategy `chosen` (made in its scope)."""
    return all(chosen.extended.variable_created_in_scope(v.value) for v in model.variables)


def train_step(model, step, data):
    """One optimizer step of `model` on the loss `step(data, training=True)` returns with its logs."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss, logs = step(data, True)
        # Gradients are summed over replicas: each differentiates its share.
        scaled = model.optimizer.scale_loss(loss / tf.distribute.get_strategy().num_replicas_in_sync)
    model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
    return logs


def test_step(model, step, data):
    return step(data, False)[1]


def prepared_step(model, prepare, step, data):
    """Keras's own `step` of `model` on `prepare(data)`, `prepare` stateful Keras code (a random layer)."""
    return step(prepare(data))


def fitting(chosen):
    """Where `fit` runs: anywhere (a strategy is attached to the model's variables)."""
    return contextlib.nullcontext()
