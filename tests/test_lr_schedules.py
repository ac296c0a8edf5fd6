import math

import keras
import numpy as np
import pytest

from keras_finetune.callbacks import CosineAnnealing, StepLR

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")


def compiled(learning_rate=0.1):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def rates(model, data, callbacks, epochs, **kwargs):
    history = model.fit(*data, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)
    return history.history["learning_rate"]


def cosine(epoch, base, t_max, eta_min):  # torch.optim.lr_scheduler.CosineAnnealingLR, closed form
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


def test_step_lr_follows_pytorch(data):
    logged = rates(compiled(), data, [StepLR(step_size=3, gamma=0.5)], epochs=8)
    np.testing.assert_allclose(logged, [0.1 * 0.5 ** (e // 3) for e in range(8)], rtol=1e-6)


def test_cosine_annealing_follows_pytorch_then_holds_eta_min(data):
    logged = rates(compiled(), data, [CosineAnnealing(t_max=5, eta_min=0.01)], epochs=8)
    expected = [cosine(e, 0.1, 5, 0.01) for e in range(6)] + [0.01, 0.01]
    np.testing.assert_allclose(logged, expected, rtol=1e-6)


def test_cosine_annealing_warmup_ramps_linearly_first(data):
    logged = rates(compiled(), data, [CosineAnnealing(t_max=4, warmup_epochs=3)], epochs=8)
    expected = [0.1 * 1 / 4, 0.1 * 2 / 4, 0.1 * 3 / 4] + [cosine(e, 0.1, 4, 0.0) for e in range(5)]
    np.testing.assert_allclose(logged, expected, rtol=1e-6, atol=1e-9)


def test_the_sgd_step_uses_the_scheduled_rate(data):
    """One epoch of one batch at a known rate: the update equals lr * gradient."""
    x, y = data
    model = compiled()
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[StepLR(1, gamma=0.1)])
    keras.utils.set_random_seed(0)
    w = np.array(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).layers[0].kernel.numpy())
    b = np.zeros(1, "float32")
    for lr in (0.1, 0.01):
        error = x @ w + b - y
        w, b = w - lr * 2 * x.T @ error / len(x), b - lr * 2 * error.mean(0)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), w, rtol=1e-5)


def test_resume_with_initial_epoch_takes_the_rate_from_the_epoch(data):
    model = compiled()
    rates(model, data, [StepLR(step_size=2)], epochs=2)  # the first fit fixes the base rate
    np.testing.assert_allclose(rates(model, data, [StepLR(step_size=2)], epochs=5, initial_epoch=2), [0.01] * 2 + [0.001], rtol=1e-6)


def test_float32_rounding_of_the_rate_is_not_taken_for_a_plateau_reduction(data):
    """Read back as float32, the rate the schedule set looks changed; counted as a ReduceLROnPlateau step,
    that drifted every later rate, and a resumed run (whose factor starts at 1 again) set other rates."""
    whole = rates(compiled(1e-3), data, [CosineAnnealing(t_max=60, warmup_epochs=1)], epochs=60)
    np.testing.assert_allclose(whole, [1e-3 * 0.5] + [cosine(e, 1e-3, 60, 0.0) for e in range(59)], rtol=1e-6)
    resumed = rates(compiled(1e-3), data, [CosineAnnealing(t_max=60, warmup_epochs=1)], epochs=60, initial_epoch=40)
    assert resumed == whole[40:]  # bit for bit


class RateInUse(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.rates.append(float(self.model.optimizer.learning_rate.numpy()))


def test_reduce_lr_on_plateau_reductions_are_kept(data):
    # mode="max" on a falling loss: from the second epoch on, the plateau
    # callback halves the rate at every epoch end.
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", mode="max", factor=0.5, patience=0, min_lr=0.0)
    in_use = RateInUse()
    compiled().fit(*data, batch_size=8, epochs=5, verbose=0, callbacks=[StepLR(step_size=2, gamma=0.1), plateau, in_use])
    scheduled = [0.1 * 0.1 ** (e // 2) for e in range(5)]
    halvings = [0, 0, 1, 2, 3]
    np.testing.assert_allclose(in_use.rates, [s * 0.5**h for s, h in zip(scheduled, halvings)], rtol=1e-5)


def test_refuses_a_learning_rate_schedule_and_says_why(data):
    model = compiled()
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, 100)), "mse")
    with pytest.raises(ValueError, match="computes its rate itself every step.*Received: learning_rate=CosineDecay"):
        rates(model, data, [StepLR(2)], epochs=1)


def test_two_schedules_in_one_fit_are_refused(data):
    with pytest.raises(ValueError, match="one schedule callback"):
        rates(compiled(), data, [StepLR(2), CosineAnnealing(4)], epochs=1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StepLR(0), "Received: step_size=0"),
        (lambda: StepLR(2.5), "Received: step_size=2.5"),
        (lambda: StepLR(2, gamma=0), "Received: gamma=0"),
        (lambda: CosineAnnealing(0), "Received: t_max=0"),
        (lambda: CosineAnnealing(5, eta_min=-1e-3), "Received: eta_min=-0.001"),
        (lambda: CosineAnnealing(5, warmup_epochs=-1), "Received: warmup_epochs=-1"),
    ],
)
def test_rejects_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
