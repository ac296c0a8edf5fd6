import re

import keras
import numpy as np
import pytest
from conftest import changed, make_base, snapshot, with_statistics

from keras_finetune.freezing import (
    batchnorm_layers,
    batchnorm_to_freeze,
    follow_untrained_batchnorm,
    freeze,
    trainable_summary,
    unfreeze,
    untrained_batchnorm,
)
from keras_finetune.heads import build_classifier

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def fit_once(base, images, labels):
    """Compile a linear head on `base` and fit two epochs with a large rate."""
    model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=2, batch_size=8, verbose=0)
    return model


def weight_paths(base, *layer_names):
    return {v.path for name in layer_names for v in base.get_layer(name).weights}


def test_freeze_keeps_every_base_weight_and_batchnorm_statistic(base, images, int_labels):
    before = snapshot(base)
    assert freeze(base) is base
    model = fit_once(base, images, int_labels)
    assert changed(before, base) == set()
    assert model.get_layer("head_output").trainable_weights  # the head did train
    assert {v.path for v in model.trainable_weights} == weight_paths(model, "head_output")


def test_unfreeze_top_trains_only_the_top_entries_and_keeps_batchnorm(base, images, int_labels):
    # base.layers: pixels, conv0, bn0, relu0, conv1, bn1, conv2; top=3 -> conv1, bn1, conv2
    before = snapshot(base)
    unfreeze(base, top=3)
    fit_once(base, images, int_labels)
    assert changed(before, base) == weight_paths(base, "conv1", "conv2")
    assert not base.get_layer("bn1").trainable


def test_unfreeze_without_batchnorm_policy_trains_batchnorm(base, images, int_labels):
    before = snapshot(base)
    unfreeze(base, top=3, freeze_batchnorm=False)
    fit_once(base, images, int_labels)
    # gamma, beta and the moving statistics of bn1 all move; bn0 stays below the boundary
    assert changed(before, base) == weight_paths(base, "conv1", "bn1", "conv2")


def test_unfreeze_from_layer_by_name_and_by_object_match_top(base):
    unfreeze(base, from_layer="conv1")
    by_name = [v.path for v in base.trainable_weights]
    unfreeze(base, from_layer=base.get_layer("conv1"))
    by_object = [v.path for v in base.trainable_weights]
    unfreeze(base, top=3)
    assert by_name == by_object == [v.path for v in base.trainable_weights]
    assert by_name == ["conv1/kernel", "conv1/bias", "conv2/kernel", "conv2/bias"]


def test_unfreeze_whole_base_trains_everything_but_batchnorm(base, images, int_labels):
    before = snapshot(base)
    freeze(base)
    unfreeze(base)
    fit_once(base, images, int_labels)
    assert changed(before, base) == weight_paths(base, "conv0", "conv1", "conv2")
    assert [layer.trainable for layer in batchnorm_layers(base)] == [False, False]


def test_unfreeze_moves_the_boundary_both_ways(base):
    unfreeze(base)
    unfreeze(base, top=1)
    assert [v.path for v in base.trainable_weights] == ["conv2/kernel", "conv2/bias"]
    unfreeze(base, top=0)
    assert base.trainable_weights == [] and not base.trainable
    unfreeze(base, top=len(base.layers))
    assert len(base.trainable_weights) == 6
    unfreeze(base, top=1)
    unfreeze(base)  # from a trainable base whose lower layers are frozen
    assert len(base.trainable_weights) == 6


def test_untrained_batchnorm_finds_the_layers_still_at_their_initial_statistics(base, images, int_labels):
    assert untrained_batchnorm(base) == batchnorm_layers(base)
    base.get_layer("bn1").moving_mean.assign(np.full(4, 0.5))  # one statistic moved is enough
    assert [layer.name for layer in untrained_batchnorm(base)] == ["bn0"]
    fit_once(unfreeze(base, freeze_batchnorm=False), images, int_labels)
    assert untrained_batchnorm(base) == []


def test_follow_untrained_batchnorm_lowers_the_momentum_of_untrained_layers_only(base):
    with_statistics(base.get_layer("bn1"))
    base.get_layer("bn0").momentum = 0.999  # as keras.applications build theirs
    assert follow_untrained_batchnorm(base) == [base.get_layer("bn0")]
    assert (base.get_layer("bn0").momentum, base.get_layer("bn1").momentum) == (0.9, 0.99)
    base.get_layer("bn0").momentum = 0.5
    follow_untrained_batchnorm(base)
    assert base.get_layer("bn0").momentum == 0.5  # a lower momentum is kept


def test_auto_policy_freezes_the_learned_batchnorm_and_trains_the_untrained(base, images, int_labels):
    with_statistics(base.get_layer("bn1"))  # bn0 untrained, bn1 "pretrained"
    assert batchnorm_to_freeze(base, "auto") == [base.get_layer("bn1")]
    assert batchnorm_to_freeze(base, True) == batchnorm_layers(base) and batchnorm_to_freeze(base, False) == []
    before = snapshot(base)
    fit_once(unfreeze(base, freeze_batchnorm="auto"), images, int_labels)
    moved = changed(before, base)
    assert {"bn0/moving_mean", "bn0/gamma"} <= moved
    assert not moved & weight_paths(base, "bn1")


def test_batchnorm_layers_finds_nested_layers(base):
    inputs = keras.Input((8, 8, 1))
    outer = keras.Model(inputs, keras.layers.BatchNormalization(name="outer_bn")(base(inputs)))
    assert [layer.name for layer in batchnorm_layers(outer)] == ["bn0", "bn1", "outer_bn"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"top": -1}, ValueError, "Received: top=-1"),
        ({"top": 8}, ValueError, "Received: top=8"),
        ({"top": 2.0}, TypeError, "Received: top=2.0"),
        ({"top": True}, TypeError, "Received: top=True"),
        ({"from_layer": "conv9"}, ValueError, "Received: from_layer='conv9'"),
        ({"top": 1, "from_layer": "conv1"}, ValueError, "Received: top=1, from_layer='conv1'"),
        ({"from_layer": 3}, TypeError, "Received: from_layer=3"),
        ({"freeze_batchnorm": "yes"}, ValueError, "Received: freeze_batchnorm='yes'"),
        ({"freeze_batchnorm": ["bn0"]}, TypeError, "Received: freeze_batchnorm=['bn0']"),
    ],
)
def test_unfreeze_rejects_bad_arguments(base, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        unfreeze(base, **kwargs)


def test_unfreeze_rejects_a_layer_from_another_model(base):
    stranger = make_base("other").get_layer("conv1")
    with pytest.raises(ValueError, match=re.escape("Received: from_layer='conv1'")):
        unfreeze(base, from_layer=stranger)


def test_freeze_and_unfreeze_reject_non_models():
    with pytest.raises(TypeError, match="Received: model_or_layer='dense'"):
        freeze("dense")
    with pytest.raises(TypeError, match="base_model"):
        unfreeze(keras.layers.Dense(2))


def keras_reported_counts(model):
    lines = []
    model.summary(print_fn=lambda line, **kwargs: lines.append(line))
    text = "\n".join(lines)

    def count(label):
        return int(re.search(rf"{label} params: ([\d,]+)", text).group(1).replace(",", ""))

    return count("Trainable"), count("Non-trainable")


def test_trainable_summary_counts_match_keras(base):
    model = build_classifier(base, 3, hidden_units=(5,))
    unfreeze(base, top=3)
    summary = trainable_summary(model)
    assert (summary["trainable_params"], summary["non_trainable_params"]) == keras_reported_counts(model)
    # conv1 (4*9*4+4=148) + conv2 (4*9*6+6=222) + dense (6*5+5=35) + output (5*3+3=18)
    assert summary["trainable_params"] == 148 + 222 + 35 + 18
    assert summary == {
        "trainable_params": 423,
        "non_trainable_params": 40 + 16 + 16,  # conv0 + bn0 (4 x 4) + bn1 (4 x 4)
        "trainable_layers": 4,
        "frozen_layers": 3,
        "batchnorm_training": 0,
        "batchnorm_inference": 2,
    }


def test_trainable_summary_counts_batchnorm_modes_and_prints_a_table(base):
    unfreeze(base, freeze_batchnorm=False)
    summary = trainable_summary(base)
    assert (summary["batchnorm_training"], summary["batchnorm_inference"]) == (2, 0)
    assert (summary["trainable_params"], summary["non_trainable_params"]) == keras_reported_counts(base)
    table = str(summary).splitlines()
    assert table[0].split() == ["trainable", "non-trainable"]
    assert table[1].split() == ["parameters", f"{summary['trainable_params']:,}", "16"]
    assert table[3].split() == ["BatchNorm", "layers", "2", "0"]


def test_trainable_summary_sees_a_trainable_layer_inside_a_frozen_parent_as_frozen(base):
    freeze(base)
    base.get_layer("conv2").trainable = True  # the frozen parent still hides its weights
    summary = trainable_summary(base)
    assert summary["trainable_params"] == 0 and summary["trainable_layers"] == 0
    assert summary["frozen_layers"] == 5
    assert np.sum([np.prod(v.shape) for v in base.weights]) == summary["non_trainable_params"]
