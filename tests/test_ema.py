import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune.callbacks import EMA, ProgressiveUnfreezing, update_batchnorm
from keras_finetune.heads import build_classifier
from conftest import Dies, fresh_process, make_base, with_statistics

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


class Steps(keras.callbacks.Callback):
    """The model's weights after every optimizer step, and before the first."""

    def on_train_begin(self, logs=None):
        self.weights = [[np.array(v.numpy(), "float64") for v in self.model.weights]]

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append([np.array(v.numpy(), "float64") for v in self.model.weights])


def ema_by_numpy(steps, decay, warmup=True, every_n=1, start=0):
    """timm's recurrence per weight: a copy after step `start`, then an update every `every_n` steps;
    a weight's n-th update (from 0, counted from its first change) uses min(decay, (1 + n) / (10 + n))."""
    average = [w.copy() for w in steps[start]]
    counts = [0] * len(average)
    for step in range(start + every_n, len(steps), every_n):
        for index, weight in enumerate(steps[step]):
            if counts[index] == 0 and np.array_equal(weight, average[index]):
                continue  # not changed yet: it joins at its first change
            d = min(decay, (1 + counts[index]) / (10 + counts[index])) if warmup else decay
            average[index] = d * average[index] + (1 - d) * weight
            counts[index] += 1
    return average


def regression_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    return x, (x @ rng.normal(size=(3, 2))).astype("float32")


def assert_weights(model, expected, rtol=1e-5, atol=1e-6):
    for variable, value in zip(model.weights, expected, strict=True):
        np.testing.assert_allclose(variable.numpy(), value, rtol=rtol, atol=atol, err_msg=variable.path)


@pytest.mark.parametrize("decay, warmup", [(0.9, True), (0.99, True), (0.7, False)])
def test_the_average_after_n_steps_equals_the_numpy_recurrence(regression, decay, warmup):
    model, steps = regression_model(), Steps()
    model.fit(*regression, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[steps, EMA(decay, warmup=warmup)])
    assert len(steps.weights) == 25
    assert_weights(model, ema_by_numpy(steps.weights, decay, warmup))


def test_the_warmup_is_timms_formula():
    """Ten steps that move a weight from 0 by one each (SGD at rate 1 on the loss -w): its average by the formula."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(keras.optimizers.SGD(1.0), lambda y_true, y_pred: -keras.ops.mean(y_pred))
    model.fit(np.ones((10, 1)), np.ones((10, 1)), batch_size=1, epochs=1, shuffle=False, verbose=0, callbacks=[EMA(0.5)])
    expected = 0.0
    for n, weight in enumerate(range(1, 11)):
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * weight
    assert model.weights[0].numpy().item() == pytest.approx(expected, rel=1e-6)


def test_start_step_and_every_n_steps(regression):
    model, steps = regression_model(), Steps()
    model.fit(*regression, batch_size=4, epochs=3, shuffle=False, verbose=0,
              callbacks=[steps, EMA(0.8, warmup=False, every_n_steps=3, start_step=5)])
    assert_weights(model, ema_by_numpy(steps.weights, 0.8, False, every_n=3, start=5))


def classifier(seed=0, statistics=True):
    keras.utils.set_random_seed(seed)
    base = make_base()
    if statistics:
        with_statistics(base)
    model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model, base


def test_weights_unfrozen_later_are_averaged_from_their_first_change(images, int_labels):
    model, base = classifier()
    for layer in base.layers:
        layer.trainable = False
    steps = Steps()
    unfreezing = ProgressiveUnfreezing(base, {0: 0, 2: "all"}, freeze_batchnorm=[base.get_layer("bn0")])
    model.fit(images, int_labels, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=[unfreezing, steps, EMA(0.95)])
    expected = ema_by_numpy(steps.weights, 0.95)
    assert_weights(model, expected)
    first = [np.array(w) for w in steps.weights[0]]
    kernel = [v.path for v in model.weights].index("conv0/kernel")
    assert not np.array_equal(expected[kernel], first[kernel])  # trained from epoch 2, averaged from then
    frozen_mean = [v.path for v in model.weights].index("bn0/moving_mean")
    np.testing.assert_array_equal(model.weights[frozen_mean].numpy(), first[frozen_mean])  # bn0 stayed frozen
    # The base's first update after step 8 uses the warm-up's first decay, not the head's 9th.
    late = ema_by_numpy(steps.weights[8:], 0.95)
    np.testing.assert_allclose(model.weights[kernel].numpy(), late[kernel], rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_averaged_by_default_recomputed_with_bn_data(images, int_labels):
    model, base = classifier(statistics=False)
    steps = Steps()
    model.fit(images, int_labels, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[steps, EMA(0.9)])
    averaged = ema_by_numpy(steps.weights, 0.9)
    assert_weights(model, averaged)  # moving statistics included
    recomputed, _ = classifier(statistics=False)
    recomputed.fit(images, int_labels, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[EMA(0.9, bn_data=images)])
    reference, _ = classifier(statistics=False)
    reference.set_weights([w.astype("float32") for w in averaged])
    update_batchnorm(reference, images)
    assert_weights(recomputed, [v.numpy() for v in reference.weights])
    mean = [v.path for v in model.weights].index("bn0/moving_mean")
    assert not np.allclose(recomputed.weights[mean].numpy(), model.weights[mean].numpy())


def test_validation_evaluates_the_average_and_training_goes_on_undisturbed(regression):
    x, y = regression
    plain, plain_steps = regression_model(), Steps()
    plain.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[plain_steps])
    model, steps = regression_model(), Steps()
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                        callbacks=[steps, EMA(0.9, validation_data=(x[:8], y[:8]))])
    for mine, theirs in zip(steps.weights[-1], plain_steps.weights[-1]):
        np.testing.assert_array_equal(mine, theirs)
    assert history.history["ema_val_loss"][-1] == pytest.approx(model.evaluate(x[:8], y[:8], verbose=0), rel=1e-5)
    assert history.history["ema_val_loss"][-1] != pytest.approx(history.history["loss"][-1])


def test_nan_weight_elements_keep_their_average():
    from keras_finetune.callbacks._averaging import WeightAverage

    model = regression_model()
    kernel, bias = model.weights[0], model.weights[1]
    average = WeightAverage(model, decay=0.5, warmup=False)
    start = [np.array(v.numpy()) for v in model.weights]
    poisoned = start[0] + 1.0
    poisoned[0, 0] = np.nan
    kernel.assign(poisoned)
    bias.assign(start[1] + 2.0)
    average.update()
    values = [a.numpy() for a in average.averages]
    expected = 0.5 * start[0] + 0.5 * poisoned
    expected[0, 0] = start[0][0, 0]  # the NaN element keeps its average
    np.testing.assert_allclose(values[0], expected, rtol=1e-6)
    np.testing.assert_allclose(values[1], start[1] + 1.0, rtol=1e-6)


def test_an_epoch_that_ends_with_nan_weights_warns(regression):
    class Poison(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 7:
                self.model.weights[0].assign(np.full(self.model.weights[0].shape, np.nan, "float32"))

    model = regression_model()
    with pytest.warns(UserWarning, match=r"end of epoch 0, \['[\w/]*kernel'\] hold NaN"):
        model.fit(*regression, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Poison(), EMA(0.9)])
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_under_mirrored_strategy_the_average_equals_one_device(regression, mirrored):
    def run(strategy):
        with strategy.scope():
            model = regression_model()
        steps = Steps()
        model.fit(*regression, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[steps, EMA(0.9)])
        return model, steps

    one, _ = run(tf.distribute.get_strategy())
    two, steps = run(mirrored)
    assert_weights(two, ema_by_numpy(steps.weights, 0.9))
    assert_weights(two, [v.numpy() for v in one.weights])
    for variable in two.weights:  # every replica got the average
        replicas = [np.asarray(value.numpy()) for value in variable.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[1], replicas[0])


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(regression, tmp_path):
    x, y = regression
    whole = regression_model()
    whole.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=[EMA(0.9, every_n_steps=3)])
    backup = str(tmp_path / "backup")
    model = regression_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), EMA(0.9, every_n_steps=3, backup_dir=backup), Interrupt(2)])
    assert os.path.exists(os.path.join(backup, "ema_state.npz"))
    again = regression_model(seed=1)  # a new process builds everything again
    history = again.fit(x, y, batch_size=4, epochs=4, shuffle=False, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup), EMA(0.9, every_n_steps=3, backup_dir=backup)])
    assert history.epoch == [2, 3]
    assert_weights(again, [v.numpy() for v in whole.weights])
    assert not os.path.exists(backup)


def test_resuming_without_the_average_raises(regression, tmp_path):
    x, y = regression
    backup = str(tmp_path / "backup")
    model = regression_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt(2)])
    with pytest.raises(ValueError, match=r"EMA cannot resume at epoch 2.*Received: backup_dir=None"):
        regression_model().fit(x, y, batch_size=4, epochs=3, verbose=0,
                               callbacks=[keras.callbacks.BackupAndRestore(backup), EMA(0.9)])


def test_a_fit_that_dies_leaves_nothing_of_the_average_in_the_next_fit(regression):
    """On JAX the average's state joins the optimizer's for the step; a `fit` that raised must not leave it there."""
    model = regression_model()
    model.optimizer.build(model.trainable_variables)
    own = len(model.optimizer.variables)
    with pytest.raises(RuntimeError, match="the fit dies"):
        model.fit(*regression, batch_size=4, epochs=2, verbose=0, callbacks=[EMA(0.9), Dies()])
    model.fit(*regression, batch_size=4, epochs=1, verbose=0)
    assert len(model.optimizer.variables) == own
    steps, ema = Steps(), EMA(0.9)  # and a new average on the same model is the recurrence of its own fit
    model.fit(*regression, batch_size=4, epochs=2, verbose=0, callbacks=[steps, ema])
    assert_weights(model, ema_by_numpy(steps.weights, 0.9))
    assert len(model.optimizer.variables) == own


def test_a_fit_that_ends_before_start_step_keeps_its_weights(regression):
    model, steps = regression_model(), Steps()
    with pytest.warns(UserWarning, match="EMA averaged nothing.*step 100"):
        model.fit(*regression, batch_size=4, epochs=1, verbose=0, callbacks=[steps, EMA(0.9, start_step=100)])
    assert_weights(model, steps.weights[-1], rtol=0, atol=0)


def test_the_saved_model_holds_the_average_in_a_process_of_keras_alone(regression, tmp_path):
    model = regression_model()
    model.fit(*regression, batch_size=4, epochs=2, verbose=0, callbacks=[EMA(0.9)])
    path = str(tmp_path / "ema.keras")
    model.save(path)
    np.savez(tmp_path / "expected.npz", *[v.numpy() for v in model.weights])
    code = (
        "import keras, numpy as np, sys\n"
        f"m = keras.saving.load_model({path!r})\n"
        f"e = np.load({str(tmp_path / 'expected.npz')!r})\n"
        "assert all(np.array_equal(v.numpy(), e[f'arr_{i}']) for i, v in enumerate(m.weights))\n"
        "print('same')\n"
    )
    assert fresh_process(code).strip() == "same"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"decay": 1.0}, ValueError, r"`decay`.*Received: decay=1.0"),
        ({"decay": "0.9"}, TypeError, r"`decay`.*Received: decay='0.9'"),
        ({"warmup": "yes"}, TypeError, r"Received: warmup='yes'"),
        ({"every_n_steps": 0}, ValueError, r"Received: every_n_steps=0"),
        ({"start_step": -1}, ValueError, r"Received: start_step=-1"),
        ({"bn_steps": 0}, ValueError, r"Received: bn_steps=0"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        EMA(**kwargs)
