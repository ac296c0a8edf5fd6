import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_finetune.layers import CutMix, MixUp, MixUpOrCutMix
from keras_finetune.models import MixingModel

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def data(n=24, classes=4):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), (np.arange(n) % classes).astype("int32")


def classifier(seed=0, classes=4):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.mark.parametrize("make", [lambda: MixUp(num_classes=4, alpha=1.0, seed=5), lambda: CutMix(num_classes=4, seed=5),
                                  lambda: MixUpOrCutMix(num_classes=4, label_smoothing=0.1, seed=5)])
@pytest.mark.tensorflow_only("the step draws from the backend's generator, the tf.data map from TensorFlow's")
def test_training_step_mixing_equals_the_tf_data_path(make):
    images, labels = data()
    raw = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)

    piped = classifier()
    piped.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    piped.fit(raw.map(make()), epochs=3, verbose=0)

    wrapped_model = classifier()
    wrapped = MixingModel(wrapped_model, make())
    wrapped.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    wrapped.fit(raw, epochs=3, verbose=0)

    start = classifier()
    moved = [not np.allclose(a, b) for a, b in zip(start.get_weights(), piped.get_weights())]
    assert any(moved)
    for a, b in zip(piped.get_weights(), wrapped_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluate_uses_unmixed_one_hot_labels_and_predict_is_the_model():
    images, labels = data()
    model = classifier()
    wrapped = MixingModel(model, MixUp(num_classes=4, label_smoothing=0.2, seed=1))
    wrapped.compile(loss="categorical_crossentropy", metrics=["categorical_accuracy"])
    loss, accuracy = wrapped.evaluate(images, labels, batch_size=8, verbose=0)
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(loss, -np.mean(np.log(probabilities[np.arange(24), labels])), rtol=1e-5)
    np.testing.assert_allclose(accuracy, np.mean(probabilities.argmax(1) == labels))
    np.testing.assert_array_equal(wrapped.predict(images, verbose=0), probabilities)


def test_fit_leaves_the_trained_weights_in_the_wrapped_model_and_saves(tmp_path):
    images, labels = data()
    model = classifier()
    before = [w.copy() for w in model.get_weights()]
    wrapped = MixingModel(model, CutMix(num_classes=4, seed=2))
    wrapped.compile(optimizer="adam", loss="categorical_crossentropy")
    wrapped.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    path = str(tmp_path / "wrapped.keras")
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MixingModel) and isinstance(loaded.mixing, CutMix)
    assert loaded.mixing.get_config() == wrapped.mixing.get_config()
    np.testing.assert_allclose(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0), rtol=1e-6)
    # Training continues from the saved optimizer state.
    loaded.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 6


def test_bad_arguments_and_batches_without_labels():
    with pytest.raises(TypeError, match="model=.*of type str"):
        MixingModel("resnet", MixUp())
    with pytest.raises(TypeError, match="mixing=.*of type RandomFlip"):
        MixingModel(classifier(), keras.layers.RandomFlip())
    wrapped = MixingModel(classifier(), MixUp(num_classes=4))
    wrapped.compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="without labels"):
        wrapped.fit(data()[0], batch_size=8, verbose=0)


def test_trains_and_evaluates_under_mirrored_strategy(mirrored):
    images, labels = data()
    layer = CutMix(num_classes=4, seed=3)  # made outside the scope, as a pipeline layer would be
    with mirrored.scope():
        model = classifier()
        wrapped = MixingModel(model, layer)
        wrapped.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    wrapped.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    loss = wrapped.evaluate(images, labels, batch_size=8, verbose=0)
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(loss, -np.mean(np.log(probabilities[np.arange(24), labels])), rtol=1e-5)


def test_the_wrapper_augments_in_training_only():
    """An augmentation that blanks the images: training sees blanks, evaluation the images themselves."""
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(16, 4, 4, 1)).astype("float32"), rng.integers(0, 2, 16)

    def classifier():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])

    model, reference = classifier(), classifier()
    trainer = MixingModel(model, augmentation=keras.layers.Rescaling(0.0))
    trainer.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy")
    trainer.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    reference.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy")
    reference.fit(np.zeros_like(images), np.eye(2)[labels], batch_size=8, epochs=2, shuffle=False, verbose=0)
    for mine, theirs in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)
    probabilities = reference.predict(images, verbose=0)
    expected = -np.mean(np.log(probabilities[np.arange(16), labels]))
    assert trainer.evaluate(images, labels, verbose=0) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(TypeError, match="augmentation=<function"):
        MixingModel(model, augmentation=lambda x: x)
