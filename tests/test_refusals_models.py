"""Bad arguments and data given to the Distiller and MixingModel, and their export for serving."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_base

from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUp
from keras_finetune.models import Distiller, MixingModel

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(16, 8, 8, 1)).astype("float32")
IDS = np.arange(16) % 3


def distiller(**compile_kwargs):
    keras.utils.set_random_seed(0)
    model = Distiller(build_classifier(make_base("student"), 3), build_classifier(make_base("teacher"), 3))
    model.compile("adam", student_loss_fn="sparse_categorical_crossentropy", **compile_kwargs)
    return model


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"temperature": math.inf}, ValueError, "temperature=inf"),
        ({"temperature": 0}, ValueError, "temperature=0"),
        ({"alpha": 1.5}, ValueError, "alpha=1.5"),
        ({"alpha": "0.5"}, TypeError, "alpha='0.5'"),
    ],
)
def test_distiller_compile_names_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        distiller(**kwargs)


def test_distiller_refuses_empty_data_before_the_first_step():
    # Keras would return a History without a loss.
    empty = tf.data.Dataset.from_tensor_slices((IMAGES, IDS)).batch(4).take(0)
    with pytest.raises(ValueError, match="`x` holds no sample"):
        distiller().fit(empty, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="`validation_data` holds no sample"):
        distiller().fit(IMAGES, IDS, validation_data=(IMAGES[:0], IDS[:0]), epochs=1, verbose=0)


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras 3.15.1's tf_saved_model export fails on PyTorch 2.13 for a plain Sequential too "
    "(torch.export: the structure of `inputs` and `dynamic_shapes` differ)",
)
def test_distiller_and_mixing_model_export_what_serves(tmp_path):
    model = distiller()
    model.fit(IMAGES, IDS, epochs=1, verbose=0)
    model.export(str(tmp_path / "student"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "student"))
    served = loaded.serve(IMAGES)
    np.testing.assert_allclose(served, model.student.predict(IMAGES, verbose=0), rtol=1e-5, atol=1e-6)

    keras.utils.set_random_seed(0)
    mixing = MixingModel(build_classifier(make_base(), 3), MixUp(num_classes=3, seed=0))
    mixing.compile("adam", "categorical_crossentropy")
    mixing.fit(IMAGES, IDS, batch_size=8, epochs=1, verbose=0)
    mixing.export(str(tmp_path / "classifier"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "classifier"))
    served = loaded.serve(IMAGES)
    np.testing.assert_allclose(served, mixing.model.predict(IMAGES, verbose=0), rtol=1e-5, atol=1e-6)
