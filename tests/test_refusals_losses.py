"""Bad labels and arguments given to the losses and `smooth_labels`: refused, never a quiet wrong loss."""

import numpy as np
import pytest
import tensorflow as tf

from keras_finetune.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy, smooth_labels

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

PROBABILITIES = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], "float32")


@pytest.mark.tensorflow_only("TensorFlow's in-graph asserts (a compiled JAX step cannot see values)")
@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [1, 3]])
def test_sparse_loss_stops_on_ids_outside_the_classes_with_the_one_based_hint(labels):
    # Keras's sparse loss raises "Received a label value of 3" from inside the kernel for 3 (and
    # nothing for -1 under some kernels); ours names the range and the usual cause.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids must be in \[0, 3\); ids 1..3 need `labels - 1`"):
        SparseCategoricalCrossentropy(label_smoothing=0.1)(np.array(labels), PROBABILITIES)


@pytest.mark.tensorflow_only("TensorFlow's in-graph asserts (a compiled JAX step cannot see values)")
def test_sparse_loss_refuses_fractional_float_ids_and_takes_whole_ones():
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole numbers"):
        SparseCategoricalCrossentropy()(np.array([1.7, 0.0]), PROBABILITIES)
    loss = float(SparseCategoricalCrossentropy()(np.array([2.0, 0.0]), PROBABILITIES))
    assert loss == pytest.approx(-(np.log(0.5) + np.log(0.6)) / 2, rel=1e-6)


@pytest.mark.tensorflow_only("TensorFlow's in-graph asserts (a compiled JAX step cannot see values)")
def test_smooth_labels_refuses_out_of_range_ids_and_one_column_floats():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids must be in \[0, 3\)"):
        smooth_labels([5], 0.1, num_classes=3)
    with pytest.raises(ValueError, match=r"class ids must be integers.*shape \(2, 1\)"):
        smooth_labels(np.array([[1.0], [2.0]], "float32"), 0.1)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: SparseCategoricalCrossentropy(label_smoothing=1.0), ValueError, r"\[0, 1\). Received: label_smoothing=1.0"),
        (lambda: CategoricalCrossentropy(label_smoothing=float("inf")), ValueError, "label_smoothing=inf"),
        (lambda: SparseCategoricalCrossentropy(from_logits="no"), TypeError, "from_logits='no'"),
        (lambda: CategoricalCrossentropy(from_logits=1), TypeError, "from_logits=1"),
        (lambda: smooth_labels([0, 1], 1.0, num_classes=2), ValueError, "epsilon=1.0"),
        (lambda: smooth_labels([0, 1], 0.1, num_classes=True), ValueError, "num_classes=True"),
    ],
)
def test_bad_arguments_name_themselves(make, error, message):
    with pytest.raises(error, match=message):
        make()
