import contextlib

import keras
import numpy as np
import pytest
from conftest import make_base, mixed_float16, numpy, snapshot

from keras_finetune.callbacks import CosineAnnealing, ProgressiveUnfreezing, StepLR
from keras_finetune.heads import build_classifier

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

SCHEDULE = {0: 0, 2: 3, 4: "all"}
RATES = {0: 1e-2, 2: 1e-3, 4: 1e-4}
BASE_KERNELS = ["conv0/kernel", "conv1/kernel", "conv2/kernel"]
BATCHNORM_STATISTICS = ["bn0/moving_mean", "bn0/moving_variance", "bn1/moving_mean", "bn1/moving_variance"]


def make_model(strategy=None, learning_rate=1e-2):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        base = make_base()
        model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
        model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    return base, model


class Recorder(keras.callbacks.Callback):
    """What the model looks like at each epoch's end (and at the start of the epochs asked for)."""

    def __init__(self, base):
        super().__init__()
        self.base, self.ends, self.begins = base, [], {}

    def _moment(self):
        return next(
            np.array(v.numpy()) for v in self.model.optimizer.variables if v.path.endswith("head_output_kernel_momentum")
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.begins[epoch] = {"moment": self._moment(), "optimizer": self.model.optimizer}

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(
            {
                "weights": snapshot(self.base),
                "iterations": int(self.model.optimizer.iterations.numpy()),
                "moment": self._moment(),
                "optimizer": self.model.optimizer,
                "logs": dict(logs),
            }
        )


def fit(model, callbacks, images, int_labels, epochs=6, **kwargs):
    return model.fit(
        images, int_labels, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks, **kwargs
    )


def changed_paths(before, after):
    return sorted(path for path in before if not np.array_equal(before[path], after[path]))


def test_base_trains_from_each_phase_on_and_not_before(images, int_labels):
    base, model = make_model()
    initial = snapshot(base)
    recorder = Recorder(base)
    fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES), recorder], images, int_labels)
    moved = [changed_paths(initial, end["weights"]) for end in recorder.ends]
    assert moved[0] == moved[1] == []
    phase_two = ["conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel"]  # top 3: conv1, bn1, conv2
    assert moved[2] == moved[3] == phase_two
    assert moved[4] == moved[5] == ["conv0/bias", "conv0/kernel", *phase_two]
    # Within a phase, between two epochs, the trainable entries moved again.
    assert changed_paths(recorder.ends[4]["weights"], recorder.ends[5]["weights"]) == moved[5]
    # freeze_batchnorm=True: moving statistics and gamma/beta never change.
    assert not any(path.startswith("bn") for path in moved[5])


def test_optimizer_state_survives_the_phase_changes(images, int_labels):
    base, model = make_model()
    recorder = Recorder(base)
    fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES), recorder], images, int_labels)
    assert [end["iterations"] for end in recorder.ends] == [4, 8, 12, 16, 20, 24]
    assert all(end["optimizer"] is model.optimizer for end in recorder.ends)
    for epoch in (2, 4):  # the head's moments go into the new phase unchanged
        assert np.abs(recorder.ends[epoch - 1]["moment"]).max() > 0
        np.testing.assert_array_equal(recorder.begins[epoch]["moment"], recorder.ends[epoch - 1]["moment"])


def test_logs_carry_phase_learning_rate_and_trainable_params_per_epoch(images, int_labels):
    base, model = make_model()
    history = fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES)], images, int_labels)
    assert history.history["phase"] == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)
    head = 6 * 3 + 3
    conv0, conv1, conv2 = 1 * 9 * 4 + 4, 4 * 9 * 4 + 4, 4 * 9 * 6 + 6
    top3 = head + conv1 + conv2
    assert history.history["trainable_params"] == [head, head, top3, top3, top3 + conv0, top3 + conv0]


@pytest.mark.tensorflow_only("counts the traces of a TensorFlow train step")
def test_one_trace_per_phase_and_none_otherwise(images, int_labels):
    base, model = make_model()
    traces = []
    train_step = model.train_step

    def counting_train_step(data):
        traces.append(1)  # Python runs only while tracing
        return train_step(data)

    model.train_step = counting_train_step
    fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES)], images, int_labels)
    assert len(traces) == 3


def test_layer_name_phases_and_refreezing(images, int_labels):
    base, model = make_model()
    initial = snapshot(base)
    recorder = Recorder(base)
    schedule = {0: "conv1", 1: 0}
    fit(model, [ProgressiveUnfreezing(base, schedule), recorder], images, int_labels, epochs=2)
    assert changed_paths(initial, recorder.ends[0]["weights"]) == ["conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel"]
    assert changed_paths(recorder.ends[0]["weights"], recorder.ends[1]["weights"]) == []
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-2)  # no learning_rates: left alone


def test_freeze_batchnorm_false_lets_batchnorm_statistics_move(images, int_labels):
    base, model = make_model()
    initial = snapshot(base)
    fit(model, [ProgressiveUnfreezing(base, {0: 0, 1: "all"}, freeze_batchnorm=False)], images, int_labels, epochs=2)
    assert set(BATCHNORM_STATISTICS) <= set(changed_paths(initial, snapshot(base)))


def test_initial_epoch_puts_the_run_in_that_epochs_phase(images, int_labels):
    base, model = make_model()
    initial = snapshot(base)
    history = fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES)], images, int_labels, epochs=3, initial_epoch=2)
    assert history.history["learning_rate"] == pytest.approx([1e-3])
    assert changed_paths(initial, snapshot(base)) == ["conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel"]


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 3:
            raise RuntimeError("interrupted")


def test_resume_with_backup_and_restore_ends_like_an_uninterrupted_run(images, int_labels, tmp_path):
    base, model = make_model()
    fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES)], images, int_labels)

    backup = str(tmp_path / "backup")
    base_a, model_a = make_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        callbacks = [keras.callbacks.BackupAndRestore(backup), ProgressiveUnfreezing(base_a, SCHEDULE, RATES), Interrupt()]
        fit(model_a, callbacks, images, int_labels)
    base_b, model_b = make_model()  # a new process would build everything again
    history = fit(
        model_b, [keras.callbacks.BackupAndRestore(backup), ProgressiveUnfreezing(base_b, SCHEDULE, RATES)], images, int_labels
    )
    assert history.epoch == [3, 4, 5]
    assert [v.path for v in model_b.trainable_weights] == [v.path for v in model.trainable_weights]
    assert int(model_b.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 24
    for expected, resumed in zip(model.weights, model_b.weights):
        np.testing.assert_allclose(resumed.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_mirrored_strategy_matches_a_single_device(images, int_labels, mirrored):
    base, model = make_model()
    fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES)], images, int_labels)
    base_m, model_m = make_model(mirrored)
    initial = snapshot(base_m)
    recorder = Recorder(base_m)
    history = fit(model_m, [ProgressiveUnfreezing(base_m, SCHEDULE, RATES), recorder], images, int_labels)
    assert changed_paths(initial, recorder.ends[1]["weights"]) == []
    assert [end["iterations"] for end in recorder.ends] == [4, 8, 12, 16, 20, 24]
    assert all(end["optimizer"] is model_m.optimizer for end in recorder.ends)
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)
    for single, replicated in zip(model.weights, model_m.weights):
        np.testing.assert_allclose(replicated.numpy(), single.numpy(), rtol=1e-4, atol=1e-5)
    statistics = snapshot(base_m)
    assert all(np.array_equal(statistics[p], initial[p]) for p in BATCHNORM_STATISTICS)


class BatchRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate.numpy()))


def test_warmup_ramps_the_rate_after_an_unfreeze(images, int_labels):
    base, model = make_model()
    rates = BatchRates()
    unfreezing = ProgressiveUnfreezing(base, {0: 0, 1: "all"}, {0: 1e-2, 1: 1e-3}, warmup_steps=5)
    history = fit(model, [unfreezing, rates], images, int_labels, epochs=3)
    expected = [1e-2] * 4 + [1e-3 * k / 6 for k in (1, 2, 3, 4)] + [1e-3 * 5 / 6] + [1e-3] * 3
    np.testing.assert_allclose(rates.rates, expected, rtol=1e-6)
    # The epoch that ended inside the warm-up logs the phase's rate.
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-3, 1e-3], rtol=1e-6)


def test_phase_rates_are_the_base_of_step_lr(images, int_labels):
    base, model = make_model()
    callbacks = [StepLR(step_size=2, gamma=0.5), ProgressiveUnfreezing(base, {0: 0, 3: "all"}, {0: 1e-2, 3: 1e-3})]
    history = fit(model, callbacks, images, int_labels)
    expected = [1e-2, 1e-2, 1e-2 * 0.5, 1e-3 * 0.5, 1e-3 * 0.25, 1e-3 * 0.25]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)


def test_callable_learning_rates_are_called_with_each_phase_start(images, int_labels):
    base, model = make_model()
    calls = []

    def rate(epoch):
        calls.append(epoch)
        return 1e-2 / (epoch + 1)

    history = fit(model, [ProgressiveUnfreezing(base, {0: 0, 2: "all"}, rate)], images, int_labels, epochs=3)
    assert calls == [0, 2]
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-2, 1e-2 / 3], rtol=1e-6)


def test_verbose_prints_one_line_per_phase_change(images, int_labels, capsys):
    base, model = make_model()
    fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES, verbose=1)], images, int_labels)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("Epoch 3: ProgressiveUnfreezing: 'base' trainable in its top 3 units; 391 trainable")


@pytest.mark.parametrize(
    "schedule, learning_rates, message",
    [
        ({0: 0, 4: "all", 2: 3}, None, "increasing order"),
        ({-1: 0, 2: "all"}, None, "ints >= 0"),
        ({2: "all"}, None, "must say what trains from epoch 0"),
        ({0: 0, 2: "conv9"}, None, "Received: schedule value 'conv9'"),
        ({0: 0, 2: 8}, None, "of 'base' from the top: 0 to 7. Received: schedule value 8"),
        ({0: 0, 2: True}, None, "Received: schedule value True"),
        ({}, None, "non-empty dict"),
        ({0: 0, 2: "all"}, {0: 1e-3, 2: 0.0}, r"Received: learning_rates\[2\]=0.0"),
        ({0: 0, 2: "all"}, {0: 1e-3, 2: -1e-4}, r"> 0"),
        ({0: 0}, {0: 1e-3, 5: 1e-4}, "epoch 5 starts no phase"),
        ({0: 0, 2: "all"}, lambda epoch: -1.0, r"Received: learning_rates\(0\)=-1.0"),
    ],
)
def test_rejects_bad_schedules_and_rates(base, schedule, learning_rates, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveUnfreezing(base, schedule, learning_rates)


def test_rejects_a_base_outside_the_model_and_an_uncompiled_model(images, int_labels):
    _, model = make_model()
    with pytest.raises(ValueError, match="must be a layer of the model being fit"):
        fit(model, [ProgressiveUnfreezing(make_base("other"), {0: 0})], images, int_labels)
    base = make_base()
    uncompiled = build_classifier(base, 3)
    callback = ProgressiveUnfreezing(base, {0: 0})
    callback.set_model(uncompiled)
    with pytest.raises(ValueError, match="compile"):
        callback.on_train_begin()
    with pytest.raises(TypeError, match="base_model"):
        ProgressiveUnfreezing("base", {0: 0})


def test_refuses_to_set_rates_on_a_learning_rate_schedule(images, int_labels):
    base, model = make_model()
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5)), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="Received: learning_rate=ExponentialDecay"):
        fit(model, [ProgressiveUnfreezing(base, SCHEDULE, RATES)], images, int_labels)
    base, model = make_model()  # without learning_rates it only unfreezes, and logs the schedule's rate
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 4, 0.5)), "sparse_categorical_crossentropy")
    history = fit(model, [ProgressiveUnfreezing(base, SCHEDULE)], images, int_labels, epochs=2)
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2 * 0.5, 1e-2 * 0.25], rtol=1e-6)


def test_mixed_precision_loss_scale_optimizer_with_a_cosine_schedule(images, int_labels):
    with mixed_float16():
        base, model = make_model()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    initial = snapshot(base)
    callbacks = [ProgressiveUnfreezing(base, {0: 0, 2: "all"}, {0: 1e-2, 2: 1e-3}), CosineAnnealing(t_max=4)]
    history = fit(model, callbacks, images, int_labels, epochs=4)
    cosine = [(1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)]
    expected = [1e-2 * cosine[0], 1e-2 * cosine[1], 1e-3 * cosine[2], 1e-3 * cosine[3]]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)
    # 16 steps: those applied, and those skipped on a float16 overflow (each halves the loss scale; PyTorch's CPU
    # float16 overflows on the first where TensorFlow's does not).
    skipped = np.log2(model.optimizer.initial_scale / float(numpy(model.optimizer.dynamic_scale)))
    assert int(numpy(model.optimizer.iterations)) + skipped == 16
    assert changed_paths(initial, snapshot(base)) == sorted(f"conv{i}/{w}" for i in range(3) for w in ("bias", "kernel"))
