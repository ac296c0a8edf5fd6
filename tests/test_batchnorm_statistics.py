import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_base, numpy

from keras_finetune.callbacks import update_batchnorm
from keras_finetune.freezing import freeze
from keras_finetune.heads import build_classifier

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def make_model(strategy=None):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        base = make_base()
        model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    return base, model


def layer_inputs(base, name, images):
    """The inputs of BatchNormalization layer `name` over `images`, one row per position."""
    layer = base.get_layer(name)
    probe = keras.Model(base.input, layer.input)
    values = probe.predict(images, batch_size=len(images), verbose=0)
    return values.reshape(-1, values.shape[-1]).astype("float64")


def assert_true_statistics(base, names, images):
    for name in names:
        layer, inputs = base.get_layer(name), layer_inputs(base, name, images)
        np.testing.assert_allclose(layer.moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), inputs.var(axis=0), rtol=1e-5, atol=1e-6)


def test_statistics_are_the_exact_mean_and_variance_with_an_uneven_last_batch(images):
    base, model = make_model()
    updated = update_batchnorm(model, images, batch_size=12)  # 12 + 12 + 8 samples
    assert [layer.name for layer in updated] == ["bn0", "bn1"]
    # Inputs of bn1 depend on bn0 in training mode: batch statistics, not the
    # new moving ones. Recompute them as the pass saw them, batch by batch.
    assert_true_statistics(base, ["bn0"], images)
    bn1_inputs = np.concatenate(
        [
            numpy(keras.Model(base.input, base.get_layer("bn1").input)(images[i : i + 12], training=True))
            for i in range(0, 32, 12)
        ]
    ).reshape(-1, 4)
    np.testing.assert_allclose(base.get_layer("bn1").moving_mean.numpy(), bn1_inputs.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(base.get_layer("bn1").moving_variance.numpy(), bn1_inputs.var(axis=0), rtol=1e-5, atol=1e-6)


def test_accepts_datasets_tuples_and_generators_alike(images, int_labels):
    results = []
    for data in (
        tf.data.Dataset.from_tensor_slices((images, int_labels)).batch(8),
        tf.data.Dataset.from_tensor_slices(images).batch(8),
        (images, int_labels),
        (images[i : i + 8] for i in range(0, 32, 8)),
        [(images[i : i + 8], int_labels[i : i + 8]) for i in range(0, 32, 8)],
    ):
        base, model = make_model()
        update_batchnorm(model, data, batch_size=8)
        results.append([base.get_layer(n).moving_variance.numpy() for n in ("bn0", "bn1")])
    for result in results[1:]:
        for expected, got in zip(results[0], result):
            np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_steps_limits_the_pass(images):
    base, model = make_model()
    update_batchnorm(model, tf.data.Dataset.from_tensor_slices(images).batch(8).repeat(), steps=2)
    assert_true_statistics(base, ["bn0"], images[:16])
    base, model = make_model()
    update_batchnorm(model, iter(images[i : i + 8] for i in range(0, 32, 8)), steps=1)
    assert_true_statistics(base, ["bn0"], images[:8])


def test_momentum_and_trainable_flags_are_restored(images):
    base, model = make_model()
    base.get_layer("bn0").momentum = 0.9
    update_batchnorm(model, images)
    assert [base.get_layer(n).momentum for n in ("bn0", "bn1")] == [0.9, 0.99]
    assert base.get_layer("bn0").trainable and base.get_layer("bn1").trainable


def test_frozen_layers_are_left_alone_unless_named(images):
    base, model = make_model()
    freeze(base.get_layer("bn1"))
    untouched = base.get_layer("bn1").moving_mean.numpy()
    assert [layer.name for layer in update_batchnorm(model, images)] == ["bn0"]
    np.testing.assert_array_equal(base.get_layer("bn1").moving_mean.numpy(), untouched)
    # Named explicitly: recomputed, and frozen again afterwards.
    update_batchnorm(model, images, layers=[base.get_layer("bn1")])
    assert not base.get_layer("bn1").trainable
    bn1 = base.get_layer("bn1")
    assert not np.allclose(bn1.moving_mean.numpy(), untouched)
    # bn0 ran in training mode (batch statistics), so bn1's inputs are those of the first pass.
    inputs = numpy(keras.Model(base.input, bn1.input)(images, training=True)).reshape(-1, 4)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_trainable_layers_not_named_keep_their_statistics(images):
    base, model = make_model()
    before = base.get_layer("bn0").moving_variance.numpy()
    update_batchnorm(model, images, layers=[base.get_layer("bn1")])
    np.testing.assert_array_equal(base.get_layer("bn0").moving_variance.numpy(), before)
    assert not np.allclose(base.get_layer("bn1").moving_variance.numpy(), 1.0)


def test_empty_data_raises_and_keeps_the_statistics(images):
    base, model = make_model()
    for name in ("bn0", "bn1"):
        base.get_layer(name).moving_mean.assign(np.full(4, 0.5, "float32"))
    before = [base.get_layer(n).moving_mean.numpy() for n in ("bn0", "bn1")]
    with pytest.raises(ValueError, match="yielded no batch"):
        update_batchnorm(model, tf.data.Dataset.from_tensor_slices(images).batch(8).take(0))
    for name, expected in zip(("bn0", "bn1"), before):
        np.testing.assert_array_equal(base.get_layer(name).moving_mean.numpy(), expected)
        assert base.get_layer(name).momentum == 0.99


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": 1.5}, "steps=1.5"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"layers": [keras.layers.BatchNormalization(name="stranger")]}, "stranger"),
    ],
)
def test_bad_arguments_are_named(images, kwargs, match):
    _, model = make_model()
    with pytest.raises(ValueError, match=match):
        update_batchnorm(model, images, **kwargs)


def test_a_model_is_required(images):
    with pytest.raises(TypeError, match="model"):
        update_batchnorm("model.keras", images)


def test_after_keras_ema_the_statistics_match_the_ema_weights(images, int_labels):
    base, model = make_model()
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5), "sparse_categorical_crossentropy")
    model.fit(images, int_labels, batch_size=8, epochs=2, verbose=0, callbacks=[keras.callbacks.SwapEMAWeights()])
    update_batchnorm(model, images)
    assert_true_statistics(base, ["bn0"], images)


def test_every_replica_gets_the_recomputed_statistics(images, int_labels, mirrored):
    base, model = make_model(mirrored)
    with mirrored.scope():
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(images, int_labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    bn0 = base.get_layer("bn0")
    replicas = [r.numpy() for r in mirrored.experimental_local_results(bn0.moving_mean.value)]
    assert not np.allclose(replicas[0], replicas[1])  # Keras lets the replicas drift apart
    update_batchnorm(model, tf.data.Dataset.from_tensor_slices((images, int_labels)).batch(8))
    assert_true_statistics(base, ["bn0"], images)
    for variable in (bn0.moving_mean, bn0.moving_variance):
        first, second = (r.numpy() for r in mirrored.experimental_local_results(variable.value))
        np.testing.assert_array_equal(first, second)


def test_a_later_call_follows_flags_changed_in_between(images):
    base, model = make_model()
    update_batchnorm(model, images)
    freeze(base.get_layer("bn0"))
    base.get_layer("bn0").moving_mean.assign(np.full(4, 0.5, "float32"))
    assert [layer.name for layer in update_batchnorm(model, images[:16])] == ["bn1"]
    np.testing.assert_array_equal(base.get_layer("bn0").moving_mean.numpy(), np.full(4, 0.5))
    # bn0 now runs in inference mode with its new statistics: bn1 sees that.
    inputs = numpy(keras.Model(base.input, base.get_layer("bn1").input)(images[:16], training=True)).reshape(-1, 4)
    np.testing.assert_allclose(base.get_layer("bn1").moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-5, atol=1e-6)
