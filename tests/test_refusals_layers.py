"""Bad arguments and data given to the pipeline layers: refused at the call, never mixed or cropped wrongly."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_finetune.layers import CutMix, MixUp, MixUpOrCutMix, PixelRange, RandomResizedCrop, image_augmentation

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (16, 8, 8, 3)).astype("float32")
IDS = np.arange(16) % 3


@pytest.mark.parametrize("layer", [CutMix(num_classes=3, data_format="channels_first"), MixUp(num_classes=3, data_format="channels_first")])
def test_mixing_refuses_channels_last_images_called_channels_first(layer):
    with pytest.raises(ValueError, match=r"look channels-last.*Received: images of shape \(16, 8, 8, 3\)"):
        layer(IMAGES, IDS)


def test_crop_refuses_channels_last_images_called_channels_first():
    # It used to return (16, 8, 8, 8): 8 "channels" of 8x3 pixels.
    with pytest.raises(ValueError, match=r"look channels-last.*\(16, 8, 8, 3\)"):
        RandomResizedCrop(8, 8, data_format="channels_first")(IMAGES, training=True)


@pytest.mark.parametrize("layer", [MixUp(), CutMix(), MixUpOrCutMix()])
def test_float_class_ids_in_one_column_are_refused_not_blended_as_one_class(layer):
    with pytest.raises(ValueError, match=r"one float column is class ids.*shape \(16, 1\)"):
        layer(IMAGES, IDS[:, None].astype("float32"))


def test_mixing_stops_on_ids_outside_the_classes_in_a_tf_data_map():
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, IDS + 1)).batch(8).map(MixUp(num_classes=3, seed=0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids must be in \[0, 3\); ids 1..3 need `labels - 1`"):
        list(dataset)


def test_a_small_alpha_mixes_little_as_beta_says():
    # keras.random.beta(1e-3, 1e-3) gave exactly 0.5 for most samples: the most mixing, not the least.
    layer = MixUp(alpha=1e-3, num_classes=3, seed=0)
    lam = np.asarray(layer._beta(4000, 1e-3))
    assert np.mean(np.minimum(lam, 1 - lam) < 1e-3) > 0.99
    assert 0.45 < np.mean(lam > 0.5) < 0.55  # symmetric
    moderate = np.asarray(layer._beta(4000, 0.4))
    assert stats.kstest(moderate, stats.beta(0.4, 0.4).cdf).pvalue > 0.01


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: MixUp(alpha=float("inf")), ValueError, "alpha=inf"),
        (lambda: MixUp(label_smoothing=1.0), ValueError, "label_smoothing=1.0"),
        (lambda: CutMix(alpha="1"), TypeError, "alpha='1'"),
        (lambda: MixUpOrCutMix(switch_prob=1.5), ValueError, "switch_prob=1.5"),
        (lambda: MixUpOrCutMix(prob=float("nan")), ValueError, "prob=nan"),
        (lambda: RandomResizedCrop(8, 8, scale=(0.9, 0.1)), ValueError, r"scale=\(0.9, 0.1\)"),
        (lambda: RandomResizedCrop(8, 8, ratio=(0.75, float("inf"))), ValueError, r"ratio=\(0.75, inf\)"),
        (lambda: image_augmentation(value_range=(255, 0)), ValueError, r"value_range=\(255, 0\)"),
        (lambda: image_augmentation(rotation=float("inf")), ValueError, "rotation=inf"),
        (lambda: image_augmentation(brightness="0.2"), TypeError, "brightness='0.2'"),
    ],
)
def test_bad_arguments_name_themselves(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_augmentation_refuses_images_in_zero_one_with_its_default_range():
    augment = image_augmentation(seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"look scaled to \[0, 1\].*pass value_range=\(0, 1\)"):
        augment(IMAGES / 255.0, training=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside value_range=\(0.0, 1.0\)"):
        image_augmentation(value_range=(0, 1), seed=0)(IMAGES, training=True)
    # The right range is taken, and the brightness shift stays within it.
    out = np.asarray(image_augmentation(value_range=(0, 1), seed=0)(IMAGES / 255.0, training=True))
    assert out.min() >= 0.0 and out.max() <= 1.0
    # An all-black batch is no evidence of [0, 1] images.
    np.testing.assert_array_equal(PixelRange((0, 255))(np.zeros((2, 4, 4, 3), "float32")), 0.0)


def test_augmentation_refuses_channels_last_images_called_channels_first():
    with pytest.raises(ValueError, match=r"image_augmentation has data_format='channels_first'.*\(16, 8, 8, 3\)"):
        image_augmentation(data_format="channels_first", seed=0)(IMAGES, training=True)


def test_pixel_range_is_only_there_when_a_colour_layer_reads_the_range():
    kinds = [type(layer).__name__ for layer in image_augmentation(brightness=None, contrast=None, saturation=None, hue=None).layers]
    assert "PixelRange" not in kinds
    assert type(image_augmentation().layers[0]).__name__ == "PixelRange"
    restored = PixelRange.from_config(PixelRange((0, 1), data_format="channels_first").get_config())
    assert (restored.value_range, restored.data_format) == ((0.0, 1.0), "channels_first")
