import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Dies, fresh_process, needs_multi_optimizer

from keras_finetune import backend
from keras_finetune.callbacks import CosineAnnealing, OneCycle, ProgressiveUnfreezing
from keras_finetune.heads import build_classifier
from keras_finetune.optimizers import discriminative_optimizer

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def torch_one_cycle(total, max_lr, pct_start=0.25, div=25.0, final_div=1e4, base_momentum=0.85, max_momentum=0.95):
    """`torch.optim.lr_scheduler.OneCycleLR.get_lr` (anneal_strategy="cos", three_phase=False), transcribed."""
    initial = max_lr / div
    phases = [
        {"end_step": float(pct_start * total) - 1, "lr": (initial, max_lr), "momentum": (max_momentum, base_momentum)},
        {"end_step": total - 1, "lr": (max_lr, initial / final_div), "momentum": (base_momentum, max_momentum)},
    ]

    def anneal(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    rates, momenta = [], []
    for step_num in range(total):
        start_step = 0
        for i, phase in enumerate(phases):
            end_step = phase["end_step"]
            if step_num <= end_step or i == len(phases) - 1:
                pct = (step_num - start_step) / (end_step - start_step)
                rates.append(anneal(*phase["lr"], pct))
                momenta.append(anneal(*phase["momentum"], pct))
                break
            start_step = phase["end_step"]
    return np.array(rates), np.array(momenta)


class Recorder(keras.callbacks.Callback):
    """The rate and momentum each step runs with (read after every on_train_batch_begin)."""

    def __init__(self, attribute="beta_1"):
        super().__init__()
        self.attribute, self.rates, self.momenta = attribute, [], []

    def on_train_batch_begin(self, batch, logs=None):  # after OneCycle's, first in the list
        backend.sync(self.model)  # JAX holds the variables' values apart during an epoch
        optimizer = self.model.optimizer
        self.rates.append(float(optimizer.learning_rate.numpy()))
        self.momenta.append(float(keras.ops.convert_to_numpy(getattr(optimizer, self.attribute))))


def dense_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def regression(samples=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 3)).astype("float32")
    return x, (x @ rng.normal(size=(3, 2))).astype("float32")


@pytest.mark.parametrize("pct_start, div, final_div", [(0.25, 25.0, 1e4), (0.3, 10.0, 100.0), (0.5, 5.0, 1e3)])
def test_per_step_rates_and_beta_1_equal_torch_one_cycle_lr(pct_start, div, final_div):
    model = dense_model()
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    recorder = Recorder()
    x, y = regression()
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0,
                        callbacks=[OneCycle(0.02, pct_start=pct_start, div=div, final_div=final_div), recorder])
    rates, momenta = torch_one_cycle(30, 0.02, pct_start, div, final_div)
    np.testing.assert_allclose(recorder.rates, rates, rtol=1e-5)
    np.testing.assert_allclose(recorder.momenta, momenta, rtol=1e-6)
    np.testing.assert_allclose(history.history["learning_rate"], rates[9::10], rtol=1e-5)
    np.testing.assert_allclose(history.history["momentum"], momenta[9::10], rtol=1e-6)


def test_the_cycled_beta_1_is_the_one_adam_steps_with():
    """Full-batch Adam on a linear model, by hand in numpy with the cycle's rate and beta_1 per step."""
    model = dense_model()
    kernel, bias = (np.array(w, "float64") for w in model.get_weights())
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x, y = regression(8)
    model.fit(x, y, batch_size=8, epochs=12, shuffle=False, verbose=0, callbacks=[OneCycle(0.05, pct_start=0.3)])
    rates, momenta = torch_one_cycle(12, 0.05, pct_start=0.3)
    weights = [kernel, bias]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, (rate, beta_1) in enumerate(zip(rates, momenta), start=1):
        error = x @ weights[0] + weights[1] - y
        grads = [2 * x.T @ error / error.size, 2 * error.sum(axis=0) / error.size]
        alpha = rate * math.sqrt(1 - 0.999**t) / (1 - beta_1**t)
        for index, grad in enumerate(grads):
            m[index] += (grad - m[index]) * (1 - beta_1)
            v[index] += (grad**2 - v[index]) * (1 - 0.999)
            weights[index] = weights[index] - alpha * m[index] / (np.sqrt(v[index]) + 1e-7)
    for mine, theirs in zip(model.get_weights(), weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)


def test_sgd_momentum_is_cycled_and_the_compiled_float_comes_back():
    model = dense_model()
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer, "mse")
    recorder = Recorder("momentum")
    x, y = regression()
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[OneCycle(0.01, base_momentum=0.8, max_momentum=0.9), recorder])
    np.testing.assert_allclose(recorder.momenta, torch_one_cycle(20, 0.01, base_momentum=0.8, max_momentum=0.9)[1], rtol=1e-6)
    assert optimizer.momentum == 0.9 and isinstance(optimizer.momentum, float)
    assert optimizer.get_config()["momentum"] == 0.9
    assert len(optimizer.variables) == 2 + len(model.trainable_variables)  # iterations, rate, one momentum slot each


def test_a_second_fit_without_the_callback_runs_on_the_compiled_momentum():
    model = dense_model()
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    x, y = regression(8)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[OneCycle(0.01)])
    again = dense_model()
    again.set_weights(model.get_weights())
    again.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse")
    again.optimizer.build(again.trainable_variables)
    for mine, theirs in zip(again.optimizer.variables, model.optimizer.variables):
        mine.assign(keras.ops.convert_to_numpy(theirs))  # a copy: JAX donates the buffers fit steps on
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    again.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for mine, theirs in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)


def test_a_fit_that_dies_leaves_the_next_fit_its_own_rate_and_momentum():
    """The cycle's step (JAX) and its momentum variable must not outlive a `fit` that raised."""
    model = dense_model()
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x, y = regression()
    with pytest.raises(RuntimeError, match="the fit dies"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[OneCycle(0.5), Dies()])
    model.optimizer.learning_rate.assign(1e-3)  # the dead cycle's last rate stays, as any schedule's would
    recorder = Recorder()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[recorder])
    assert recorder.rates == pytest.approx([1e-3] * 10) and recorder.momenta == pytest.approx([0.9] * 10)
    assert model.optimizer.beta_1 == 0.9 and isinstance(model.optimizer.beta_1, float)


def test_cycle_momentum_false_leaves_the_momentum_alone():
    model = dense_model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    recorder = Recorder("momentum")
    x, y = regression()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[OneCycle(0.01, cycle_momentum=False), recorder])
    assert set(recorder.momenta) == {0.0}
    np.testing.assert_allclose(recorder.rates, torch_one_cycle(10, 0.01)[0], rtol=1e-5)


def fit_phases(restart_per_phase, learning_rates=None, epochs=4):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(4, name="inner")(inputs), name="base")
    model = build_classifier(base, 2)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    recorder = Recorder()
    rng = np.random.default_rng(0)
    unfreezing = ProgressiveUnfreezing(base, {0: 0, 2: "all"}, learning_rates)
    model.fit(rng.normal(size=(20, 4)), np.arange(20) % 2, batch_size=4, epochs=epochs, verbose=0,
              callbacks=[OneCycle(0.01, restart_per_phase=restart_per_phase), unfreezing, recorder])
    return np.array(recorder.rates), np.array(recorder.momenta)


def test_restart_per_phase_runs_one_cycle_per_phase_peaking_at_its_rate():
    rates, momenta = fit_phases(True, {0: 1e-2, 2: 1e-3})
    frozen, unfrozen = torch_one_cycle(10, 1e-2), torch_one_cycle(10, 1e-3)
    np.testing.assert_allclose(rates, np.concatenate([frozen[0], unfrozen[0]]), rtol=1e-5)
    np.testing.assert_allclose(momenta, np.concatenate([frozen[1], unfrozen[1]]), rtol=1e-6)


def test_one_cycle_over_phases_takes_each_phase_rate_as_its_peak():
    rates, _ = fit_phases(False, {0: 1e-2, 2: 1e-3})
    peaks = np.repeat([1e-2, 1e-3], 10)
    np.testing.assert_allclose(rates, torch_one_cycle(20, 1.0)[0] * peaks, rtol=1e-5)
    rates, _ = fit_phases(False)  # phases without rates: max_lr throughout
    np.testing.assert_allclose(rates, torch_one_cycle(20, 0.01)[0], rtol=1e-5)


@needs_multi_optimizer
def test_a_multi_optimizer_keeps_its_ratio_and_cycles_every_beta_1():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(4, name="inner")(inputs), name="base")
    model = build_classifier(base, 2)
    optimizer = discriminative_optimizer(model, base, head_lr=1e-3, base_lr=1e-4)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    head, body = sorted(optimizer.optimizers, key=lambda sub: -float(sub.learning_rate.numpy()))  # 1e-3, 1e-4

    class Both(keras.callbacks.Callback):
        seen = []

        def on_train_batch_begin(self, batch, logs=None):  # after OneCycle's
            backend.sync(self.model)
            self.seen.append([float(keras.ops.convert_to_numpy(v)) for v in
                              (head.learning_rate, body.learning_rate, head.beta_1, body.beta_1)])

    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(20, 4)), np.arange(20) % 2, batch_size=4, epochs=2, verbose=0,
              callbacks=[OneCycle(0.01), Both()])
    seen = np.array(Both.seen)
    rates, momenta = torch_one_cycle(10, 0.01)
    np.testing.assert_allclose(seen[:, 0], rates, rtol=1e-5)
    np.testing.assert_allclose(seen[:, 1], rates / 10, rtol=1e-5)
    np.testing.assert_allclose(seen[:, 2], momenta, rtol=1e-6)
    np.testing.assert_allclose(seen[:, 3], momenta, rtol=1e-6)
    assert head.beta_1 == 0.9 and body.beta_1 == 0.9


def test_under_mirrored_strategy_the_cycle_and_weights_equal_one_device(mirrored):
    x, y = regression(16)

    def run(strategy):
        with strategy.scope():
            model = dense_model()
            model.compile(keras.optimizers.Adam(1e-3), "mse")
        recorder = Recorder()
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[OneCycle(0.05), recorder])
        return model.get_weights(), recorder.momenta

    one, one_momenta = run(tf.distribute.get_strategy())
    two, two_momenta = run(mirrored)
    np.testing.assert_allclose(two_momenta, one_momenta, rtol=1e-6)
    for mine, theirs in zip(two, one):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_a_model_saved_mid_cycle_reloads_in_a_process_of_keras_alone(tmp_path):
    model = dense_model()
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x, y = regression()
    path = tmp_path / "mid.keras"
    model.fit(x, y, batch_size=4, epochs=2, verbose=0,
              callbacks=[OneCycle(0.01), keras.callbacks.ModelCheckpoint(str(path))])
    code = (
        "import keras, numpy as np\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        "print(float(np.asarray(m.optimizer.beta_1)), m.optimizer.iterations.numpy())\n"
    )
    beta_1, iterations = fresh_process(code).split()
    assert int(iterations) == 20
    assert float(beta_1) == 0.9  # as compiled: the cycle's variable stays out of the config


def test_refusals():
    model = dense_model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = regression(8)
    with pytest.raises(ValueError, match=r"momentum.*cycle_momentum=False.*Received: optimizer=SGD\(momentum=0.0\)"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[OneCycle(0.01)])
    with pytest.raises(ValueError, match=r"steps_per_epoch.*Received: steps=None"):
        unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(4)
        model.fit(unknown, epochs=1, shuffle=False, verbose=0, callbacks=[OneCycle(0.01, cycle_momentum=False)])
    with pytest.raises(ValueError, match="one schedule callback"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[OneCycle(0.01, cycle_momentum=False), CosineAnnealing(3)])
    with pytest.raises(ValueError, match=r"max_lr.*Received: max_lr=0"):
        OneCycle(0)
    with pytest.raises(ValueError, match=r"pct_start.*Received: pct_start=1"):
        OneCycle(0.1, pct_start=1)
    with pytest.raises(ValueError, match=r"Received: base_momentum=0.95, max_momentum=0.85"):
        OneCycle(0.1, base_momentum=0.95, max_momentum=0.85)
    with pytest.raises(TypeError, match=r"Received: restart_per_phase='yes'"):
        OneCycle(0.1, restart_per_phase="yes")


def test_progressive_unfreezing_warmup_is_refused_beside_the_cycle():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(4)(inputs), name="base")
    model = build_classifier(base, 2)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"warmup_steps.*Received: warmup_steps=5"):
        model.fit(np.zeros((8, 4)), np.zeros(8), epochs=2, verbose=0,
                  callbacks=[OneCycle(0.01), ProgressiveUnfreezing(base, {0: 0, 1: "all"}, warmup_steps=5)])
