import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Snapshots, changed, fresh_process, make_base, needs_multi_optimizer, snapshot, with_statistics

from keras_finetune import fine_tune
from keras_finetune.array_batches import ArrayBatches
from keras_finetune.callbacks import SWA, CosineAnnealing, EpochSeeds, ProgressiveUnfreezing, StepLR, update_batchnorm
from keras_finetune.callbacks.epoch_seeds import epoch_order, reseed, seed_states
from keras_finetune.freezing import batchnorm_layers
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix, image_augmentation
from keras_finetune.models import MixingModel

NO_PARTS = {"augmentation": False, "mixing": False, "swa": None, "schedule": None}


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    images = rng.normal(0.0, 1.0, (48, 8, 8, 1)).astype("float32")
    labels = (images[:, :4].mean(axis=(1, 2, 3)) > images[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
    labels += 2 * (images[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return images, labels


def base_weights(seed=0):
    """The same pretrained-looking base each call: random weights, learned BatchNorm statistics."""
    keras.utils.set_random_seed(seed)
    return with_statistics(make_base(), seed)


def test_phases_learning_rates_and_trainable_counts_per_epoch(data):
    base = base_weights()
    history = fine_tune(
        base, data, num_classes=4, epochs=8, frozen_epochs=0.25, learning_rate=2e-3,
        warmup_epochs=1, swa=0.75, augmentation=False, mixing=False, batch_size=16, seed=0, verbose=0,
    )
    logs = history.history
    assert logs["phase"] == [0, 0, 1, 1, 1, 1, 1, 1]
    # phase rate times the cosine over 8 epochs with one warm-up epoch; phase 1 at a tenth
    cosine = [0.5] + [(1 + math.cos(math.pi * e / 8)) / 2 for e in range(7)]
    expected = [2e-3 * cosine[e] * (1 if e < 2 else 0.1) for e in range(8)]
    np.testing.assert_allclose(logs["learning_rate"], expected, rtol=1e-6)
    model = history.model
    head = sum(v.numpy().size for layer in model.layers if layer is not base for v in layer.trainable_weights)
    convs = sum(v.numpy().size for v in base.weights if "conv" in v.path)
    assert logs["trainable_params"] == [head] * 2 + [head + convs] * 6
    assert logs["swa_n"] == [0] * 6 + [1, 2]


def test_the_frozen_phase_leaves_the_base_and_the_unfrozen_one_trains_it_without_batchnorm(data):
    frozen_only = base_weights()
    before = snapshot(frozen_only)
    model = build_classifier(frozen_only, 4)
    head = model.get_layer("head_output")
    head_before = snapshot(head)
    history = fine_tune(model, data, epochs=2, unfreeze=None, **NO_PARTS, seed=0, verbose=0)
    assert changed(before, frozen_only) == set()
    assert changed(head_before, head) == {"head_output/kernel", "head_output/bias"}
    assert history.history["phase"] == [0, 0]

    unfrozen = base_weights()
    history = fine_tune(unfrozen, data, num_classes=4, epochs=2, frozen_epochs=1, **NO_PARTS, seed=0, verbose=0)
    assert changed(before, unfrozen) == {f"conv{i}/{w}" for i in range(3) for w in ("kernel", "bias")}
    assert all(not layer.trainable for layer in batchnorm_layers(unfrozen))


def test_the_result_equals_the_same_parts_assembled_by_hand(data):
    """Every part on: the recipe is the public parts, nothing hidden."""
    images, labels = data
    options = {"flip": None, "hue": None, "saturation": None, "value_range": (-5, 5)}
    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=6, frozen_epochs=2, unfreeze=4,
        learning_rate=3e-3, unfreeze_lr_factor=0.2, warmup_epochs=1, augmentation=options,
        mixing={"switch_prob": 0.5}, label_smoothing=0.2, swa=4, swa_lr=5e-4, batch_size=16,
        seed=3, verbose=0, strategy=tf.distribute.get_strategy(),
    )

    base = base_weights()
    model = build_classifier(base, 4)
    augment = image_augmentation(seed=3, **options)
    mixing = MixUpOrCutMix(switch_prob=0.5, seed=3)

    def batches(epoch):  # each epoch's order from (seed, epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(48), seed=tf.stack([tf.constant(3, "int64"), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(16).map(
            lambda index: (tf.gather(images, index), tf.one_hot(tf.gather(labels, index), 4))
        )

    def epoch_batches(epoch):  # the pipeline's random layers reseeded from (seed, epoch)
        reseed(seed_states(augment, mixing), 3, epoch)
        return batches(epoch).map(lambda x, y: (augment(x, training=True), y)).map(mixing)

    train = tf.data.Dataset.range(6).flat_map(epoch_batches)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
    model.fit(train, epochs=6, steps_per_epoch=3, verbose=0, shuffle=False, callbacks=[
        ProgressiveUnfreezing(base, {0: 0, 2: 4}, {0: 3e-3, 2: 3e-3 * 0.2}),
        EpochSeeds(3),
        CosineAnnealing(t_max=6, warmup_epochs=1),
        SWA(4, swa_lr=5e-4, bn_data=batches(tf.constant(0, "int64"))),
    ])
    for mine, theirs in zip(history.model.weights, model.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.path)
    assert not np.allclose(history.model.get_layer("head_output").kernel.numpy(), build_classifier(base_weights(), 4).get_layer("head_output").kernel.numpy())


def test_swa_leaves_the_average_of_the_last_epochs_weights(data):
    recorder = Snapshots()
    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=5, frozen_epochs=0, augmentation=False,
        mixing=False, swa=2, batch_size=16, seed=0, verbose=0, callbacks=[recorder],
    )
    for index, variable in enumerate(history.model.weights):
        expected = np.mean([weights[index] for weights in recorder.ends[2:]], axis=0)
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=variable.path)


def test_validation_labels_become_one_hot_and_accuracy_is_the_models(data):
    images, labels = data
    history = fine_tune(
        base_weights(), data, (images[:20], labels[:20]), num_classes=4, epochs=2,
        frozen_epochs=0, **NO_PARTS, seed=0, verbose=0,
    )
    predicted = np.argmax(history.model.predict(images[:20], verbose=0), axis=-1)
    assert history.history["val_accuracy"][-1] == pytest.approx(np.mean(predicted == labels[:20]))


def test_a_classifier_is_taken_as_it_is_and_its_base_found(data):
    base = base_weights()
    model = build_classifier(base, 4, hidden_units=(), dropout=0.0)
    before = snapshot(base)
    history = fine_tune(model, data, epochs=2, unfreeze=None, **NO_PARTS, seed=0, verbose=0)
    assert history.model is model
    assert changed(before, base) == set()
    assert history.history["trainable_params"] == [model.get_layer("head_output").count_params()] * 2


def test_another_schedule_callback_replaces_the_cosine(data):
    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=4, frozen_epochs=0, learning_rate=1e-2,
        schedule=StepLR(step_size=2, gamma=0.5), augmentation=False, mixing=False, swa=None,
        seed=0, verbose=0,
    )
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-2, 5e-3, 5e-3], rtol=1e-6)


def test_a_dict_schedule_lowers_the_rate_at_each_phase(data):
    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=4, unfreeze={0: 0, 1: 2, 3: "all"},
        learning_rate=1e-2, unfreeze_lr_factor=0.5, **NO_PARTS, seed=0, verbose=0,
    )
    assert history.history["phase"] == [0, 1, 1, 2]
    np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 5e-3, 5e-3, 2.5e-3], rtol=1e-6)


def test_a_model_built_outside_the_strategy_is_copied_into_its_scope(data, mirrored):
    # No random pipeline here: under a strategy Keras builds the model from a batch of a
    # throw-away, prefetching iterator, which draws an endless random pipeline ahead by as
    # many batches as prefetching happens to take.
    results = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored):
        base = base_weights()
        before = snapshot(base)
        history = fine_tune(
            base, data, num_classes=4, epochs=3, frozen_epochs=1, mixing=False, augmentation=False,
            swa=1, batch_size=16, seed=0, verbose=0, strategy=strategy, head={"dropout": 0.0},
            # (each replica draws its own dropout mask for its half of the batch)
        )
        assert changed(before, base) == set()  # the copy trains, not the caller's base
        assert history.model.get_layer("base") is not base
        results.append(history)
    for one, two in zip(*(h.model.weights for h in results)):
        np.testing.assert_allclose(one.numpy(), two.numpy(), rtol=1e-4, atol=1e-5, err_msg=one.path)
    np.testing.assert_allclose(results[0].history["loss"], results[1].history["loss"], rtol=1e-5)


def test_an_untrained_base_trains_its_batchnorm_and_says_so(data):
    keras.utils.set_random_seed(0)
    untrained = make_base()
    with pytest.warns(UserWarning, match="The 2 BatchNorm layers of 'base' hold their initial statistics"):
        history = fine_tune(untrained, data, num_classes=4, epochs=2, frozen_epochs=1, **NO_PARTS, seed=0, verbose=0)
    moving = {f"bn{i}/{w}" for i in range(2) for w in ("moving_mean", "moving_variance", "gamma", "beta")}
    assert moving <= changed(snapshot(make_base()), untrained)  # they trained in the unfrozen epoch
    assert all(layer.trainable for layer in batchnorm_layers(untrained))
    assert [layer.momentum for layer in batchnorm_layers(untrained)] == [0.9, 0.9]  # from Keras's 0.99
    base_trainable = sum(v.numpy().size for v in untrained.trainable_weights)  # every weight but the moving statistics
    assert history.history["trainable_params"][1] == history.history["trainable_params"][0] + base_trainable

    keras.utils.set_random_seed(0)
    kept = make_base()
    fine_tune(kept, data, num_classes=4, epochs=2, frozen_epochs=1, **NO_PARTS, freeze_batchnorm=True, seed=0, verbose=0)
    assert not any(layer.trainable for layer in batchnorm_layers(kept))
    np.testing.assert_array_equal(kept.get_layer("bn0").moving_variance.numpy(), np.ones(4))


def test_without_swa_an_untrained_base_ends_with_the_exact_statistics_of_its_final_weights(data):
    keras.utils.set_random_seed(0)
    untrained = make_base()
    with pytest.warns(UserWarning, match="initial statistics"):
        model = fine_tune(untrained, data, num_classes=4, epochs=3, frozen_epochs=0, **NO_PARTS, seed=0, verbose=0).model
    ended = snapshot(untrained)
    order = epoch_order(len(data[0]), 0, 0).numpy()  # fine_tune's pass goes over epoch 0's batches of 32
    images, labels = data[0][order], data[1][order]
    update_batchnorm(model, (images, keras.ops.one_hot(labels, 4)), layers=batchnorm_layers(untrained))
    for layer in batchnorm_layers(untrained):  # a second exact pass moves nothing: they were exact already
        for variable in (layer.moving_mean, layer.moving_variance):
            np.testing.assert_allclose(variable.numpy(), ended[variable.path], rtol=1e-4, atol=1e-6)
    assert not np.allclose(ended["bn0/moving_variance"], 1.0)


def test_a_trained_base_keeps_its_batchnorm_frozen_without_a_warning(data, recwarn):
    base = base_weights()
    fine_tune(base, data, num_classes=4, epochs=2, frozen_epochs=1, **NO_PARTS, seed=0, verbose=0)
    assert not [w for w in recwarn if "initial statistics" in str(w.message)]
    assert not any(layer.trainable for layer in batchnorm_layers(base))
    assert [layer.momentum for layer in batchnorm_layers(base)] == [0.99, 0.99]


@pytest.mark.parametrize("arguments, message", [
    ({"epochs": 3, "frozen_epochs": 0.25}, "frozen_epochs=0.25 of 3 epochs rounds to 0"),
    ({"epochs": 4, "swa": 0.75}, "swa=0.75 of 4 epochs averages the last epoch's weights alone"),
])
def test_degenerate_phases_are_warned_about(data, arguments, message):
    with pytest.warns(UserWarning, match=message):
        fine_tune(base_weights(), data, **{"num_classes": 4, "verbose": 0, "augmentation": False,
                                            "mixing": False, "seed": 0, **arguments})


class Interrupt(keras.callbacks.Callback):
    """Raises in the middle of epoch `epoch`, as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise RuntimeError("interrupted")


def test_a_run_resumed_from_backup_dir_ends_with_the_uninterrupted_weights(data, tmp_path):
    """Dropout, shuffle, augmentation, mixing and SWA on: every draw comes back after the resume."""
    options = {"num_classes": 4, "epochs": 6, "frozen_epochs": 2, "swa": 3, "batch_size": 16, "seed": 0, "verbose": 0,
               "augmentation": {"flip": None, "hue": None, "saturation": None, "value_range": (-5, 5)}}
    whole = fine_tune(base_weights(), data, **options).model
    with pytest.raises(RuntimeError, match="interrupted"):
        fine_tune(base_weights(), data, **options, backup_dir=str(tmp_path / "backup"), callbacks=[Interrupt(4)])
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "epoch-4.weights.h5", "swa_state.npz", "training_metadata.json"]
    history = fine_tune(base_weights(), data, **options, backup_dir=str(tmp_path / "backup"))
    assert history.epoch == [4, 5] and history.history["swa_n"] == [2, 3]
    for mine, theirs in zip(history.model.weights, whole.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.path)
    assert not (tmp_path / "backup").exists()  # deleted once the run completed


def test_without_the_epoch_seeds_a_resumed_run_ends_elsewhere(data, tmp_path):
    """The check above can fail: the same resume without a seed draws other dropout masks and batches."""
    options = {"num_classes": 4, "epochs": 4, "frozen_epochs": 0, "swa": None, "batch_size": 16, "verbose": 0,
               "augmentation": False, "mixing": False}
    keras.utils.set_random_seed(0)
    whole = fine_tune(base_weights(), data, **options).model
    with pytest.raises(RuntimeError, match="interrupted"):
        fine_tune(base_weights(), data, **options, backup_dir=str(tmp_path / "b"), callbacks=[Interrupt(2)])
    resumed = fine_tune(base_weights(), data, **options, backup_dir=str(tmp_path / "b")).model
    kernel = "head_output/kernel"
    assert not np.allclose(resumed.get_layer("head_output").kernel.numpy(), whole.get_layer("head_output").kernel.numpy()), kernel


def test_the_model_is_compiled_with_keras_own_loss_and_metric(data):
    model = fine_tune(base_weights(), data, num_classes=4, epochs=1, **NO_PARTS, seed=0, verbose=0).model
    assert type(model.loss) is keras.losses.CategoricalCrossentropy
    assert model.loss.get_config()["label_smoothing"] == 0.1


def test_smoothing_in_the_loss_equals_smoothing_before_mixing():
    labels = np.array([0, 2, 1, 3, 3, 0], "int32")
    images = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype("float32")
    smoothed_first = MixUpOrCutMix(num_classes=4, label_smoothing=0.2, seed=5)(images, labels)[1]
    mixed = MixUpOrCutMix(num_classes=4, seed=5)(images, labels)[1]
    np.testing.assert_allclose(smoothed_first, 0.8 * np.asarray(mixed) + 0.2 / 4, rtol=1e-6)


@pytest.mark.parametrize("arguments, error, message", [
    ({"epochs": 0}, ValueError, "epochs=0"),
    ({"num_classes": 1}, ValueError, "num_classes=1"),
    ({"learning_rate": -1.0}, ValueError, "learning_rate=-1.0"),
    ({"frozen_epochs": 1.5}, ValueError, "frozen_epochs=1.5"),
    ({"frozen_epochs": 4, "epochs": 4}, ValueError, "phase starting at epoch 4"),
    ({"swa": -1}, ValueError, "swa=-1"),
    ({"schedule": "linear"}, ValueError, "schedule='linear'"),
    ({"augmentation": "strong"}, TypeError, "augmentation='strong'"),
    ({"mixing": 0.5}, TypeError, "mixing=0.5"),
])
def test_bad_arguments_are_refused(data, arguments, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        fine_tune(base_weights(), data, **{"num_classes": 4, "verbose": 0, **arguments})


def test_a_backup_callback_is_refused_in_favour_of_backup_dir(data, tmp_path):
    with pytest.raises(ValueError, match="Pass `backup_dir` instead of a BackupAndRestore callback"):
        fine_tune(base_weights(), data, num_classes=4, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path))])


def test_bad_models_and_data_are_refused(data):
    with pytest.raises(TypeError, match="model="):
        fine_tune("resnet", data, num_classes=4)
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Concatenate()([make_base("b1")(inputs), make_base("b2")(inputs)])
    two_bases = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(features)))
    with pytest.raises(ValueError, match=r"2 nested models \['b1', 'b2'\]"):
        fine_tune(two_bases, data, verbose=0)
    with pytest.raises(TypeError, match="Received: ndarray"):
        fine_tune(base_weights(), data[0], num_classes=4, verbose=0)
    images, labels = data
    with pytest.raises(ValueError, match="train_data` labels must be"):
        fine_tune(base_weights(), (images, labels.astype("float32")), num_classes=4, verbose=0)


def test_schedule_one_cycle_runs_one_cycle_per_phase(data):
    from test_one_cycle import torch_one_cycle

    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=4, frozen_epochs=2, learning_rate=2e-3, schedule="one_cycle",
        augmentation=False, mixing=False, swa=None, batch_size=16, seed=0, verbose=0,
    )
    logs = history.history
    frozen, unfrozen = torch_one_cycle(6, 2e-3), torch_one_cycle(6, 2e-4)  # 3 steps an epoch, 2 epochs a phase
    np.testing.assert_allclose(logs["learning_rate"], [frozen[0][2], frozen[0][5], unfrozen[0][2], unfrozen[0][5]], rtol=1e-5)
    np.testing.assert_allclose(logs["momentum"], [frozen[1][2], frozen[1][5], unfrozen[1][2], unfrozen[1][5]], rtol=1e-6)
    assert history.model.optimizer.beta_1 == 0.9  # the compiled value is back


def test_ema_puts_the_average_of_every_step_in_the_model(data):
    from test_ema import Steps, ema_by_numpy

    steps = Steps()
    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=3, frozen_epochs=1, ema=0.9, swa=None,
        augmentation=False, mixing=False, batch_size=16, seed=0, callbacks=[steps], verbose=0,
    )
    model = history.model
    expected = ema_by_numpy(steps.weights, 0.9)  # the base joins when it is unfrozen at epoch 1
    for variable, value in zip(model.weights, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6, err_msg=variable.path)
    assert not np.allclose(model.get_layer("head_output").kernel.numpy(), steps.weights[-1][-2])


@needs_multi_optimizer
def test_layer_decay_gives_each_block_its_rate(data):
    history = fine_tune(
        base_weights(), data, num_classes=4, epochs=2, frozen_epochs=1, learning_rate=1e-3, layer_decay=0.5,
        **NO_PARTS, batch_size=16, seed=0, verbose=0,
    )
    optimizer = history.model.optimizer
    rates = {v.path: float(optimizer._optimizer_map[v.path].learning_rate.numpy()) for v in history.model.trainable_weights}
    head = rates["head_output/kernel"]
    assert head == pytest.approx(1e-4)  # the unfrozen phase's rate
    assert [rates[p] / head for p in ("conv0/kernel", "conv1/kernel", "conv2/kernel")] == pytest.approx([0.125, 0.25, 0.5])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"ema": 0.99}, ValueError, r"pass swa=None with ema. Received: ema=0.99, swa=0.75"),
        ({"ema": 1.0, "swa": None}, ValueError, r"Received: ema=1.0"),
        ({"layer_decay": 0}, ValueError, r"Received: layer_decay=0"),
        ({"schedule": "onecycle"}, ValueError, r'"one_cycle".*Received: schedule=\'onecycle\''),
    ],
)
def test_the_new_parts_refuse_bad_values(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fine_tune(base_weights(), data, num_classes=4, epochs=8, frozen_epochs=2, verbose=0, **kwargs)


def test_one_cycle_refuses_data_of_unknown_length(data):
    unknown = tf.data.Dataset.from_tensor_slices(data).filter(lambda x, y: True).batch(16)
    with pytest.raises(ValueError, match=r"unknown length.*Received: schedule=\"one_cycle\""):
        fine_tune(base_weights(), unknown, num_classes=4, epochs=8, frozen_epochs=2, schedule="one_cycle", verbose=0)


def test_a_checkpoint_of_the_step_path_is_the_classifier_and_reloads_with_keras_alone(data, tmp_path):
    """The callbacks see MixingModel there; a ModelCheckpoint of it writes the classifier, not the wrapper."""
    path = tmp_path / "last.keras"
    history = fine_tune(
        base_weights(), ArrayBatches(*data, 16, 4, seed=3), num_classes=4, epochs=3, frozen_epochs=1, augmentation=False, swa=None,
        seed=3, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(str(path))],
    )
    np.save(tmp_path / "images.npy", data[0])
    reloaded = fresh_process(f"""
import sys, keras, numpy as np
model = keras.saving.load_model({str(path)!r})
np.save({str(tmp_path / "predicted.npy")!r}, model.predict(np.load({str(tmp_path / "images.npy")!r}), verbose=0))
print(type(model).__name__, [m for m in sys.modules if m.startswith("keras_finetune")])
""")
    assert reloaded.split() == ["Functional", "[]"]
    predicted = np.load(tmp_path / "predicted.npy")  # the last epoch's weights, which fit ends with (no SWA)
    np.testing.assert_allclose(predicted, history.model.predict(data[0], verbose=0), rtol=1e-5, atol=1e-6)


def test_fine_tune_on_a_py_dataset_equals_the_same_parts_assembled_by_hand(data):
    """Every part on, the random layers inside the step (MixingModel), the batches from ArrayBatches."""
    options = {"flip": None, "hue": None, "saturation": None, "value_range": (-5, 5)}
    history = fine_tune(
        base_weights(), ArrayBatches(*data, 16, 4, seed=3), data, num_classes=4, epochs=5, frozen_epochs=2,
        unfreeze=4, learning_rate=3e-3, unfreeze_lr_factor=0.2, warmup_epochs=1, augmentation=options,
        mixing={"switch_prob": 0.5}, label_smoothing=0.2, swa=3, swa_lr=5e-4, seed=3, verbose=0,
    )
    assert not isinstance(history.model, MixingModel)  # the classifier itself, not the wrapper that fit

    base = base_weights()
    model = build_classifier(base, 4)
    trainer = MixingModel(model, MixUpOrCutMix(switch_prob=0.5, num_classes=4, seed=3), augmentation=image_augmentation(seed=3, **options))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
    trainer.compile(model.optimizer, model.loss)
    by_hand = ArrayBatches(*data, 16, 4, seed=3)

    class Follow(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            by_hand.epoch = epoch

    trainer.fit(by_hand, epochs=5, verbose=0, shuffle=False, callbacks=[
        Follow(),
        ProgressiveUnfreezing(base, {0: 0, 2: 4}, {0: 3e-3, 2: 3e-3 * 0.2}),
        EpochSeeds(3),
        CosineAnnealing(t_max=5, warmup_epochs=1),
        SWA(3, swa_lr=5e-4, bn_data=by_hand),
    ])
    for mine, theirs in zip(history.model.weights, model.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.path)
    unaugmented = fine_tune(
        base_weights(), ArrayBatches(*data, 16, 4, seed=3), num_classes=4, epochs=5, frozen_epochs=2, unfreeze=4,
        learning_rate=3e-3, unfreeze_lr_factor=0.2, warmup_epochs=1, augmentation=False, mixing=False,
        label_smoothing=0.2, swa=3, swa_lr=5e-4, seed=3, verbose=0,
    )
    kernels = [m.get_layer("head_output").kernel.numpy() for m in (history.model, unaugmented.model)]
    assert not np.allclose(*kernels)  # the random layers did draw
    assert len(history.history["val_loss"]) == 5 and "val_loss" not in unaugmented.history

    class ClassIds(ArrayBatches):  # a PyDataset of the caller's, its labels integer ids
        def __getitem__(self, index):
            images, labels = super().__getitem__(index)
            return images, labels.argmax(axis=1)

    ids = fine_tune(
        base_weights(), ClassIds(*data, 16, 4, seed=3), num_classes=4, epochs=5, frozen_epochs=2, unfreeze=4,
        learning_rate=3e-3, unfreeze_lr_factor=0.2, warmup_epochs=1, augmentation=False, mixing=False,
        label_smoothing=0.2, swa=3, swa_lr=5e-4, seed=3, verbose=0,
    )
    for mine, theirs in zip(ids.model.weights, unaugmented.model.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7, err_msg=mine.path)
