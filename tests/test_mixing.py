import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_finetune.layers import CutMix, MixUp, MixUpOrCutMix
from conftest import dtype_of, numpy

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

MIXERS = [
    lambda **kw: MixUp(alpha=1.0, **kw),
    lambda **kw: CutMix(alpha=1.0, **kw),
    lambda **kw: MixUpOrCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, **kw),
]


def indexed_batch(batch_size, height=6, width=5, channels=3, channels_first=False):
    """Sample i is filled with the value i and labelled class i (one-hot over batch_size classes)."""
    values = np.arange(batch_size, dtype="float32")
    shape = (batch_size, channels, height, width) if channels_first else (batch_size, height, width, channels)
    images = np.broadcast_to(values[:, None, None, None], shape).copy()
    return images, np.arange(batch_size, dtype="int32")


def as_numpy(pair):
    return tuple(np.asarray(keras.ops.convert_to_numpy(t)) for t in pair)


# Exact results with injected random parameters


def test_mixup_exact_with_injected_parameters():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 3, 5, 2)).astype("float32")
    labels = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
    lam = np.array([0.1, 0.5, 0.9, 1.0], "float32")
    permutation = np.array([2, 0, 3, 1])
    mixed_images, mixed_labels = as_numpy(
        MixUp().transform(images, labels, {"lam": lam, "permutation": permutation})
    )
    l4 = lam[:, None, None, None]
    np.testing.assert_allclose(mixed_images, l4 * images + (1 - l4) * images[permutation], atol=1e-6)
    np.testing.assert_allclose(
        mixed_labels, lam[:, None] * labels + (1 - lam[:, None]) * labels[permutation], atol=1e-7
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_cutmix_exact_with_injected_boxes(data_format):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 6, 8, 2)).astype("float32")  # channels-last reference
    labels = np.eye(4, dtype="float32")[[0, 1, 3]]
    boxes = np.array([[1, 2, 4, 5], [0, 0, 6, 8], [5, 7, 6, 8]], "int32")  # y1, x1, y2, x2
    permutation = np.array([1, 2, 0])
    expected = images.copy()
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        expected[i, y1:y2, x1:x2] = images[permutation[i], y1:y2, x1:x2]
    kept = 1.0 - np.array([3 * 3, 6 * 8, 1 * 1]) / 48.0
    given = images if data_format == "channels_last" else images.transpose(0, 3, 1, 2)
    mixed_images, mixed_labels = as_numpy(
        CutMix(data_format=data_format).transform(given, labels, {"boxes": boxes, "permutation": permutation})
    )
    if data_format == "channels_first":
        mixed_images = mixed_images.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(mixed_images, expected)
    np.testing.assert_allclose(
        mixed_labels, kept[:, None] * labels + (1 - kept[:, None]) * labels[permutation], atol=1e-7
    )


def test_cutmix_boxes_are_clipped_and_lambda_is_the_area_kept():
    layer = CutMix(alpha=1.0, seed=3)
    images = np.zeros((2000, 10, 7, 1), "float32")
    boxes = keras.ops.convert_to_numpy(layer.get_random_transformation(images)["boxes"])
    y1, x1, y2, x2 = boxes.T
    assert (y1 >= 0).all() and (x1 >= 0).all() and (y2 <= 10).all() and (x2 <= 7).all()
    assert (y2 >= y1).all() and (x2 >= x1).all()
    # Boxes cut by a border exist, so the area correction matters.
    assert ((y1 == 0) | (x1 == 0) | (y2 == 10) | (x2 == 7)).mean() > 0.3
    labels = np.eye(2, dtype="float32")[np.zeros(2000, int)]
    other = np.eye(2, dtype="float32")[np.ones(2000, int)]
    permutation = np.arange(2000)
    both = np.concatenate([labels, other])
    boxes2 = np.concatenate([boxes, boxes])
    perm2 = np.concatenate([permutation + 2000, permutation])
    _, mixed = as_numpy(
        layer.transform(np.zeros((4000, 10, 7, 1), "float32"), both, {"boxes": boxes2, "permutation": perm2})
    )
    area = (y2 - y1) * (x2 - x1) / 70.0
    np.testing.assert_allclose(mixed[:2000, 1], area, atol=1e-6)


def test_mixup_or_cutmix_applies_the_branch_its_flags_name():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(3, 4, 4, 1)).astype("float32")
    labels = np.eye(3, dtype="float32")
    params = {
        "lam": np.array([0.3, 0.6, 0.8], "float32"),
        "boxes": np.array([[0, 0, 2, 2], [1, 1, 4, 4], [0, 0, 4, 4]], "int32"),
        "permutation": np.array([2, 0, 1]),
    }
    layer = MixUpOrCutMix()
    off = as_numpy(layer.transform(images, labels, {**params, "mix": False, "use_cutmix": True}))
    np.testing.assert_array_equal(off[0], images)
    np.testing.assert_array_equal(off[1], labels)
    cut = as_numpy(layer.transform(images, labels, {**params, "mix": True, "use_cutmix": True}))
    reference = as_numpy(CutMix().transform(images, labels, params))
    np.testing.assert_array_equal(cut[0], reference[0])
    np.testing.assert_allclose(cut[1], reference[1])
    mix = as_numpy(layer.transform(images, labels, {**params, "mix": True, "use_cutmix": False}))
    reference = as_numpy(MixUp().transform(images, labels, params))
    np.testing.assert_allclose(mix[0], reference[0], rtol=1e-6)
    np.testing.assert_allclose(mix[1], reference[1], rtol=1e-6)


# Labels, smoothing and pairing


def test_integer_labels_are_smoothed_before_mixing():
    images, labels = indexed_batch(5)
    layer = MixUp(num_classes=5, label_smoothing=0.2, seed=0)
    params = {"lam": np.full(5, 0.25, "float32"), "permutation": np.array([1, 2, 3, 4, 0])}
    smoothed = np.eye(5, dtype="float32") * 0.8 + 0.2 / 5
    expected = 0.25 * smoothed + 0.75 * smoothed[params["permutation"]]
    _, mixed = as_numpy(layer.transform(images, smoothed, params))
    np.testing.assert_allclose(mixed, expected, atol=1e-6)
    # Through call: the same smoothing, and every row a distribution.
    _, called = as_numpy(layer(images, labels))
    np.testing.assert_allclose(called.sum(axis=1), 1.0, atol=1e-6)
    assert called.min() >= 0.2 / 5 - 1e-6


@pytest.mark.parametrize("make", MIXERS)
@pytest.mark.parametrize("batch_size", [1, 7, 16])
def test_every_mixed_label_matches_its_pixel_mixture_through_tf_data(make, batch_size):
    """Sample i carries value i in its pixels and class i in its label; the mixture must agree."""
    images, labels = indexed_batch(3 * batch_size, height=9, width=5)
    layer = make(num_classes=3 * batch_size, seed=4)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).map(layer)
    classes = np.arange(3 * batch_size, dtype="float32")
    mixed_any = False
    for mixed_images, mixed_labels in dataset:
        mixed_images, mixed_labels = mixed_images.numpy(), mixed_labels.numpy()
        np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(mixed_images.mean(axis=(1, 2, 3)), mixed_labels @ classes, atol=1e-4)
        mixed_any |= bool((mixed_labels.max(axis=1) < 1 - 1e-6).any())
    assert mixed_any == (batch_size > 1)


def test_pairing_holds_for_channels_first_cutmix():
    images, labels = indexed_batch(12, height=7, width=4, channels_first=True)
    layer = CutMix(num_classes=12, data_format="channels_first", seed=5)
    mixed_images, mixed_labels = as_numpy(layer(images, labels))
    np.testing.assert_allclose(mixed_images.mean(axis=(1, 2, 3)), mixed_labels @ np.arange(12.0), atol=1e-4)
    # Pixels are copied whole across channels: each pixel is one sample's value.
    assert (mixed_images == mixed_images[:, :1]).all()


def test_one_hot_labels_pass_through_and_dict_form_mixes_the_same():
    images, labels = indexed_batch(6)
    one_hot = np.eye(6, dtype="float32")[labels]
    tuple_out = as_numpy(MixUp(seed=7)(images, one_hot))
    dict_out = MixUp(seed=7)({"images": images, "labels": one_hot, "ids": labels})
    np.testing.assert_array_equal(tuple_out[0], dict_out["images"])
    np.testing.assert_array_equal(tuple_out[1], dict_out["labels"])
    np.testing.assert_array_equal(dict_out["ids"], labels)


def test_labels_of_shape_batch_by_one_are_accepted():
    images, labels = indexed_batch(4)
    _, out = as_numpy(MixUp(num_classes=4)(images, labels[:, None], training=False))
    np.testing.assert_array_equal(out, np.eye(4))


# Statistics of the draws


def test_mixup_lambda_follows_beta():
    layer = MixUp(alpha=0.4, seed=11)
    lam = keras.ops.convert_to_numpy(layer.get_random_transformation(np.zeros((4000, 1, 1, 1)))["lam"])
    assert stats.kstest(lam, stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    # A wrong α is told apart: the test has power.
    assert stats.kstest(lam, stats.beta(0.2, 0.2).cdf).pvalue < 1e-6


def test_permutation_is_a_uniform_random_permutation():
    layer = MixUp(seed=12)
    draws = np.stack(
        [keras.ops.convert_to_numpy(layer.get_random_transformation(np.zeros((5, 1, 1, 1)))["permutation"]) for _ in range(2000)]
    )
    assert (np.sort(draws, axis=1) == np.arange(5)).all()
    # Where sample 0 goes: uniform over the 5 positions.
    counts = np.bincount(draws[:, 0], minlength=5)
    assert stats.chisquare(counts).pvalue > 0.01


def test_mixup_or_cutmix_switch_and_prob_frequencies():
    layer = MixUpOrCutMix(mixup_alpha=0.3, cutmix_alpha=2.0, switch_prob=0.3, prob=0.6, seed=14)
    draws = [layer.get_random_transformation(np.zeros((50, 4, 4, 1))) for _ in range(1500)]
    mix = np.array([bool(d["mix"]) for d in draws])
    cut = np.array([bool(d["use_cutmix"]) for d in draws])
    assert stats.binomtest(mix.sum(), len(mix), 0.6).pvalue > 0.01
    assert stats.binomtest(cut.sum(), len(cut), 0.3).pvalue > 0.01
    # The two draws are independent.
    assert stats.binomtest(cut[~mix].sum(), (~mix).sum(), 0.3).pvalue > 0.01
    lam_cut = np.concatenate([numpy(d["lam"]) for d, c in zip(draws, cut) if c])
    lam_mix = np.concatenate([numpy(d["lam"]) for d, c in zip(draws, cut) if not c])
    assert stats.kstest(lam_cut, stats.beta(2.0, 2.0).cdf).pvalue > 0.01
    assert stats.kstest(lam_mix, stats.beta(0.3, 0.3).cdf).pvalue > 0.01


# Inference, the on/off switch, dtypes, batch sizes


@pytest.mark.parametrize("make", MIXERS)
def test_identity_at_inference_with_unsmoothed_one_hot_labels(make):
    images, labels = indexed_batch(6)
    out_images, out_labels = as_numpy(make(num_classes=6, label_smoothing=0.1)(images, labels, training=False))
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, np.eye(6))


@pytest.mark.parametrize("make", MIXERS)
def test_disabled_layer_passes_images_and_smooths_labels(make):
    images, labels = indexed_batch(6)
    layer = make(num_classes=6, label_smoothing=0.3)
    layer.enabled.assign(False)
    dataset = tf.data.Dataset.from_tensors((images, labels)).map(layer)
    out_images, out_labels = next(iter(dataset))
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_allclose(out_labels, np.eye(6) * 0.7 + 0.05, atol=1e-6)
    # The traced map reads the flag on every batch.
    layer.enabled.assign(True)
    _, out_labels = next(iter(dataset))
    assert out_labels.numpy().max() < 0.75 + 1e-6 and not np.allclose(out_labels, np.eye(6) * 0.7 + 0.05)


def test_uint8_cutmix_stays_uint8_and_copies_pixels():
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, size=(16, 12, 10, 3), dtype="uint8")
    out_images, out_labels = as_numpy(CutMix(num_classes=4, seed=9)(images, np.arange(16) % 4))
    assert out_images.dtype == np.uint8
    # Every pixel comes whole from some sample at the same position.
    matches = (out_images[:, None] == images[None]).all(axis=-1).any(axis=1)
    assert matches.all()
    assert not np.array_equal(out_images, images)
    assert out_labels.dtype == np.float32


def test_uint8_mixup_returns_float32_in_the_original_range():
    images = np.full((4, 2, 2, 1), 200, "uint8")
    images[1::2] = 10
    out_images, _ = as_numpy(MixUp(num_classes=2, seed=0)(images, np.arange(4) % 2))
    assert out_images.dtype == np.float32
    assert out_images.min() >= 10 - 1e-4 and out_images.max() <= 200 + 1e-4
    assert dtype_of(MixUpOrCutMix(num_classes=2)(images, np.arange(4) % 2)[0]) == "float32"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("make", MIXERS)
def test_half_precision_images_keep_their_dtype(make, dtype):
    images, labels = indexed_batch(8)
    out_images, out_labels = make(num_classes=8, seed=1)(tf.cast(images, dtype), labels)
    assert dtype_of(out_images) == dtype
    assert dtype_of(out_labels) == "float32"
    np.testing.assert_allclose(
        numpy(out_images).astype("float32").mean(axis=(1, 2, 3)), numpy(out_labels) @ np.arange(8.0), atol=0.1
    )


def test_batch_of_one_is_left_as_it_is():
    images, labels = indexed_batch(1)
    for make in MIXERS:
        out_images, out_labels = as_numpy(make(num_classes=1)(images, labels))
        np.testing.assert_array_equal(out_images, images)
        np.testing.assert_array_equal(out_labels, [[1.0]])


# Errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MixUp(alpha=0), "alpha=0"),
        (lambda: CutMix(alpha=-1.0), "alpha=-1.0"),
        (lambda: MixUpOrCutMix(mixup_alpha=0.0), "mixup_alpha=0.0"),
        (lambda: MixUpOrCutMix(cutmix_alpha=0), "cutmix_alpha=0"),
        (lambda: MixUpOrCutMix(switch_prob=1.5), "switch_prob=1.5"),
        (lambda: MixUpOrCutMix(prob=-0.1), "prob=-0.1"),
        (lambda: MixUp(num_classes=0), "num_classes=0"),
        (lambda: MixUp(label_smoothing=1.5), "label_smoothing=1.5"),
        (lambda: CutMix(data_format="nhwc"), "data_format='nhwc'"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.tensorflow_only("TensorFlow's in-graph asserts and their InvalidArgumentError")
def test_bad_inputs_name_what_was_received():
    images, labels = indexed_batch(4)
    with pytest.raises(ValueError, match="num_classes=None"):
        MixUp()(images, labels)
    with pytest.raises(ValueError, match=r"labels of shape \(3,\)"):
        MixUp(num_classes=4)(images, labels[:3])
    with pytest.raises(ValueError, match="batch the dataset"):
        MixUp(num_classes=4)(images[0], labels[:1])
    with pytest.raises(ValueError, match=r"images of shape \(4, 6\)"):
        CutMix(num_classes=4)(images[:, :, 0, 0], labels)
    with pytest.raises(ValueError, match="4 classes on their last axis. Received: num_classes=5"):
        MixUp(num_classes=5)(images, np.eye(4, dtype="float32"))
    with pytest.raises(ValueError, match="not both"):
        MixUp(num_classes=4)({"images": images, "labels": labels}, labels)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids must be in \[0, 3\)"):
        MixUp(num_classes=3)(images, labels)
    # Batch sizes unknown until the pipeline runs are checked when it runs.
    mismatched = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices(images).batch(4), tf.data.Dataset.from_tensor_slices(labels).batch(3)
    ).map(MixUp(num_classes=4))
    with pytest.raises(tf.errors.InvalidArgumentError, match="differ in batch size"):
        next(iter(mismatched))


def test_inside_a_model_without_labels_it_refuses_to_mix_images_alone():
    inputs = keras.Input((6, 5, 3))
    with pytest.raises(ValueError, match=r"received no labels.*train_ds.map\(CutMix"):
        CutMix(num_classes=4)(inputs)


# Serialisation


@pytest.mark.parametrize("make", MIXERS)
def test_config_round_trip(make):
    layer = make(num_classes=5, label_smoothing=0.1, seed=3, data_format="channels_first")
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    signature = set(type(layer).__init__.__code__.co_varnames[1 : type(layer).__init__.__code__.co_argcount])
    assert signature <= set(config)


@pytest.mark.parametrize("make", MIXERS)
def test_saved_model_with_the_layer_reloads_and_mixes_the_same(make, tmp_path):
    images_in = keras.Input((6, 5, 3))
    labels_in = keras.Input((), dtype="int32")
    outputs = make(num_classes=6, seed=21)(images_in, labels_in)
    model = keras.Model([images_in, labels_in], list(outputs))
    path = str(tmp_path / "mixing.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    images, labels = indexed_batch(6)
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()
    # Both start from the same seed state, so they draw the same mixing.
    first, second = model([images, labels], training=True), loaded([images, labels], training=True)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    # predict runs in inference mode: identity.
    out_images, out_labels = loaded.predict([images, labels], verbose=0)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, np.eye(6))
