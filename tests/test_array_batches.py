"""`ArrayBatches` and `fine_tune` on a `PyDataset`: the path arrays take where TensorFlow is missing."""

import keras
import numpy as np
import pytest
from conftest import make_base, with_statistics

from keras_finetune import fine_tune
from keras_finetune.array_batches import ArrayBatches
from keras_finetune.callbacks import SWA, CosineAnnealing, EpochSeeds, ProgressiveUnfreezing
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix, image_augmentation
from keras_finetune.models import MixingModel


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    images = rng.normal(0.0, 1.0, (44, 8, 8, 1)).astype("float32")
    labels = (images[:, :4].mean(axis=(1, 2, 3)) > images[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
    labels += 2 * (images[:, :, :4].mean(axis=(1, 2, 3)) > 0)
    return images, labels


def base_weights(seed=0):
    keras.utils.set_random_seed(seed)
    return with_statistics(make_base(), seed)


def test_each_epoch_reads_every_sample_once_in_the_order_of_seed_and_epoch(data):
    images, labels = data
    batches = ArrayBatches(images, labels, 16, 4, seed=5)
    assert len(batches) == 3 and batches.num_batches == 3
    orders = []
    for epoch in (0, 1, 0):
        batches.epoch = epoch
        read = [batches[index] for index in range(3)]
        assert [len(x) for x, _ in read] == [16, 16, 12]
        order = np.random.default_rng([5, epoch]).permutation(44)
        np.testing.assert_array_equal(np.concatenate([x for x, _ in read]), images[order])
        np.testing.assert_array_equal(np.concatenate([y for _, y in read]), np.eye(4, dtype="float32")[labels[order]])
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    kept = ArrayBatches(images, np.eye(4, dtype="float32")[labels], 16, 4, seed=5, shuffle=False)
    np.testing.assert_array_equal(kept[2][0], images[32:])
    np.testing.assert_array_equal(kept[2][1].argmax(axis=1), labels[32:])
    with pytest.raises(IndexError):
        kept[3]


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((4, 2, 2, 1)), np.zeros(3, "int32"), r"one label per image. Received: arrays of shapes \[\(4, 2, 2, 1\), \(3,\)\]"),
        (np.zeros((0, 2, 2, 1)), np.zeros(0, "int32"), "holds no sample"),
        (np.zeros((2, 2, 2, 1)), np.array([0, 4]), r"class ids must be in \[0, 4\)"),
        (np.zeros((2, 2, 2, 1)), np.zeros((2, 3), "float32"), r"one-hot rows of 4 classes. Received: labels of dtype float32 and shape \(2, 3\)"),
        (np.zeros((2, 2, 2, 1)), np.zeros(2, "float32"), "integer class ids or one-hot rows"),
    ],
)
def test_bad_arrays_are_refused_naming_the_argument(images, labels, message):
    with pytest.raises(ValueError, match=message):
        ArrayBatches(images, labels, 2, 4, argument="validation_data")


def test_bad_batch_size_and_seed_are_refused(data):
    with pytest.raises(ValueError, match="batch_size"):
        ArrayBatches(*data, 0, 4)
    with pytest.raises(TypeError, match="seed=1.5"):
        ArrayBatches(*data, 8, 4, seed=1.5)


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
