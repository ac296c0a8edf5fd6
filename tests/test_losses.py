import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_finetune.losses import (
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
    smooth_labels,
)

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

K = 4


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, K)).astype("float32")
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = np.array([0, 3, 1, 2, 3, 0], dtype="int32")
    return logits, probabilities, labels


def numpy_smooth(labels, epsilon, mode):
    one_hot = np.eye(K, dtype="float32")[labels]
    if mode == "uniform":
        return one_hot * (1 - epsilon) + epsilon / K
    return np.where(one_hot == 1, 1 - epsilon, epsilon / (K - 1))


def numpy_crossentropy(targets, probabilities):
    return float(np.mean(-np.sum(targets * np.log(probabilities), axis=-1)))


def test_smooth_labels_uniform_and_others_on_integer_labels():
    uniform = ops.convert_to_numpy(smooth_labels([0, 2], 0.2, num_classes=4))
    np.testing.assert_allclose(uniform[0], [0.85, 0.05, 0.05, 0.05], rtol=1e-6)
    others = ops.convert_to_numpy(smooth_labels([0, 2], 0.3, num_classes=4, mode="others"))
    np.testing.assert_allclose(others[1], [0.1, 0.1, 0.7, 0.1], rtol=1e-6)


def test_smooth_labels_gives_the_same_result_for_one_hot_and_integer_labels(batch):
    _, _, labels = batch
    for mode in ("uniform", "others"):
        from_ints = smooth_labels(labels, 0.1, num_classes=K, mode=mode)
        from_one_hot = smooth_labels(np.eye(K, dtype="float32")[labels], 0.1, mode=mode)
        np.testing.assert_allclose(from_ints, from_one_hot, rtol=1e-6)
        np.testing.assert_allclose(from_ints, numpy_smooth(labels, 0.1, mode), rtol=1e-6)


def test_smooth_labels_keeps_soft_targets_summing_to_one():
    soft = np.array([[0.7, 0.3, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype="float32")
    for mode in ("uniform", "others"):
        smoothed = ops.convert_to_numpy(smooth_labels(soft, 0.2, mode=mode))
        np.testing.assert_allclose(smoothed.sum(-1), 1.0, rtol=1e-6)
    others = ops.convert_to_numpy(smooth_labels(soft, 0.3, mode="others"))
    np.testing.assert_allclose(others[0], 0.7 * soft[0] + 0.1 * (1 - soft[0]), rtol=1e-6)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (([1, 2], 0.1), {}, ValueError, "Received: num_classes=None"),
        (([[0.0, 1.0]], 0.1), {"num_classes": 3}, ValueError, "Received: num_classes=3"),
        (([1], 1.5), {"num_classes": 3}, ValueError, "Received: epsilon=1.5"),
        (([1], -0.1), {"num_classes": 3}, ValueError, "Received: epsilon=-0.1"),
        (([1], "0.1"), {"num_classes": 3}, TypeError, "Received: epsilon='0.1'"),
        (([1], 0.1), {"num_classes": 3, "mode": "timm"}, ValueError, "Received: mode='timm'"),
        (([0], 0.1), {"num_classes": 1, "mode": "others"}, ValueError, "Received: 1 class"),
    ],
)
def test_smooth_labels_rejects_bad_input(args, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        smooth_labels(*args, **kwargs)


@pytest.mark.parametrize("from_logits", [False, True])
def test_uniform_mode_equals_keras_categorical_crossentropy(batch, from_logits):
    logits, probabilities, labels = batch
    predictions = logits if from_logits else probabilities
    one_hot = np.eye(K, dtype="float32")[labels]
    expected = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.2)(
        one_hot, predictions
    )
    ours = CategoricalCrossentropy(label_smoothing=0.2, from_logits=from_logits)(one_hot, predictions)
    sparse = SparseCategoricalCrossentropy(label_smoothing=0.2, from_logits=from_logits)(
        labels, predictions
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    np.testing.assert_allclose(sparse, expected, rtol=1e-6)


def test_others_mode_equals_the_formula_by_hand(batch):
    logits, probabilities, labels = batch
    expected = numpy_crossentropy(numpy_smooth(labels, 0.3, "others"), probabilities)
    one_hot = np.eye(K, dtype="float32")[labels]
    np.testing.assert_allclose(
        CategoricalCrossentropy(0.3, mode="others")(one_hot, probabilities), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        SparseCategoricalCrossentropy(0.3, mode="others", from_logits=True)(labels, logits),
        expected,
        rtol=1e-5,
    )


def test_sparse_without_smoothing_equals_keras_and_accepts_float_column_labels(batch):
    logits, probabilities, labels = batch
    expected = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    column = labels.astype("float32")[:, None]  # how Keras often hands labels over
    np.testing.assert_allclose(SparseCategoricalCrossentropy()(column, probabilities), expected, rtol=1e-6)
    np.testing.assert_allclose(
        SparseCategoricalCrossentropy(0.1)(column, probabilities),
        numpy_crossentropy(numpy_smooth(labels, 0.1, "uniform"), probabilities),
        rtol=1e-5,
    )


def test_sample_weight_weights_each_example(batch):
    _, probabilities, labels = batch
    weights = np.array([1.0, 0.0, 2.0, 0.5, 0.0, 1.0], dtype="float32")
    per_example = -np.sum(numpy_smooth(labels, 0.1, "others") * np.log(probabilities), axis=-1)
    loss = SparseCategoricalCrossentropy(0.1, mode="others")(labels, probabilities, sample_weight=weights)
    np.testing.assert_allclose(loss, np.sum(per_example * weights) / len(labels), rtol=1e-5)


def tiny_model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(K)])


def test_sparse_loss_inside_fit_trains_exactly_like_keras_on_one_hot_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype("float32")
    labels = rng.integers(0, K, size=40).astype("int32")

    ours = tiny_model()
    ours.compile(keras.optimizers.SGD(0.1), SparseCategoricalCrossentropy(0.2, from_logits=True))
    ours_history = ours.fit(x, labels, epochs=3, batch_size=8, shuffle=False, verbose=0)

    reference = tiny_model()
    reference.compile(
        keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    )
    reference_history = reference.fit(x, np.eye(K)[labels], epochs=3, batch_size=8, shuffle=False, verbose=0)

    np.testing.assert_allclose(ours_history.history["loss"], reference_history.history["loss"], rtol=1e-5)
    for a, b in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert ours_history.history["loss"][-1] < ours_history.history["loss"][0]


def test_compiled_losses_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    labels = rng.integers(0, K, size=16).astype("int32")
    for loss, y in [
        (SparseCategoricalCrossentropy(0.2, mode="others", from_logits=True), labels),
        (CategoricalCrossentropy(0.1, mode="others", from_logits=True), np.eye(K)[labels]),
    ]:
        model = tiny_model()
        model.compile("adam", loss)
        model.fit(x, y, epochs=1, verbose=0)
        path = tmp_path / f"{type(loss).__name__}.keras"
        model.save(path)
        reloaded = keras.models.load_model(path)
        assert type(reloaded.loss) is type(loss)
        assert reloaded.loss.get_config() == loss.get_config()
        np.testing.assert_allclose(reloaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)


def test_config_round_trip():
    loss = SparseCategoricalCrossentropy(0.1, mode="others", from_logits=True, reduction="sum", name="smooth")
    config = loss.get_config()
    assert {k: config[k] for k in ("label_smoothing", "mode", "from_logits", "reduction", "name")} == {
        "label_smoothing": 0.1, "mode": "others", "from_logits": True, "reduction": "sum", "name": "smooth",
    }
    assert SparseCategoricalCrossentropy.from_config(config).get_config() == config


def test_losses_reject_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("Received: label_smoothing=2")):
        SparseCategoricalCrossentropy(label_smoothing=2)
    with pytest.raises(ValueError, match=re.escape("Received: mode='keras'")):
        CategoricalCrossentropy(0.1, mode="keras")
