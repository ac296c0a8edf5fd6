"""The PyTorch backend: variables updated in place, one device, eager functions."""

import contextlib

import keras
import torch

STEP_UPDATES_VARIABLES = True


def scope(model):
    return contextlib.nullcontext()


def one_device(model) -> bool:
    return True


def sync(model) -> None:
    """The variables are current: the train step assigns them."""


def assigning(pure, targets, sources, xla=False):
    def run():
        with torch.no_grad():
            for target, value in zip(targets, pure([source.value for source in sources])):
                target.assign(value)

    return run


def compiled(pure):
    def run(*args):
        with torch.no_grad():
            return pure(*args)

    return run


def train_subset(model) -> None:
    """PyTorch's optimizers in Keras update any subset of the variables they were built over."""


def strategy(chosen):
    """No `tf.distribute` strategy: one device."""
    if chosen is not None:
        raise ValueError(
            f"A tf.distribute strategy runs TensorFlow's `fit`; the Keras backend is {keras.backend.backend()!r}. "
            f"Leave `strategy` out there. Received: strategy={chosen!r}"
        )


def train_step(model, step, data):
    """One optimizer step of `model` on the loss `step(data, training=True)` returns with its logs."""
    variables = model.trainable_variables
    model.zero_grad()
    loss, logs = step(data, True)
    model.optimizer.scale_loss(loss).backward()
    with torch.no_grad():
        model.optimizer.apply([v.value.grad for v in variables], variables)
    return logs


def test_step(model, step, data):
    with torch.no_grad():
        return step(data, False)[1]


def prepared_step(model, prepare, step, data):
    """Keras's own `step` of `model` on `prepare(data)`, `prepare` stateful Keras code (a random layer)."""
    return step(prepare(data))
