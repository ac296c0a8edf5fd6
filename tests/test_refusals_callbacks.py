"""Bad arguments and non-finite values given to the callbacks and `update_batchnorm`: refused, last good weights kept."""

import math
import os

import keras
import numpy as np
import pytest
from conftest import make_base, with_statistics

from keras_finetune.callbacks import SWA, CosineAnnealing, LRFinder, ProgressiveUnfreezing, StepLR, StopMixing, update_batchnorm
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUp

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: StepLR(1, gamma=math.inf), ValueError, "gamma=inf"),
        (lambda: CosineAnnealing(3, eta_min=math.inf), ValueError, "eta_min=inf"),
        (lambda: CosineAnnealing(3, warmup_epochs=5), ValueError, "warmup_epochs=5, t_max=3"),
        (lambda: LRFinder(max_lr=math.inf), ValueError, "max_lr=inf"),
        (lambda: LRFinder(min_lr=math.nan), ValueError, "min_lr=nan"),
        (lambda: LRFinder(smoothing="0.9"), TypeError, "smoothing='0.9'"),
        (lambda: SWA(0, swa_lr=math.inf), ValueError, "swa_lr=inf"),
        (lambda: ProgressiveUnfreezing(make_base(), {0: 0, 1: "all"}, {0: 1e-3, 1: math.inf}), ValueError, "inf"),
        (lambda: update_batchnorm(make_base(), None), TypeError, "Received: data=None"),
    ],
)
def test_bad_arguments_name_themselves(make, error, message):
    with pytest.raises(error, match=message):
        make()


def classifier():
    keras.utils.set_random_seed(0)
    model = build_classifier(with_statistics(make_base()), 3, hidden_units=(), dropout=0.0)
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    return model


def statistics(model):
    return [np.array(v.numpy()) for v in model.weights if "moving" in v.path]


def test_update_batchnorm_refuses_nan_statistics_names_the_layers_and_keeps_the_old_ones(images):
    model = classifier()
    for layer in model.get_layer("base").layers:
        layer.trainable = True
    before = statistics(model)
    poisoned = images.copy()
    poisoned[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite statistics for \['bn0', 'bn1'\].*keep their statistics"):
        update_batchnorm(model, poisoned, batch_size=8)
    for old, new in zip(before, statistics(model)):
        np.testing.assert_array_equal(old, new)


def test_swa_leaves_non_finite_weights_out_of_the_average_and_puts_the_good_average_in(images, int_labels):
    class Poison(keras.callbacks.Callback):  # a step that blew up at the end of epoch 3
        def on_epoch_end(self, epoch, logs=None):
            self.ends = getattr(self, "ends", []) + [[np.array(v.numpy()) for v in self.model.weights]]
            if epoch == 3:
                self.model.weights[0].assign(np.full(self.model.weights[0].shape, np.nan, "float32"))

    model, poison = classifier(), Poison()
    with pytest.warns(UserWarning, match=r"left the weights at the end of epoch 3 out.*keeps the 2 sets"):
        model.fit(images, int_labels, batch_size=8, epochs=4, shuffle=False, verbose=0,
                  callbacks=[poison, SWA(1), keras.callbacks.TerminateOnNaN()])
    expected = [np.mean(np.stack(weights), axis=0) for weights in zip(*poison.ends[1:3])]
    for variable, value in zip(model.weights, expected):
        if "float" in str(variable.dtype):
            np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7, err_msg=variable.path)
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_swa_refuses_nan_statistics_from_its_bn_data(images, int_labels):
    poisoned = images.copy()
    poisoned[0] = np.nan
    model = classifier()
    for layer in model.get_layer("base").layers:
        layer.trainable = True
    with pytest.raises(ValueError, match="NaN or infinite statistics for"):
        model.fit(images, int_labels, batch_size=8, epochs=2, verbose=0, callbacks=[SWA(0, bn_data=poisoned)])
    assert all(np.isfinite(v.numpy()).all() for v in model.weights)


def test_stop_mixing_refuses_a_layer_the_pipeline_does_not_use(images, int_labels):
    import tensorflow as tf

    model = build_classifier(make_base(), 3, hidden_units=(), dropout=0.0)
    model.compile("adam", "categorical_crossentropy")
    used, other = MixUp(num_classes=3, seed=0), MixUp(num_classes=3, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices((images, int_labels)).batch(8).map(used)
    with pytest.raises(ValueError, match=r"never called: \['" + other.name + r"'\]"):
        model.fit(dataset, epochs=3, verbose=0, callbacks=[StopMixing(other, 1)])
    history = model.fit(dataset, epochs=3, verbose=0, callbacks=[StopMixing(used, 1)])
    assert history.history["mixing"] == [1.0, 0.0, 0.0]


def test_swa_resumes_from_the_newest_whole_state_a_kill_left_and_ignores_a_cut_one(images, int_labels, tmp_path):
    def run(callbacks, epochs=5):
        model = classifier()
        model.fit(images, int_labels, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                raise RuntimeError("interrupted")

    reference = run([SWA(1)])
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(backup), SWA(1, backup_dir=backup), Interrupt()])
    # A kill between SWA's two renames: the state of epoch 2 is still named partial, epoch 1's is the previous one,
    # and swa_state.npz is gone.
    os.replace(os.path.join(backup, "swa_state.npz"), os.path.join(backup, "swa_state.partial.npz"))
    resumed = run([keras.callbacks.BackupAndRestore(backup), SWA(1, backup_dir=backup)])
    for mine, theirs in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)

    # A kill while the partial file was written leaves it cut short: the whole state beside it serves.
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(backup), SWA(1, backup_dir=backup), Interrupt()])
    with open(os.path.join(backup, "swa_state.partial.npz"), "wb") as cut:
        cut.write(b"PK\x03\x04 half a zip")
    resumed = run([keras.callbacks.BackupAndRestore(backup), SWA(1, backup_dir=backup)])
    for mine, theirs in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)
