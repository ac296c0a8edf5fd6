import sys

import keras
import numpy as np
import pytest

from keras_finetune.backbones import image_classifier, load_backbone, preprocessing_layer
from keras_finetune.freezing import batchnorm_layers, unfreeze, untrained_batchnorm
from keras_finetune.pretrained import load_base


def preprocess_input(name):
    return sys.modules[getattr(keras.applications, name).__module__].preprocess_input


@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "DenseNet121", "VGG16"])
def test_the_layer_equals_preprocess_input(name):
    """caffe (BGR, mean subtracted), tf ([-1, 1]) and torch (ImageNet mean and deviation) modes."""
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, 3)).astype("float32")
    layer = preprocessing_layer(preprocess_input(name))
    np.testing.assert_allclose(layer(pixels), preprocess_input(name)(pixels.copy()), atol=1e-4)
    assert not layer.trainable


def test_an_identity_gives_no_layer_and_a_nonlinear_function_is_refused():
    assert preprocessing_layer(preprocess_input("EfficientNetB0")) is None
    with pytest.raises(ValueError, match="not affine per pixel"):
        preprocessing_layer(np.sqrt)


@pytest.mark.parametrize("arguments, message", [
    (("ResNet51", 32, None), "--backbone must be one of the shipped glyphs, keras.applications' ConvNeXtBase"),
    (("glyphs", None, "imagenet"), "--weights for the shipped glyphs base must be pretrained (its own) or none. Received: 'imagenet'"),
    (("MobileNetV3Small", 16, None), "MobileNetV3Small refuses --image-size 16: Input size must be at least 32x32"),
    (("MobileNetV3Small", 32, "missing.weights.h5"), "--weights must be pretrained (imagenet), none or a weights file. Received: 'missing.weights.h5'"),
    (("nowhere/base.keras", 32, None), "--backbone must be a .keras file. Received: 'nowhere/base.keras' (no such file)"),
])
def test_bad_backbones_are_refused_by_name(arguments, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_backbone(*arguments)


def test_a_failed_imagenet_download_says_what_to_do(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ConnectionError, match="needs network access; .* pass --weights PATH"):
        load_backbone("MobileNetV3Small", 32, "imagenet")


def test_a_local_weights_file_is_loaded(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "notop.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    base, preprocess = load_backbone("MobileNetV3Small", 32, path)
    assert preprocess is None  # MobileNetV3 rescales inside the model
    for mine, theirs in zip(base.weights, source.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_the_classifier_takes_raw_pixels_and_keeps_its_preprocessing_frozen(tmp_path):
    model, base = image_classifier("MobileNetV2", 3, 32, None, head={"dropout": 0.0})
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    features = base(preprocess_input("MobileNetV2")(pixels.copy()), training=False)
    classifier = model.get_layer(f"{base.name}_classifier")
    np.testing.assert_allclose(model(pixels), classifier(model.get_layer("preprocess")(pixels)), rtol=1e-5)
    np.testing.assert_allclose(base(model.get_layer("preprocess")(pixels)), features, rtol=1e-4, atol=1e-5)
    unfreeze(base)
    assert not model.get_layer("preprocess").trainable
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(pixels), model(pixels), rtol=1e-5)


def test_the_shipped_glyphs_base_takes_grey_pixels_in_0_255_at_its_size_or_another():
    model, base = image_classifier("glyphs", 3)
    assert model.input_shape == (None, 8, 8, 1) and base.name == "glyphs"
    np.testing.assert_array_equal(base.get_layer("conv1").kernel, load_base().get_layer("conv1").kernel)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(model(pixels), model.layers[-1](pixels / 255), atol=1e-6)
    larger, _ = image_classifier("glyphs", 3, image_size=16)
    assert larger.input_shape == (None, 16, 16, 1)
    fresh, _ = load_backbone("glyphs", weights=None)
    assert len(untrained_batchnorm(fresh)) == len(batchnorm_layers(fresh)) == 4
