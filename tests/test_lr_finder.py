import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune import lr_find
from keras_finetune.callbacks import LRFinder

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * rng.normal(size=(64, 1))).astype("float32")
    return x, y


def linear_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


def numpy_sweep(model, x, y, rates, batch_size=16):
    """SGD on the same batches in numpy: the loss of each step before its update."""
    w, b = (np.array(v.numpy(), "float64") for v in model.layers[0].weights)
    losses = []
    for step, lr in enumerate(rates):
        rows = slice((step % (len(x) // batch_size)) * batch_size, None)
        xb, yb = x[rows][:batch_size], y[rows][:batch_size]
        error = xb @ w + b - yb
        losses.append(float(np.mean(error**2)))
        w, b = w - lr * 2 * xb.T @ error / batch_size, b - lr * 2 * error.mean(0)
    return losses


def test_sweep_rates_are_exponential_and_losses_are_each_steps_own(regression):
    x, y = regression
    model = linear_model()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    finder = lr_find(model, data, min_lr=1e-4, max_lr=0.5, steps=30, smoothing=0.8)
    assert len(finder.losses) == 30
    np.testing.assert_allclose(finder.learning_rates, np.geomspace(1e-4, 0.5, 30), rtol=1e-6)
    expected = numpy_sweep(model, x, y, finder.learning_rates)  # weights were restored
    np.testing.assert_allclose(finder.losses, expected, rtol=1e-3)
    # Smoothing: the bias-corrected moving average of those losses.
    average, smoothed = 0.0, []
    for k, loss in enumerate(finder.losses, start=1):
        average = 0.8 * average + 0.2 * loss
        smoothed.append(average / (1 - 0.8**k))
    np.testing.assert_allclose(finder.smoothed_losses, smoothed, rtol=1e-9)
    assert finder.learning_rates[0] <= finder.suggestion <= finder.min_loss_lr


def test_restores_weights_optimizer_and_train_function(regression, images, int_labels):
    from conftest import make_base

    from keras_finetune.heads import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier(make_base(), 3, hidden_units=(), dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    unbuilt = model.optimizer
    weights = [np.array(v.numpy()) for v in model.weights]
    lr_find(model, (images, int_labels), steps=5, batch_size=8)
    assert model.optimizer is unbuilt and not unbuilt.built
    model.fit(images, int_labels, batch_size=8, epochs=1, verbose=0)
    trained = [np.array(v.numpy()) for v in model.weights]
    state = [np.array(v.numpy()) for v in model.optimizer.variables]
    train_function = model.train_function
    finder = lr_find(model, (images, int_labels), steps=5, batch_size=8)
    assert len(finder.losses) == 5 and finder.learning_rates[-1] == pytest.approx(10.0)
    assert model.train_function is train_function
    for variable, value in zip(model.weights, trained):  # BatchNorm statistics included
        np.testing.assert_array_equal(variable.numpy(), value)
    for variable, value in zip(model.optimizer.variables, state):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert not all(np.array_equal(a, b) for a, b in zip(weights, trained))  # the fit did train


def test_stops_when_the_loss_diverges(regression):
    finder = lr_find(linear_model(), regression, min_lr=1e-3, max_lr=1e3, steps=60, batch_size=16)
    assert 5 < len(finder.losses) < 60
    assert finder.smoothed_losses[-1] > 4 * min(finder.smoothed_losses)


def test_plot_saves_a_png(regression, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "lr.png"
    lr_find(linear_model(), regression, steps=20, plot_path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_lr_find_warns_and_plot_says_what_to_install(regression, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match=r"keras-finetune\[plot\]"):
        finder = lr_find(linear_model(), regression, steps=10, plot_path=str(tmp_path / "lr.png"))
    assert not (tmp_path / "lr.png").exists() and len(finder.losses) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_lr": 0.0}, "`min_lr` must be a finite number > 0. Received: min_lr=0.0"),
        ({"max_lr": float("inf")}, "max_lr=inf"),
        ({"min_lr": 1.0, "max_lr": 0.1}, "Received: min_lr=1.0, max_lr=0.1"),
        ({"steps": 1}, "Received: steps=1"),
        ({"smoothing": 1.0}, "Received: smoothing=1.0"),
        ({"stop_factor": 1.0}, "Received: stop_factor=1.0"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRFinder(**kwargs)


def test_rejects_an_uncompiled_model_and_unknown_data(regression):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        lr_find(model, regression)
    with pytest.raises(TypeError, match="Received: data of type str"):
        lr_find(linear_model(), "images/")
    with pytest.raises(ValueError, match="run `fit` with it"):
        LRFinder().suggestion


def test_the_suggestion_skips_the_first_steps_whose_average_is_still_settling():
    finder = LRFinder(min_lr=1e-4, max_lr=1.0, steps=41)
    finder.learning_rates = list(np.logspace(-4, 0, 41))
    # an easy batch at step 1 drops the early average; the real descent is at steps 20-30
    smoothed = [2.0, 1.6] + [1.6] * 18 + list(np.linspace(1.6, 0.2, 11)) + list(np.linspace(0.25, 3.0, 10))
    finder.losses = finder.smoothed_losses = smoothed
    slopes = np.gradient(np.asarray(smoothed[:31]), np.log10(finder.learning_rates[:31]))
    assert int(np.argmin(slopes)) < 10  # what an unskipped search would pick
    assert finder.suggestion == finder.learning_rates[10 + int(np.argmin(slopes[10:]))]
    assert 20 <= finder.learning_rates.index(finder.suggestion) <= 30
