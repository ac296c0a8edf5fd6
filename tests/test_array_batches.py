"""`ArrayBatches`: the `PyDataset` arrays become where TensorFlow is missing (`fine_tune` on it: test_recipe.py)."""

import numpy as np
import pytest

from keras_finetune.array_batches import ArrayBatches


@pytest.fixture
def data():
    """44 distinct images (image i holds the number i) and their class ids."""
    return np.arange(44, dtype="float32").reshape(44, 1, 1, 1) * np.ones((1, 2, 2, 1), "float32"), np.arange(44) % 4


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
