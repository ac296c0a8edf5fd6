import contextlib
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Snapshots, make_base, mixed_float16, needs_multi_optimizer

from keras_finetune.callbacks import SWA, CosineAnnealing, ProgressiveUnfreezing, StepLR
from keras_finetune.heads import build_classifier
from keras_finetune.optimizers import discriminative_optimizer

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def make_model(strategy=None, optimizer=None):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        base = make_base()
        model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
        model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    return base, model


def make_dense(**compile_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse", **compile_kwargs)
    return model


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]


def fit(model, data, callbacks, epochs=6, **kwargs):
    x, y = data
    return model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **kwargs)


def mean_of(snapshots):
    return [np.mean(np.stack(weights), axis=0) for weights in zip(*snapshots)]


def assert_weights(model, expected, rtol=1e-6, atol=1e-7):
    for variable, value in zip(model.weights, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=rtol, atol=atol, err_msg=variable.path)


def test_averaged_weights_equal_the_mean_of_the_epoch_end_weights(regression):
    model = make_dense()
    snapshots = Snapshots()
    history = fit(model, regression, [snapshots, SWA(start_epoch=2)])
    assert history.history["swa_n"] == [0, 0, 1, 2, 3, 4]
    assert_weights(model, mean_of(snapshots.ends[2:]))
    assert not np.allclose(model.weights[0].numpy(), snapshots.ends[-1][0])


def test_a_float_start_epoch_is_a_fraction_of_the_planned_epochs(regression):
    model = make_dense()
    snapshots = Snapshots()
    history = fit(model, regression, [snapshots, SWA(start_epoch=0.5)], epochs=7)  # floor(3.5) = 3
    assert history.history["swa_n"] == [0, 0, 0, 1, 2, 3, 4]
    assert_weights(model, mean_of(snapshots.ends[3:]))


def test_all_weights_are_averaged_frozen_ones_and_statistics_too(images, int_labels):
    base, model = make_model()
    snapshots = Snapshots()
    unfreezing = ProgressiveUnfreezing(base, {0: 0, 3: "all"}, freeze_batchnorm=False)
    with pytest.warns(UserWarning, match="update_batchnorm"):
        fit(model, (images, int_labels), [unfreezing, snapshots, SWA(start_epoch=1)])
    kernel = [v.path for v in model.weights].index("conv0/kernel")
    assert np.array_equal(snapshots.ends[1][kernel], snapshots.ends[2][kernel])  # frozen then
    assert not np.array_equal(snapshots.ends[3][kernel], snapshots.ends[4][kernel])  # trained later
    assert_weights(model, mean_of(snapshots.ends[1:]))  # moving statistics included: no bn_data


def test_batchnorm_statistics_are_recomputed_for_the_averaged_weights(images, int_labels):
    base, model = make_model()
    snapshots = Snapshots()
    dataset = tf.data.Dataset.from_tensor_slices((images, int_labels)).batch(8)
    fit(model, (images, int_labels), [snapshots, SWA(start_epoch=3, bn_data=dataset)])
    average = mean_of(snapshots.ends[3:])
    paths = [v.path for v in model.weights]
    statistics = [i for i, path in enumerate(paths) if "moving" in path]
    assert_weights(
        model, [model.weights[i].numpy() if i in statistics else value for i, value in enumerate(average)]
    )
    inputs = keras.Model(base.input, base.get_layer("bn0").input).predict(images, verbose=0).reshape(-1, 4)
    bn0 = base.get_layer("bn0")
    np.testing.assert_allclose(bn0.moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn0.moving_variance.numpy(), inputs.var(axis=0), rtol=1e-5, atol=1e-6)
    assert bn0.momentum == 0.99 and bn0.trainable


def test_no_warning_when_every_batchnorm_layer_is_frozen(images, int_labels):
    base, model = make_model()
    unfreezing = ProgressiveUnfreezing(base, {0: 0, 2: "all"})  # freeze_batchnorm=True
    with warnings_as_errors():
        fit(model, (images, int_labels), [unfreezing, SWA(start_epoch=2)])


@contextlib.contextmanager
def warnings_as_errors():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def swa_rate(k, anneal_from, swa_lr, anneal_epochs, strategy):
    x = min((k + 1) / anneal_epochs, 1.0)
    f = (1 - math.cos(math.pi * x)) / 2 if strategy == "cos" else x
    return anneal_from + (swa_lr - anneal_from) * f


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_learning_rate_anneals_to_swa_lr_then_holds(regression, strategy):
    model = make_dense()
    swa = SWA(start_epoch=2, swa_lr=0.01, anneal_epochs=3, anneal_strategy=strategy)
    history = fit(model, regression, [swa], epochs=7)
    expected = [0.05, 0.05] + [swa_rate(k, 0.05, 0.01, 3, strategy) for k in range(5)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)
    assert expected[4] == expected[6] == pytest.approx(0.01)


def test_without_annealing_swa_lr_holds_from_the_start_epoch(regression):
    history = fit(make_dense(), regression, [SWA(start_epoch=3, swa_lr=0.02)])
    np.testing.assert_allclose(history.history["learning_rate"], [0.05] * 3 + [0.02] * 3, rtol=1e-6)


@pytest.mark.parametrize("swa_first", [True, False])
def test_swa_takes_the_rate_over_from_a_schedule_in_either_order(regression, swa_first):
    swa = SWA(start_epoch=3, swa_lr=0.001, anneal_epochs=2, anneal_strategy="linear")
    schedule = CosineAnnealing(t_max=8)
    history = fit(make_dense(), regression, [swa, schedule] if swa_first else [schedule, swa], epochs=6)
    cosine = [0.05 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(3)]
    expected = cosine + [swa_rate(k, cosine[2], 0.001, 2, "linear") for k in range(3)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)


@pytest.mark.parametrize("with_schedule", [False, True])
def test_phases_starting_inside_the_swa_window_leave_the_rate_alone(images, int_labels, with_schedule):
    base, model = make_model()
    unfreezing = ProgressiveUnfreezing(base, {0: 0, 4: "all"}, learning_rates={0: 0.05, 4: 0.5})
    callbacks = [SWA(start_epoch=2, swa_lr=0.01), unfreezing] + ([StepLR(1, 0.5)] if with_schedule else [])
    history = fit(model, (images, int_labels), callbacks)
    before = [0.05, 0.025] if with_schedule else [0.05, 0.05]
    np.testing.assert_allclose(history.history["learning_rate"], before + [0.01] * 4, rtol=1e-6)
    assert history.history["trainable_params"][4] > history.history["trainable_params"][3]


@needs_multi_optimizer
def test_swa_lr_with_a_multi_optimizer_keeps_the_ratios(images, int_labels):
    keras.utils.set_random_seed(0)
    base = make_base()
    model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    optimizer = discriminative_optimizer(model, base, head_lr=0.1, base_lr=0.01, optimizer="sgd")
    model.compile(optimizer, "sparse_categorical_crossentropy")
    fit(model, (images, int_labels), [SWA(start_epoch=1, swa_lr=0.02, bn_data=images)], epochs=3)
    rates = sorted(float(sub.learning_rate.numpy()) for sub in optimizer.optimizers)
    np.testing.assert_allclose(rates, [0.002, 0.02], rtol=1e-6)


def test_mixed_precision_averages_in_float32(regression):
    with mixed_float16():
        model = make_dense()
        snapshots = Snapshots()
        history = fit(model, regression, [snapshots, SWA(start_epoch=2, swa_lr=0.01)])
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(model.optimizer.inner_optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    assert all(v.dtype == "float32" for v in model.weights)
    assert history.history["learning_rate"][2:] == pytest.approx([0.01] * 4)
    assert_weights(model, mean_of(snapshots.ends[2:]))


def test_mixed_float16_moves_the_weights_as_far_as_float32(regression):
    def change():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(1)])
        # A small loss scale: Keras's default 2**15 overflows float16 here and
        # skips the first steps, which would hide what SWA does.
        model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), initial_scale=8.0), "mse")
        before = [np.array(v.numpy()) for v in model.weights]
        fit(model, regression, [SWA(start_epoch=2, swa_lr=0.01)])
        return [v.numpy() - b for v, b in zip(model.weights, before)]

    reference = change()
    with mixed_float16():
        mixed = change()
    for got, expected in zip(mixed, reference):
        assert np.linalg.norm(got) / np.linalg.norm(expected) == pytest.approx(1.0, abs=0.03)
        np.testing.assert_allclose(got, expected, atol=0.02 * np.abs(expected).max())


def test_validation_evaluates_the_average_and_training_goes_on_undisturbed(regression):
    plain, snapshots = make_dense(), Snapshots()
    fit(plain, regression, [snapshots, SWA(start_epoch=2)])
    model = make_dense(metrics=["mae"])
    history = fit(model, regression, [SWA(start_epoch=2, validation_data=regression)])
    assert_weights(model, [v.numpy() for v in plain.weights])
    assert "swa_val_loss" not in history.history or len(history.history["swa_val_loss"]) == 4
    x, y = regression
    for k, (loss, mae) in enumerate(zip(history.history["swa_val_loss"], history.history["swa_val_mae"])):
        average = mean_of(snapshots.ends[2 : 3 + k])
        probe = make_dense()
        probe.set_weights(average)
        predictions = probe.predict(x, verbose=0)
        assert loss == pytest.approx(float(np.mean((predictions - y) ** 2)), rel=1e-5)
        assert mae == pytest.approx(float(np.mean(np.abs(predictions - y))), rel=1e-5)


def test_validation_with_bn_data_restores_the_trained_statistics(images, int_labels):
    _, plain = make_model()
    fit(plain, (images, int_labels), [SWA(start_epoch=2, bn_data=images)])
    _, model = make_model()
    swa = SWA(start_epoch=2, bn_data=images, validation_data=(images, int_labels))
    history = fit(model, (images, int_labels), [swa])
    assert len(history.history["swa_val_loss"]) == 4
    assert_weights(model, [v.numpy() for v in plain.weights], rtol=1e-5, atol=1e-6)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, hook="on_epoch_begin"):
        super().__init__()
        self.epoch = epoch
        setattr(self, hook, self._maybe_raise)

    def _maybe_raise(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def swa(backup):
    return SWA(start_epoch=1, swa_lr=0.01, anneal_epochs=3, bn_data=np.zeros((8, 8, 8, 1), "float32") + 1.0, backup_dir=backup)


@pytest.mark.parametrize(
    "order",
    [
        "backup, swa, interrupt at epoch begin",
        # SWA wrote epoch 3's state, BackupAndRestore had not: resume at 3 from SWA's previous file.
        "swa, interrupt at epoch end, backup",
    ],
)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(images, int_labels, tmp_path, order):
    _, model = make_model()
    fit(model, (images, int_labels), [swa(str(tmp_path / "reference"))])
    backup = str(tmp_path / "backup")
    _, model_a = make_model()
    if order.startswith("backup"):
        callbacks = [keras.callbacks.BackupAndRestore(backup), swa(backup), Interrupt(3)]
    else:
        callbacks = [swa(backup), Interrupt(3, "on_epoch_end"), keras.callbacks.BackupAndRestore(backup)]
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model_a, (images, int_labels), callbacks)
    assert os.path.exists(os.path.join(backup, "swa_state.npz"))
    _, model_b = make_model()  # a new process builds everything again
    history = fit(model_b, (images, int_labels), [keras.callbacks.BackupAndRestore(backup), swa(backup)])
    assert history.epoch == [3, 4, 5]
    assert history.history["swa_n"] == [3, 4, 5]
    np.testing.assert_allclose(history.history["learning_rate"], [swa_rate(k, 0.05, 0.01, 3, "cos") for k in (2, 3, 4)])
    assert_weights(model_b, [v.numpy() for v in model.weights])
    assert not os.path.exists(backup)


def test_resuming_without_the_state_raises(images, int_labels, tmp_path):
    backup = str(tmp_path / "backup")
    _, model_a = make_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model_a, (images, int_labels), [keras.callbacks.BackupAndRestore(backup), SWA(1), Interrupt(3)])
    _, model_b = make_model()
    with pytest.raises(ValueError, match="cannot resume at epoch 3.*backup_dir"):
        fit(model_b, (images, int_labels), [keras.callbacks.BackupAndRestore(backup), SWA(1)])


def test_the_same_callback_continues_in_memory_after_an_interruption(regression, tmp_path):
    reference, snapshots = make_dense(), Snapshots()
    fit(reference, regression, [snapshots, SWA(start_epoch=1)])
    backup = str(tmp_path / "backup")
    model, callback = make_dense(), SWA(start_epoch=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, regression, [keras.callbacks.BackupAndRestore(backup), callback, Interrupt(4)])
    fit(model, regression, [keras.callbacks.BackupAndRestore(backup), callback])
    assert_weights(model, [v.numpy() for v in reference.weights])


def test_a_state_from_another_model_is_refused(images, int_labels, regression, tmp_path):
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(make_dense(), regression, [keras.callbacks.BackupAndRestore(backup), SWA(1, backup_dir=backup), Interrupt(3)])
    _, model = make_model()
    with pytest.raises(ValueError, match="another model"):
        fit(model, (images, int_labels), [keras.callbacks.BackupAndRestore(str(tmp_path / "b")), SWA(1, backup_dir=backup)], initial_epoch=3)


def test_replicas_hold_the_same_average_and_the_true_statistics(images, int_labels, mirrored):
    base, model = make_model(mirrored)
    snapshots = Snapshots()
    dataset = tf.data.Dataset.from_tensor_slices((images, int_labels)).batch(8)
    fit(model, (images, int_labels), [snapshots, SWA(start_epoch=2, swa_lr=0.01, bn_data=dataset)])
    average = mean_of(snapshots.ends[2:])
    for variable, value in zip(model.weights, average):
        first, second = (r.numpy() for r in mirrored.experimental_local_results(variable.value))
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
        if "moving" not in variable.path:
            np.testing.assert_allclose(first, value, rtol=1e-6, atol=1e-7, err_msg=variable.path)
    inputs = keras.Model(base.input, base.get_layer("bn0").input).predict(images, verbose=0).reshape(-1, 4)
    np.testing.assert_allclose(base.get_layer("bn0").moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_a_saved_model_reloads_with_the_averaged_weights(images, int_labels, tmp_path):
    _, model = make_model()
    fit(model, (images, int_labels), [SWA(start_epoch=2, bn_data=images)])
    path = str(tmp_path / "swa.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert_weights(reloaded, [v.numpy() for v in model.weights], rtol=0, atol=0)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def test_a_fit_stopped_before_the_start_epoch_keeps_its_weights(regression):
    model, snapshots = make_dense(), Snapshots()
    with pytest.warns(UserWarning, match="averaged nothing"):
        fit(model, regression, [snapshots, Stop(), SWA(start_epoch=3)])
    assert_weights(model, snapshots.ends[0], rtol=0, atol=0)


def test_bn_data_that_yields_nothing_raises(images, int_labels):
    _, model = make_model()
    with pytest.raises(ValueError, match="yielded no batch"):
        fit(model, (images, int_labels), [SWA(1, bn_data=tf.data.Dataset.from_tensor_slices(images).take(0))], epochs=2)


def test_a_start_epoch_beyond_the_planned_epochs_raises_when_fit_starts(regression):
    with pytest.raises(ValueError, match="start averaging at epoch 6.*epochs=6"):
        fit(make_dense(), regression, [SWA(start_epoch=6)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start_epoch": -1}, "start_epoch=-1"),
        ({"start_epoch": 1.0}, "start_epoch=1.0"),
        ({"start_epoch": "last"}, "start_epoch='last'"),
        ({"start_epoch": True}, "start_epoch=True"),
        ({"start_epoch": 1, "swa_lr": 0.0}, "swa_lr=0.0"),
        ({"start_epoch": 1, "swa_lr": -1e-3}, "swa_lr=-0.001"),
        ({"start_epoch": 1, "anneal_epochs": -1, "swa_lr": 0.1}, "anneal_epochs=-1"),
        ({"start_epoch": 1, "anneal_epochs": 2}, "swa_lr=None"),
        ({"start_epoch": 1, "anneal_strategy": "cosine"}, "anneal_strategy='cosine'"),
        ({"start_epoch": 1, "bn_steps": 0}, "bn_steps=0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SWA(**kwargs)


def test_swa_lr_refuses_a_learning_rate_schedule(regression):
    model = make_dense()
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)), "mse")
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        fit(model, regression, [SWA(1, swa_lr=0.01)])
