import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune.callbacks import EpochSeeds
from keras_finetune.callbacks.epoch_seeds import reseed, seed_states


def dropout_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16,)), keras.layers.Dropout(0.5), keras.layers.Dense(1, use_bias=False),
                             keras.layers.Dropout(0.5, seed=7)])


def test_seed_states_lists_each_generator_once_in_layer_order():
    model = dropout_model()
    states = seed_states(model, model.layers[0])  # the first dropout named twice
    assert len(states) == 2
    assert states[0] is model.layers[0].seed_generator.state and states[1] is model.layers[2].seed_generator.state


def test_reseed_sets_seed_plus_index_and_the_epoch_counter():
    states = seed_states(dropout_model())
    reseed(states, 5, 3)
    np.testing.assert_array_equal([s.numpy() for s in states], [[5, 3 * 2**20], [6, 3 * 2**20]])


def test_reseed_inside_a_pipeline_makes_epoch_e_the_same_when_the_pipeline_starts_there():
    flip = keras.layers.RandomTranslation(0.3, 0.3, seed=1)
    states = seed_states(flip)
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[0, 1])

    def epoch_batches(epoch):
        reseed(states, 0, epoch)
        return tf.data.Dataset.from_tensors(images).repeat(2).map(lambda x: flip(x, training=True))

    whole = [x.numpy() for x in tf.data.Dataset.range(3).flat_map(epoch_batches)]
    resumed = [x.numpy() for x in tf.data.Dataset.range(2, 3).flat_map(epoch_batches)]
    np.testing.assert_array_equal(np.stack(whole[4:]), np.stack(resumed))
    assert not np.array_equal(whole[0], whole[2]) and not np.array_equal(whole[0], whole[1])


class Masks(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.masks.append(self.model.layers[2].seed_generator.state.numpy().copy())


def test_the_callback_reseeds_at_each_epoch_start_so_a_late_start_draws_the_same_masks():
    x = np.ones((8, 16), "float32")
    y = np.zeros((8, 1), "float32")
    runs = []
    for initial_epoch in (0, 2):
        model = dropout_model()
        model.compile(keras.optimizers.SGD(0.0), "mse")
        model.masks = []
        model.fit(x, y, epochs=4, initial_epoch=initial_epoch, batch_size=4, shuffle=False, verbose=0,
                  callbacks=[EpochSeeds(11), Masks()])
        runs.append(model.masks)
    # two steps an epoch: the counter ends each epoch at epoch * 2**20 + 2
    np.testing.assert_array_equal(runs[0], [[12, e * 2**20 + 2] for e in range(4)])
    np.testing.assert_array_equal(runs[1], runs[0][2:])


def test_a_seed_must_be_an_int():
    with pytest.raises(TypeError, match="Received: seed='0'"):
        EpochSeeds("0")
