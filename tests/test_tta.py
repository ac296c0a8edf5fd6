"""tta_predict: fastai's blend of the plain prediction and the mean over augmented views, in one pass per batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune import tta_predict
from keras_finetune.layers import RandomResizedCrop

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 1, (10, 6, 6, 2)).astype("float32")


class Count(keras.layers.Layer):
    """Identity that counts the images it sees."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="int32")

    def call(self, x):
        self.seen.assign_add(keras.ops.shape(x)[0])
        return x


def classifier(activation="softmax", count=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = inputs if count is None else count(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, activation=activation)(keras.layers.Flatten()(x)))


class Batches(keras.utils.PyDataset):
    """`(images, labels)` batches of 3: what `tta_predict` draws views of with the backend's ops, not tf.data."""

    def __init__(self, images):
        super().__init__()
        self.images = images

    def __len__(self):
        return -(-len(self.images) // 3)

    def __getitem__(self, index):
        batch = self.images[3 * index : 3 * index + 3]
        return batch, np.zeros(len(batch))


def shift_by_view(n):
    """A deterministic 'augmentation': view k of each image (rows come in groups of n) gets +k.

    Written with TensorFlow's ops, which a tf.data map runs on every backend,
    for a tensor from the pipeline; with Keras's for one from the backend."""
    def shift(batch, training=True):
        if not tf.executing_eagerly():  # inside the tf.data map
            view = tf.cast(tf.range(tf.shape(batch)[0]) % n, batch.dtype)
            return batch + tf.reshape(view, (-1, 1, 1, 1))
        view = np.arange(keras.ops.shape(batch)[0]) % n
        return keras.ops.add(batch, keras.ops.cast(np.reshape(view, (-1, 1, 1, 1)), batch.dtype))
    return shift


@pytest.mark.parametrize("data", ["arrays", "PyDataset"])
@pytest.mark.parametrize("beta", [0.25, 0.0, None, 1.0])
def test_the_output_is_the_blend_of_the_plain_prediction_and_the_mean_over_views(beta, data):
    model, n = classifier(), 4
    views = [IMAGES + k for k in range(n)]
    views = [view[:, :, ::-1] if k % 2 else view for k, view in enumerate(views)]  # every second view flipped
    mean = np.mean([model.predict(view, verbose=0) for view in views], axis=0)
    plain = model.predict(IMAGES, verbose=0)
    expected = mean if not beta else (1 - beta) * mean + beta * plain
    images = IMAGES if data == "arrays" else Batches(IMAGES)
    got = tta_predict(model, images, shift_by_view(n), n=n, beta=beta, batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)


def test_logits_become_probabilities_before_the_average():
    logits, probabilities = classifier(activation=None), classifier()
    got = tta_predict(logits, IMAGES, shift_by_view(3), n=3, flip=False)
    np.testing.assert_allclose(got, tta_predict(probabilities, IMAGES, shift_by_view(3), n=3, flip=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("data", ["arrays", "PyDataset"])
@pytest.mark.parametrize("beta, passes", [(0.25, 9), (None, 8)])
def test_each_batch_costs_n_passes_plus_the_plain_one_and_no_more(beta, passes, data):
    count = Count()
    model = classifier(count=count)
    tta_predict(model, IMAGES if data == "arrays" else Batches(IMAGES), n=8, beta=beta, batch_size=4, seed=0)
    assert int(count.seen.numpy()) == passes * len(IMAGES)


def test_the_default_views_are_seeded_crops_of_the_images_size_and_datasets_work_too():
    model = classifier()
    first = tta_predict(model, IMAGES, n=6, seed=1)
    np.testing.assert_array_equal(first, tta_predict(model, IMAGES, n=6, seed=1))
    assert not np.allclose(first, tta_predict(model, IMAGES, n=6, seed=2))
    assert not np.allclose(first, model.predict(IMAGES, verbose=0))
    labelled = tf.data.Dataset.from_tensor_slices((IMAGES, np.arange(10))).batch(32)
    np.testing.assert_allclose(tta_predict(model, labelled, n=6, seed=1), first, rtol=1e-6)
    # Drawn with the backend's ops, not in tf.data: on TensorFlow the same ops and draws, batch by batch.
    in_threes = tta_predict(model, IMAGES, n=6, seed=1, batch_size=3)
    np.testing.assert_allclose(tta_predict(model, Batches(IMAGES), n=6, seed=1), in_threes, rtol=1e-6)
    crop = RandomResizedCrop(6, 6, scale=(0.5, 1.0), seed=1)
    np.testing.assert_allclose(tta_predict(model, IMAGES, crop, n=6), first, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n": 0}, ValueError, "n=0"),
        ({"beta": 1.5}, ValueError, "beta=1.5"),
        ({"flip": "yes"}, TypeError, "flip='yes'"),
        ({"augmentation": 5}, TypeError, "augmentation=5"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, message):
    with pytest.raises(error, match=message):
        tta_predict(classifier(), IMAGES, **kwargs)


def test_a_model_whose_outputs_cannot_be_read_is_refused():
    with pytest.raises(ValueError, match="ends in 'sigmoid'"):
        tta_predict(classifier(activation="sigmoid"), IMAGES)
    with pytest.raises(TypeError, match="data of type list"):
        tta_predict(classifier(), [IMAGES])
