import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_finetune import glyphs, pretrained
from keras_finetune.freezing import untrained_batchnorm
from keras_finetune.pretrained.__main__ import held_out_accuracy, rebuild


def test_the_shipped_weights_match_their_recorded_checksum_and_stay_small():
    record = pretrained.info("glyphs")
    path = pretrained.weights_path("glyphs")
    assert pretrained.names() == ("glyphs",)
    assert pretrained.sha256(path) == record["sha256"]
    assert os.path.getsize(path) <= 2 * 2**20
    assert record["characters"] == glyphs.SOURCE_CHARACTERS and len(record["characters"]) >= 100


def test_the_base_is_a_pretrained_feature_extractor_of_a_few_hundred_thousand_weights():
    base = pretrained.load_base("glyphs")
    assert isinstance(base, keras.Model) and base.name == "glyphs"
    assert base.input_shape == (None, 8, 8, 1) and base.output_shape == (None, 2, 2, 128)
    assert base.count_params() == pretrained.info()["base_weights"] <= 300_000
    assert untrained_batchnorm(base) == []  # every BatchNorm layer holds learned statistics
    fresh = pretrained.build_base("glyphs")
    assert not np.allclose(fresh.get_layer("conv3").kernel, base.get_layer("conv3").kernel)


def test_the_source_classifier_reaches_its_recorded_accuracy_on_the_fixed_held_out_glyphs():
    record = pretrained.info("glyphs")
    classifier = pretrained.load_base("glyphs", include_top=True)
    assert classifier.output_shape == (None, len(glyphs.SOURCE_CHARACTERS))
    accuracy = held_out_accuracy(classifier, record["training"])
    # the same images and weights; other CPUs may round a few of 5,000 predictions differently
    assert accuracy == pytest.approx(record["held_out_accuracy"], abs=0.003)
    assert accuracy > 0.85


def test_other_input_shapes_share_the_weights_and_rgb_is_turned_grey_first():
    small = pretrained.load_base("glyphs")
    large = pretrained.load_base("glyphs", input_shape=(16, 24))
    rgb = pretrained.load_base("glyphs", input_shape=(16, 24, 3))
    assert large.output_shape == (None, 4, 6, 128) and rgb.input_shape == (None, 16, 24, 3)
    np.testing.assert_array_equal(large.get_layer("conv2").kernel, small.get_layer("conv2").kernel)
    grey = np.random.default_rng(0).random((2, 16, 24, 1)).astype("float32")
    np.testing.assert_allclose(rgb(np.repeat(grey, 3, axis=-1)), large(grey), rtol=1e-3, atol=1e-3)  # weights sum to 0.9999
    assert not rgb.get_layer("grey").trainable


def test_a_saved_base_reloads_with_keras_alone(tmp_path):
    path = tmp_path / "base.keras"
    base = pretrained.load_base("glyphs", input_shape=(8, 8, 3))
    base.save(path)
    images = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", keras.ops.convert_to_numpy(base(images)))
    script = (
        "import sys, keras, numpy as np\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        f"out = keras.ops.convert_to_numpy(model(np.load({str(tmp_path / 'images.npy')!r})))\n"
        f"np.testing.assert_allclose(out, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)\n"
        "assert 'keras_finetune' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "imagenet"}, "`name` must be one of glyphs. Received: name='imagenet'"),
    ({"input_shape": (8, 8, 2)}, r"1 or 3 channels. Received: input_shape=\(8, 8, 2\)"),
    ({"input_shape": (2, 8)}, r"sides >= 4 .* Received: input_shape=\(2, 8\)"),
    ({"input_shape": "8x8"}, "Received: input_shape='8x8'"),
    ({"input_shape": (16, 16), "include_top": True}, r"The source classifier takes 8x8x1 images. Received: input_shape=\(16, 16\)"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pretrained.load_base(**kwargs)


def test_include_top_must_be_a_bool():
    with pytest.raises(TypeError, match="include_top='yes'"):
        pretrained.load_base(include_top="yes")


def test_rebuild_writes_weights_that_load_and_a_record_that_matches_them(tmp_path):
    settings = {
        "epochs": 1, "images_per_epoch": 512, "batch_size": 128, "learning_rate": 2e-3, "dropout": 0.3,
        "seed": 0, "held_out_images": 200, "held_out_seed": 1_000_000,
    }
    lines = []
    record = rebuild(str(tmp_path), settings, print_fn=lines.append)
    assert lines[0].startswith("epoch 1/1: training accuracy") and "held-out accuracy" in lines[-1]
    written = json.loads((tmp_path / "glyphs.json").read_text())
    assert written == record and written["training"] == settings
    assert written["sha256"] == pretrained.sha256(str(tmp_path / "glyphs.weights.h5"))
    classifier = pretrained.source_classifier(pretrained.build_base(), len(glyphs.SOURCE_CHARACTERS))
    classifier.load_weights(str(tmp_path / "glyphs.weights.h5"))
    assert held_out_accuracy(classifier, settings) == pytest.approx(written["held_out_accuracy"], abs=1e-4)


def test_other_filters_give_a_network_of_the_same_shape_named_after_them():
    student = pretrained.build_base(filters=(16, 32, 32, 32))
    assert student.name == "glyphs_16x32x32x32" and student.output_shape == (None, 2, 2, 32)
    assert student.count_params() == 9 * (16 + 16 * 32 + 32 * 32 + 32 * 32) + 4 * (16 + 32 * 3)
    with pytest.raises(ValueError, match=r"`filters` must be four positive ints. Received: filters=\(8, 8\)"):
        pretrained.build_base(filters=(8, 8))
