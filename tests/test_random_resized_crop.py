import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_finetune.layers import RandomResizedCrop
from conftest import dtype_of, numpy

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def ramp(batch=2, height=12, width=16, channels=1):
    """Pixel (y, x) of image b holds 100·b + 3y + x: bilinear resizing reproduces it exactly."""
    b, y, x = np.meshgrid(np.arange(batch), np.arange(height), np.arange(width), indexing="ij")
    values = (100 * b + 3 * y + x).astype("float32")
    return np.repeat(values[..., None], channels, axis=-1)


def test_injected_box_of_the_output_size_is_an_exact_slice():
    images = ramp(batch=3, channels=2)
    boxes = np.array([[0, 0, 5, 7], [7, 9, 5, 7], [3, 4, 5, 7]], "int32")  # y, x, h, w
    out = numpy(RandomResizedCrop(5, 7).transform(images, boxes))
    for i, (y, x, h, w) in enumerate(boxes):
        np.testing.assert_allclose(out[i], images[i, y : y + h, x : x + w], atol=1e-4)


def test_injected_box_is_resized_bilinearly_corner_to_corner():
    images = ramp(batch=1)
    y, x, h, w = 2, 3, 9, 11
    out = numpy(RandomResizedCrop(4, 6).transform(images, np.array([[y, x, h, w]], "int32")))[0, ..., 0]
    rows = y + np.arange(4) * (h - 1) / 3
    cols = x + np.arange(6) * (w - 1) / 5
    np.testing.assert_allclose(out, 3 * rows[:, None] + cols[None, :], atol=1e-3)


def test_random_boxes_lie_inside_and_follow_scale_and_ratio():
    layer = RandomResizedCrop(8, 8, scale=(0.1, 0.5), ratio=(0.5, 2.0), seed=0)
    images = keras.ops.zeros((3000, 1000, 1000, 0))  # only the shape is read: no channels, no memory
    boxes = numpy(layer.get_random_transformation(images)["boxes"])
    y, x, h, w = boxes.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 1000).all() and (x + w <= 1000).all()
    # Every candidate fits at these settings, so area and log-ratio keep their uniform laws.
    area = h * w / 1e6
    assert stats.kstest(area, stats.uniform(0.1, 0.4).cdf).pvalue > 0.001
    log_ratio = np.log(w / h)
    assert stats.kstest(log_ratio, stats.uniform(math.log(0.5), math.log(4.0)).cdf).pvalue > 0.001
    # Positions are uniform over the room left: the box centre's relative place.
    place = y / np.maximum(1000 - h, 1)
    assert stats.kstest(place, stats.uniform(0, 1).cdf).pvalue > 0.001


def test_centre_crop_fallback_when_no_box_fits():
    layer = RandomResizedCrop(4, 4, scale=(0.9, 1.0), seed=1)
    boxes = numpy(layer.get_random_transformation(keras.ops.zeros((5, 4, 100, 1)))["boxes"])
    # Widest allowed ratio 4/3 on a 4-pixel height: 4 × 5 at the centre.
    np.testing.assert_array_equal(boxes, [[0, 47, 4, 5]] * 5)


def test_inference_is_identity_at_the_output_size_and_a_centre_crop_otherwise():
    images = ramp(batch=2, height=12, width=16)
    np.testing.assert_array_equal(RandomResizedCrop(12, 16)(images, training=False), images)
    out = numpy(RandomResizedCrop(6, 6)(images, training=False))
    # Centre 12 × 12 square (columns 2..13), resized corner to corner.
    rows = np.arange(6) * 11 / 5
    cols = 2 + np.arange(6) * 11 / 5
    np.testing.assert_allclose(out[1, ..., 0], 100 + 3 * rows[:, None] + cols[None, :], atol=1e-3)


def test_training_output_comes_from_inside_the_image():
    images = ramp(batch=4, height=20, width=30)
    out = numpy(RandomResizedCrop(10, 10, seed=2)(images))
    assert out.shape == (4, 10, 10, 1)
    for i in range(4):
        assert images[i].min() - 1e-3 <= out[i].min() and out[i].max() <= images[i].max() + 1e-3
    # Different images get different boxes.
    assert len({tuple(np.round(out[i, 0, :2, 0] - 100 * i, 3)) for i in range(4)}) > 1


def test_one_crop_and_resize_for_the_whole_batch_in_a_tf_data_map():
    layer = RandomResizedCrop(8, 8, seed=3)
    dataset = tf.data.Dataset.from_tensor_slices((ramp(batch=6, height=16, width=16), np.arange(6)))
    dataset = dataset.batch(3).map(lambda x, y: (layer(x), y))
    assert dataset.element_spec[0].shape.as_list() == [None, 8, 8, 1]
    assert sum(1 for _ in dataset) == 2
    graph = tf.function(lambda x: layer(x)).get_concrete_function(tf.TensorSpec((None, 16, 16, 1))).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("CropAndResize") == 1
    assert "While" not in kinds and "StatelessWhile" not in kinds


def test_single_image_channels_first_and_dtypes():
    images = ramp(batch=2, height=10, width=10, channels=3)
    assert RandomResizedCrop(5, 6, seed=0)(images[0]).shape == (5, 6, 3)
    first = RandomResizedCrop(5, 6, data_format="channels_first", seed=0)(images.transpose(0, 3, 1, 2))
    assert first.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(
        RandomResizedCrop(10, 10, data_format="channels_first")(images.transpose(0, 3, 1, 2), training=False),
        images.transpose(0, 3, 1, 2),
    )
    assert dtype_of(RandomResizedCrop(5, 5)(images.astype("uint8"))) == "float32"
    assert dtype_of(RandomResizedCrop(5, 5)(images.astype("float16"))) == "float16"
    out = RandomResizedCrop(5, 5)({"images": images, "labels": np.arange(2)})
    assert out["images"].shape == (2, 5, 5, 3)
    np.testing.assert_array_equal(out["labels"], [0, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 0, "width": 4}, "height=0"),
        ({"height": 4, "width": 2.5}, "width=2.5"),
        ({"height": 4, "width": 4, "scale": (0.5, 0.2)}, r"scale=\(0.5, 0.2\)"),
        ({"height": 4, "width": 4, "scale": (0.0, 1.0)}, r"scale=\(0.0, 1.0\)"),
        ({"height": 4, "width": 4, "scale": (0.5, 1.5)}, r"scale=\(0.5, 1.5\)"),
        ({"height": 4, "width": 4, "ratio": (2.0, 1.0)}, r"ratio=\(2.0, 1.0\)"),
        ({"height": 4, "width": 4, "ratio": 1.0}, "ratio=1.0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomResizedCrop(**kwargs)


def test_bad_rank():
    with pytest.raises(ValueError, match=r"images of shape \(4, 4\)"):
        RandomResizedCrop(2, 2)(np.zeros((4, 4), "float32"))


def test_config_round_trip_and_saved_model(tmp_path):
    layer = RandomResizedCrop(6, 5, scale=(0.2, 0.9), ratio=(0.5, 1.5), seed=4)
    config = layer.get_config()
    assert RandomResizedCrop.from_config(config).get_config() == config
    inputs = keras.Input((12, 16, 1))
    model = keras.Model(inputs, keras.layers.Flatten()(RandomResizedCrop(6, 5, seed=4)(inputs)))
    path = str(tmp_path / "crop.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    images = ramp(batch=2)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert loaded.layers[1].get_config() == model.layers[1].get_config()
