"""The PyTorch backend: variables updated in place, one device, eager functions."""

import contextlib
import logging

import torch

from keras_finetune.backend import _in_place

_logger = logging.getLogger("keras_finetune.distribute")

STEP_UPDATES_VARIABLES = True
COMPILES_IMAGE_TRANSFORMS = False


def scope(model):
    return contextlib.nullcontext()


def one_device(model) -> bool:
    return True


def sync(model) -> None:
    """The variables are current: the train step assigns them."""


def assigning(pure, targets, sources, xla=False):
    def run(when=None):
        with torch.no_grad():
            values = pure([source.value for source in sources])
            if when is not None:  # a select: `if when` would wait for the step on a GPU
                values = [torch.where(when, value, target.value) for value, target in zip(values, targets)]
            for target, value in zip(targets, values):
                target.assign(value)

    return run


step_then = _in_place.step_then


def compiled(pure):
    def run(*args):
        with torch.no_grad():
            return pure(*args)

    return run


def train_subset(model) -> None:
    """PyTorch's optimizers in Keras update any subset of the variables they were built over."""


def strategy(chosen):
    """One device: Keras's PyTorch `fit` distributes nothing."""
    if chosen is not None:
        raise ValueError(
            "Keras's PyTorch backend fits on one device; there is no strategy to pass. "
            f"Leave `strategy` out. Received: strategy={chosen!r}"
        )
    _logger.info("keras_finetune fits on one device: %s", "cuda" if torch.cuda.is_available() else "the CPU")


def made_in(model, chosen) -> bool:
    return True


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


def fitting(chosen):
    """Where `fit` runs: anywhere (one device)."""
    return contextlib.nullcontext()
