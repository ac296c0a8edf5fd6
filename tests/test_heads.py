import re

import keras
import numpy as np
import pytest
from conftest import changed, mixed_float16, numpy, snapshot

from keras_finetune.freezing import freeze, unfreeze
from keras_finetune.heads import build_classifier

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def test_layout_is_pool_dropout_dense_dropout_dense(base):
    model = build_classifier(base, 10)
    layers = model.layers[1:]
    assert [type(layer).__name__ for layer in layers] == [
        "Functional", "GlobalAveragePooling2D", "Dropout", "Dense", "Dropout", "Dense",
    ]
    assert layers[0] is base
    assert [layers[2].rate, layers[4].rate] == [0.5, 0.3]
    assert layers[3].units == 128 and layers[3].activation is keras.activations.relu
    assert layers[5].units == 10 and layers[5].activation is keras.activations.softmax
    assert model.output_shape == (None, 10)


def test_softmax_output_sums_to_one_and_logits_do_not(base, images):
    probabilities = numpy(build_classifier(base, 4)(images, training=False))
    np.testing.assert_allclose(np.sum(probabilities, axis=-1), 1.0, rtol=1e-5)
    logits_model = build_classifier(base, 4, activation=None)
    assert logits_model.get_layer("head_output").activation is keras.activations.linear


def test_binary_head_uses_one_sigmoid_unit(base, images):
    model = build_classifier(base, 1)
    output = model.get_layer("head_output")
    assert output.units == 1 and output.activation is keras.activations.sigmoid
    probabilities = numpy(model(images, training=False))
    assert probabilities.shape == (32, 1) and np.all((probabilities > 0) & (probabilities < 1))


def test_restored_weights_restore_the_dropout_masks(base, images):
    """The head's dropout draws from a seed state the weights hold, on every backend (PyTorch's global generator is
    held by no backup): a run resumed from its weights draws the masks the uninterrupted one drew."""
    model = build_classifier(base, 4, hidden_units=(8,), dropout=0.5)
    saved = [numpy(v) for v in model.variables]  # the weights and the seed states, as a backup holds them
    first = [numpy(model(images, training=True)) for _ in range(2)]
    for variable, value in zip(model.variables, saved):
        variable.assign(value)
    again = [numpy(model(images, training=True)) for _ in range(2)]
    assert not np.allclose(first[0], first[1])  # each call draws new masks
    for mine, theirs in zip(again, first):
        np.testing.assert_array_equal(mine, theirs)


def test_hidden_units_and_dropout_options(base):
    model = build_classifier(base, 3, hidden_units=(16, 8), dropout=0.2, pooling="max")
    assert type(model.get_layer("head_pool")).__name__ == "GlobalMaxPooling2D"
    assert [model.get_layer(f"head_dense_{i}").units for i in range(2)] == [16, 8]
    assert [model.get_layer(f"head_dropout_{i}").rate for i in range(3)] == [0.2, 0.2, 0.2]
    linear = build_classifier(base, 3, hidden_units=(), dropout=0.0, pooling="flatten")
    assert [type(layer).__name__ for layer in linear.layers[2:]] == ["Flatten", "Dense"]
    assert linear.get_layer("head_output").input.shape == (None, 8 * 8 * 6)


def test_frozen_base_keeps_weights_and_batchnorm_statistics_during_fit(base, images, int_labels):
    before = snapshot(base)
    model = build_classifier(freeze(base), 3)
    head_before = snapshot(model.get_layer("head_dense_0"))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(images, int_labels, epochs=2, batch_size=8, verbose=0)
    assert changed(before, base) == set()
    assert changed(head_before, model.get_layer("head_dense_0")) == {
        "head_dense_0/kernel", "head_dense_0/bias",
    }


def test_batchnorm_runs_in_inference_mode_while_frozen(base, images):
    model = build_classifier(freeze(base), 3, dropout=0.0)
    np.testing.assert_allclose(numpy(model(images, training=True)), numpy(model(images, training=False)), rtol=1e-6)
    unfreeze(base, freeze_batchnorm=False)
    assert not np.allclose(numpy(model(images, training=True)), numpy(model(images, training=False)))


def test_works_with_a_keras_applications_base(images, int_labels):
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, include_preprocessing=False
    )
    model = build_classifier(freeze(base), 3)
    assert model.output_shape == (None, 3)
    before = snapshot(base)
    pictures = np.repeat(np.resize(images, (8, 32, 32, 1)), 3, axis=-1)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(pictures, int_labels[:8], epochs=1, verbose=0)
    assert changed(before, base) == set()


def test_base_that_already_pools_needs_no_pooling():
    inputs = keras.Input((5,))
    base = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    model = build_classifier(base, 2, pooling=None)
    assert model.output_shape == (None, 2)
    assert "head_pool" not in [layer.name for layer in model.layers]


def test_multi_input_base_is_refused():
    a, b = keras.Input((4,)), keras.Input((4,))
    base = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match="one input"):
        build_classifier(base, 2)


def test_unbuilt_subclassed_base_needs_input_shape():
    class Base(keras.Model):
        def __init__(self):
            super().__init__(name="sub_base")
            self.conv = keras.layers.Conv2D(3, 3)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match="Received: input_shape=None"):
        build_classifier(Base(), 2)
    model = build_classifier(Base(), 2, input_shape=(8, 8, 1))
    assert model.output_shape == (None, 2)


def test_output_stays_float32_under_mixed_precision(base):
    with mixed_float16():
        model = build_classifier(base, 3)
        assert model.get_layer("head_dense_0").compute_dtype == "float16"
        assert model.get_layer("head_output").compute_dtype == "float32"


def test_saved_classifier_reloads_with_same_predictions(base, images, tmp_path):
    model = build_classifier(freeze(base), 3)
    path = tmp_path / "classifier.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)
    assert reloaded.get_layer("base").trainable is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"num_classes": 2.5}, "Received: num_classes=2.5"),
        ({"num_classes": 3, "hidden_units": (0,)}, "Received: hidden_units=(0,)"),
        ({"num_classes": 3, "dropout": (0.5,) * 3}, "Received: dropout=(0.5, 0.5, 0.5)"),
        ({"num_classes": 3, "dropout": 1.0}, "Received: dropout=(1.0, 1.0)"),
        ({"num_classes": 3, "dropout": ("0.5", 0.3)}, "Received: dropout=('0.5', 0.3)"),
        ({"num_classes": 3, "pooling": "mean"}, "Received: pooling='mean'"),
        ({"num_classes": 3, "pooling": None}, "Received: pooling=None"),
    ],
)
def test_rejects_bad_arguments(base, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_classifier(base, **kwargs)


def test_rejects_what_is_not_a_model():
    with pytest.raises(TypeError, match="Received: base_model='resnet'"):
        build_classifier("resnet", 3)
    inputs = keras.Input((4,))
    dense_base = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(TypeError, match="Received: hidden_units='128'"):
        build_classifier(dense_base, 3, hidden_units="128")
