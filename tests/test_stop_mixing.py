import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune.callbacks import StopMixing
from keras_finetune.layers import CutMix, MixUp
from keras_finetune.models import MixingModel

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

CLASSES = 16


class MixedFraction(keras.metrics.Mean):
    """Share of targets that are not one-hot (smoothed one-hot rows peak at 1 − ε + ε/K)."""

    def __init__(self, peak=1.0, name="mixed_fraction", **kwargs):
        super().__init__(name=name, **kwargs)
        self.peak = peak

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(keras.ops.cast(keras.ops.max(y_true, axis=-1) < self.peak - 1e-5, "float32"))


def fit(layer, epochs, callbacks, initial_epoch=0, wrap=False, peak=1.0):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(32, 4, 4, 1)).astype("float32")
    labels = np.arange(32, dtype="int32") % CLASSES
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(inputs)))
    if wrap:
        model = MixingModel(model, layer)
    else:
        dataset = dataset.map(layer).prefetch(2)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[MixedFraction(peak)])
    return model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0).history


@pytest.mark.parametrize("wrap", [False, True])
def test_mixing_stops_at_the_named_epoch_in_the_pipeline_and_on_device(wrap):
    layer = MixUp(alpha=1.0, num_classes=CLASSES, seed=0)
    history = fit(layer, 5, [StopMixing(layer, epoch=3)], wrap=wrap)
    mixed = np.array(history["mixed_fraction"])
    assert (mixed[:3] > 0.5).all() and (mixed[3:] == 0).all()
    assert history["mixing"] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_labels_stay_smoothed_after_mixing_stops_and_fraction_epochs():
    layer = CutMix(num_classes=CLASSES, label_smoothing=0.1, seed=1)
    history = fit(layer, 4, [StopMixing([layer], epoch=0.5)], peak=0.9 + 0.1 / CLASSES)
    assert history["mixing"] == [1.0, 1.0, 0.0, 0.0]
    mixed = np.array(history["mixed_fraction"])
    assert (mixed[:2] > 0.3).all() and (mixed[2:] == 0).all()


def test_train_end_restores_the_flag_and_resume_follows_the_epoch():
    layer = MixUp(num_classes=CLASSES)
    callback = StopMixing(layer, epoch=1)
    fit(layer, 2, [callback])
    assert bool(layer.enabled.numpy())
    layer.enabled.assign(False)
    fit(layer, 2, [callback])
    assert not bool(layer.enabled.numpy())
    layer.enabled.assign(True)
    history = fit(layer, 4, [callback], initial_epoch=2)
    assert history["mixing"] == [0.0, 0.0] and history["mixed_fraction"] == [0.0, 0.0]


def test_epoch_begin_sets_the_flag_each_epoch():
    layer = MixUp(num_classes=CLASSES)
    callback = StopMixing(layer, epoch=2)
    callback.set_params({"epochs": 4})
    callback.on_train_begin()
    callback.on_epoch_begin(2)
    assert not bool(layer.enabled.numpy())
    callback.on_epoch_begin(1)
    assert bool(layer.enabled.numpy())


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((keras.layers.RandomFlip(), 2), TypeError, "of type RandomFlip"),
        (([], 2), ValueError, "layers=\\[\\]"),
        ((MixUp(), -1), ValueError, "epoch=-1"),
        ((MixUp(), 1.5), ValueError, "epoch=1.5"),
        ((MixUp(), "last"), ValueError, "epoch='last'"),
    ],
)
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        StopMixing(*args)
