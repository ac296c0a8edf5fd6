import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune.layers import RandomResizedCrop, image_augmentation
from conftest import numpy

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def kinds(sequential):
    return [type(layer).__name__ for layer in sequential.layers]


def test_default_preset_reuses_keras_layers_with_converted_factors():
    augment = image_augmentation(32, 24, seed=10)
    assert kinds(augment) == [
        "PixelRange", "RandomResizedCrop", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
        "RandomBrightness", "RandomContrast", "RandomSaturation", "RandomHue",
    ]
    pixel_range, crop, flip, rotation, zoom, translation, brightness, contrast, saturation, hue = augment.layers
    assert pixel_range.value_range == (0.0, 255.0)
    assert (crop.height, crop.width, crop.scale, crop.ratio) == (32, 24, (0.08, 1.0), (0.75, 4 / 3))
    assert flip.mode == "horizontal"
    assert rotation.factor == pytest.approx((-30 / 360, 30 / 360))
    assert (zoom.height_lower, zoom.height_upper) == pytest.approx((-0.1, 0.1))
    assert (translation.width_lower, translation.width_upper) == pytest.approx((-0.1, 0.1))
    assert brightness.get_config()["factor"] == pytest.approx((-0.2, 0.2))
    # Contrast factors drawn in [0.8, 1.2], both ways (Keras's single float gives [1, 1.2]).
    drawn = contrast.get_random_transformation(np.zeros((4000, 1, 1, 3), "float32"))["contrast_factor"]
    assert (float(np.min(numpy(drawn))), float(np.max(numpy(drawn)))) == pytest.approx((0.8, 1.2), abs=1e-3)
    # Keras multiplies saturation by f / (1 − f): the range must map to [0.8, 1.2].
    low, high = saturation.factor
    assert (low / (1 - low), high / (1 - high)) == pytest.approx((0.8, 1.2))
    # Keras shifts hue by ±factor/2 of a turn: ±0.2 of a turn.
    assert max(abs(f) for f in hue.factor) / 2 == pytest.approx(0.2)
    # Layer i gets seed + i, so no two draw the same stream.
    assert [layer.seed for layer in augment.layers[1:]] == list(range(10, 19))


def test_each_part_switches_off():
    augment = image_augmentation(flip=None, rotation=None, zoom=0, translation=None, hue=None)
    assert kinds(augment) == ["PixelRange", "RandomBrightness", "RandomContrast", "RandomSaturation"]
    empty = image_augmentation(flip=None, rotation=0, zoom=0, translation=0, brightness=0, contrast=0, saturation=0, hue=0)
    assert kinds(empty) == ["Identity"]
    np.testing.assert_array_equal(empty(np.ones((1, 4, 4, 3), "float32")), np.ones((1, 4, 4, 3)))


def test_training_changes_images_and_inference_leaves_them_without_the_crop():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(4, 20, 20, 3)).astype("float32")
    augment = image_augmentation(seed=1)
    np.testing.assert_allclose(augment(images, training=False), images, atol=1e-3)
    out = numpy(augment(images, training=True))
    assert out.shape == images.shape and not np.allclose(out, images, atol=1.0)
    cropped = image_augmentation(10, 12, seed=1)
    assert cropped(images, training=True).shape == (4, 10, 12, 3)
    assert cropped(images, training=False).shape == (4, 10, 12, 3)


def test_maps_over_a_tf_data_pipeline_and_saves_inside_a_model(tmp_path):
    images = np.random.default_rng(1).uniform(0, 255, size=(6, 16, 16, 3)).astype("float32")
    augment = image_augmentation(8, 8, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(6))).batch(3)
    dataset = dataset.map(lambda x, y: (augment(x), y))
    batches = list(dataset)
    assert [b[0].shape for b in batches] == [(3, 8, 8, 3)] * 2
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(image_augmentation(8, 8, seed=2)(inputs)))
    path = str(tmp_path / "augment.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)
    assert kinds(loaded.layers[1]) == kinds(model.layers[1])
    assert isinstance(loaded.layers[1].layers[1], RandomResizedCrop)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 8}, "height=8, width=None"),
        ({"flip": "diagonal"}, "flip='diagonal'"),
        ({"rotation": 200}, "rotation=200"),
        ({"hue": 0.6}, "hue=0.6"),
        ({"saturation": -0.1}, "saturation=-0.1"),
        ({"height": 8, "width": 8, "crop_scale": (0.9, 0.1)}, r"scale=\(0.9, 0.1\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        image_augmentation(**kwargs)
