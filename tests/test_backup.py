import json

import keras
import numpy as np
import pytest

from keras_finetune.callbacks import AtomicBackup
from keras_finetune.callbacks.backup import resumed_epoch, write_json

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def model_and_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(0)
    return model, (rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32"))


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("stop")


def test_the_epoch_file_names_complete_weights_and_older_ones_are_deleted(tmp_path):
    model, data = model_and_data()
    with pytest.raises(RuntimeError):
        model.fit(*data, epochs=5, verbose=0, shuffle=False, callbacks=[AtomicBackup(str(tmp_path)), Stop()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-3.weights.h5", "training_metadata.json"]
    assert json.loads((tmp_path / "training_metadata.json").read_text()) == {"epoch": 3, "weights": "epoch-3.weights.h5"}
    assert resumed_epoch(str(tmp_path)) == 3 and resumed_epoch(str(tmp_path / "none")) == 0


def test_a_resume_ignores_weights_the_epoch_file_does_not_name_and_ends_as_the_whole_run(tmp_path):
    whole, data = model_and_data()
    whole.fit(*data, epochs=5, verbose=0, shuffle=False)
    model, _ = model_and_data()
    with pytest.raises(RuntimeError):
        model.fit(*data, epochs=5, verbose=0, shuffle=False, callbacks=[Stop(), AtomicBackup(str(tmp_path))])
    # a kill while the next epoch's weights were written: a newer file, half there, the epoch file unchanged
    (tmp_path / "epoch-4.weights.h5").write_bytes(b"\x89HDF half a file")
    resumed, _ = model_and_data()
    history = resumed.fit(*data, epochs=5, verbose=0, shuffle=False, callbacks=[AtomicBackup(str(tmp_path))])
    assert history.epoch == [2, 3, 4]  # Stop raised at epoch 2's end before its backup: epoch 2 runs again
    for mine, theirs in zip(resumed.weights + resumed.optimizer.variables, whole.weights + whole.optimizer.variables):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert not tmp_path.exists()  # deleted once the run completed


def test_an_unreadable_epoch_file_is_refused_by_name(tmp_path):
    (tmp_path / "training_metadata.json").write_text("")
    with pytest.raises(ValueError, match=f"The backup in {str(tmp_path)!r} is unreadable"):
        resumed_epoch(str(tmp_path))
    write_json(str(tmp_path / "training_metadata.json"), {"epoch": 2})
    assert resumed_epoch(str(tmp_path)) == 2 and not (tmp_path / "training_metadata.json.partial").exists()
