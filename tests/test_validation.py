"""The package's one validation layer: each check names the argument and the value received."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune import validation

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: validation.check_positive(math.inf, "learning_rate"), ValueError, "learning_rate=inf"),
        (lambda: validation.check_positive(math.nan, "gamma"), ValueError, "gamma=nan"),
        (lambda: validation.check_positive(0.0, "gamma"), ValueError, "> 0. Received: gamma=0.0"),
        (lambda: validation.check_positive("1e-3", "learning_rate"), TypeError, "learning_rate='1e-3'"),
        (lambda: validation.check_positive(True, "learning_rate"), TypeError, "learning_rate=True"),
        (lambda: validation.check_fraction(1.0, "label_smoothing", below_one=True), ValueError, r"\[0, 1\). Received: label_smoothing=1.0"),
        (lambda: validation.check_fraction(-0.1, "prob"), ValueError, r"\[0, 1\]. Received: prob=-0.1"),
        (lambda: validation.check_number(-1, "eta_min", 0.0), ValueError, ">= 0. Received: eta_min=-1"),
        (lambda: validation.check_bool("False", "from_logits"), TypeError, "from_logits='False'"),
        (lambda: validation.check_bool(1, "from_logits"), TypeError, "from_logits=1"),
        (lambda: validation.check_count(2.0, "epochs", 1), ValueError, "epochs=2.0"),
        (lambda: validation.check_pair((255, 0), "value_range", strict=True), ValueError, r"min < max. Received: value_range=\(255, 0\)"),
        (lambda: validation.check_pair((0, 0), "value_range", strict=True), ValueError, r"value_range=\(0, 0\)"),
        (lambda: validation.check_pair((0.0, math.inf), "value_range"), ValueError, r"value_range=\(0.0, inf\)"),
        (lambda: validation.check_pair((0.9, 0.1), "scale", 0.0, 1.0, open_low=True), ValueError, r"within \(0, 1\]"),
        (lambda: validation.check_pair(0.5, "scale"), ValueError, "pair. Received: scale=0.5"),
        (lambda: validation.check_pair(("0", 1), "scale"), TypeError, r"scale=\('0', 1\)"),
        (lambda: validation.check_data_format("NHWC"), ValueError, "data_format='NHWC'"),
        (lambda: validation.check_not_empty(tf.data.Dataset.range(0), "train_data"), ValueError, "`train_data` holds no sample"),
        (lambda: validation.check_not_empty((np.zeros((0, 2)), np.zeros(0)), "x"), ValueError, "`x` holds no sample"),
    ],
)
def test_a_bad_value_raises_with_the_argument_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_good_values_come_back_as_python_numbers():
    assert validation.check_positive(np.float32(0.5), "lr") == 0.5
    assert type(validation.check_positive(np.float32(0.5), "lr")) is float
    assert validation.check_fraction(0, "p") == 0.0
    assert validation.check_bool(np.bool_(False), "flag") is False
    assert validation.check_pair([0, 255], "value_range", strict=True) == (0.0, 255.0)
    assert validation.check_count(np.int64(3), "epochs", 1) == 3
    validation.check_not_empty(tf.data.Dataset.range(3).filter(lambda x: x > 5), "data")  # unknown length passes


def test_channel_axis_refuses_images_whose_channels_are_on_the_other_axis():
    with pytest.raises(ValueError, match=r"look channels-last.*data_format='channels_last'.*\(16, 8, 8, 3\)"):
        validation.check_channel_axis((16, 8, 8, 3), "channels_first", "CutMix")
    with pytest.raises(ValueError, match=r"look channels-first.*\(16, 3, 8, 8\)"):
        validation.check_channel_axis((16, 3, 8, 8), "channels_last", "CutMix")
    # Agreeing formats, multispectral images (13 channels) and unknown sizes pass.
    for shape, data_format in [((16, 8, 8, 3), "channels_last"), ((16, 3, 8, 8), "channels_first"),
                               ((2, 64, 64, 13), "channels_last"), ((None, None, None, 3), "channels_first")]:
        validation.check_channel_axis(shape, data_format, "CutMix")


@pytest.mark.tensorflow_only("TensorFlow's in-graph asserts")
def test_class_ids_pass_good_ids_and_stop_the_graph_on_bad_ones():
    np.testing.assert_array_equal(validation.class_ids(np.array([0, 2, 1]), 3), [0, 2, 1])
    np.testing.assert_array_equal(validation.class_ids(np.array([0.0, 2.0]), 3), [0, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"in \[0, 3\); ids 1..3 need `labels - 1`"):
        validation.class_ids(np.array([1, 2, 3]), 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"in \[0, 3\)"):
        validation.class_ids(np.array([-1, 0]), 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole numbers"):
        validation.class_ids(np.array([1.7]), 3)
    with pytest.raises(TypeError, match="dtype string"):
        validation.class_ids(np.array(["cat"]), 3)
    # Inside a tf.data map the check runs on every batch.
    dataset = tf.data.Dataset.from_tensor_slices(np.array([0, 1, 2, 5])).batch(2).map(lambda y: validation.class_ids(y, 3))
    iterator = iter(dataset)
    np.testing.assert_array_equal(next(iterator), [0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="class ids must be in"):
        next(iterator)


def test_output_activation_reads_the_last_layer_through_nested_models():
    inputs = keras.Input((4,))
    logits = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    probabilities = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(inputs)))
    outer = keras.Sequential([keras.Input((4,)), probabilities])
    assert validation.output_activation(logits) == "linear" and not validation.ends_in_softmax(logits)
    assert validation.output_activation(probabilities) == "softmax" and validation.ends_in_softmax(outer)
    sigmoid = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(inputs))
    assert validation.output_activation(sigmoid) == "sigmoid"


def test_class_ids_stop_bad_ids_on_every_backend():
    """On TensorFlow an in-graph assert, on JAX and PyTorch a ValueError when the values are concrete."""
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(validation.class_ids(np.array([0.0, 2.0]), 3)), [0, 2])
    for labels, message in (([0, 3], r"class ids must be in \[0, 3\)"), ([0.5, 1.0], "whole numbers")):
        with pytest.raises(Exception, match=message) as raised:
            keras.ops.convert_to_numpy(validation.class_ids(keras.ops.convert_to_tensor(np.array(labels)), 3))
        assert type(raised.value).__name__ in ("InvalidArgumentError", "ValueError")
