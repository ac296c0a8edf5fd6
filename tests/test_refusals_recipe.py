"""Bad input given to `fine_tune`: refused at the call or on the first batch, never trained on silently."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_base, with_statistics

from keras_finetune import fine_tune
from keras_finetune.heads import build_classifier

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (24, 8, 8, 1)).astype("float32")
IDS = np.arange(24, dtype="int32") % 3
QUIET = {"epochs": 2, "frozen_epochs": 1, "swa": None, "verbose": 0}


def base():
    keras.utils.set_random_seed(0)
    return with_statistics(make_base())


@pytest.mark.parametrize("labels, hint", [(IDS + 1, r"ids 1..3 need `labels - 1`"), (IDS - 1, r"class ids must be in \[0, 3\)")])
def test_class_ids_outside_the_classes_stop_the_first_batch(labels, hint):
    # tf.one_hot made them all-zero rows and training went on (loss 15.7).
    with pytest.raises(tf.errors.InvalidArgumentError, match=hint):
        fine_tune(base(), (IMAGES, labels), num_classes=3, **QUIET)
    with pytest.raises(tf.errors.InvalidArgumentError, match=hint):
        fine_tune(base(), (IMAGES, IDS), (IMAGES, labels), num_classes=3, **QUIET)


def test_float_class_ids_are_refused_at_the_call():
    with pytest.raises(ValueError, match=r"`train_data` labels must be integer class ids or one-hot rows of 3 classes"):
        fine_tune(base(), (IMAGES, IDS.astype("float32")), num_classes=3, **QUIET)


def test_a_classifier_given_as_a_base_is_refused():
    classifier = build_classifier(base(), 3)
    with pytest.raises(ValueError, match=r"ends in a classifier \(its last layer 'head_output' outputs 3 scores\).*num_classes=3"):
        fine_tune(classifier, (IMAGES, IDS), num_classes=3, **QUIET)


def test_from_logits_follows_the_model_and_a_contradiction_is_refused():
    logits = build_classifier(base(), 3, activation=None)
    with pytest.raises(ValueError, match=r"outputs logits .*Received: from_logits=False"):
        fine_tune(logits, (IMAGES, IDS), from_logits=False, **QUIET)
    probabilities = build_classifier(base(), 3)
    with pytest.raises(ValueError, match=r"outputs probabilities .*Received: from_logits=True"):
        fine_tune(probabilities, (IMAGES, IDS), from_logits=True, **QUIET)
    with pytest.raises(TypeError, match="from_logits='no'"):
        fine_tune(probabilities, (IMAGES, IDS), from_logits="no", **QUIET)
    # A logits classifier (a keras-hub ImageClassifier's default) gets the logits loss by itself.
    history = fine_tune(logits, (IMAGES, IDS), augmentation=False, mixing=False, label_smoothing=0.0, **QUIET)
    assert history.model.loss.get_config()["from_logits"] is True
    first = history.model.predict(IMAGES, verbose=0)
    expected = -np.mean(np.log(np.take_along_axis(keras.ops.softmax(first).numpy(), IDS[:, None], axis=1)))
    assert history.model.evaluate(IMAGES, keras.utils.to_categorical(IDS, 3), verbose=0)[0] == pytest.approx(expected, rel=1e-4)


def test_a_model_whose_output_kind_cannot_be_read_needs_from_logits():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(3, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(base()(inputs)))
    with pytest.raises(ValueError, match=r"Cannot tell whether `model` outputs logits.*'sigmoid'"):
        fine_tune(keras.Model(inputs, outputs), (IMAGES, IDS), **QUIET)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"learning_rate": math.inf}, ValueError, "learning_rate=inf"),
        ({"learning_rate": "1e-3"}, TypeError, "learning_rate='1e-3'"),
        ({"unfreeze_lr_factor": math.nan}, ValueError, "unfreeze_lr_factor=nan"),
        ({"swa_lr": math.inf, "swa": 1}, ValueError, "swa_lr=inf"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing=1.0"),
        ({"warmup_epochs": 3}, ValueError, r"longer than the run \(2 epochs\).*warmup_epochs=3"),
        ({"freeze_batchnorm": "False"}, ValueError, "freeze_batchnorm='False'"),
        ({"seed": 1.5}, TypeError, "seed=1.5"),
        ({"optimizer": None}, TypeError, "optimizer=None"),  # it said "call `compile` first"
        ({"optimizer": "adamx"}, ValueError, "must name a Keras optimizer.*optimizer='adamx'"),
        ({"head": "dropout"}, TypeError, "head='dropout'"),
        ({"strategy": "mirrored"}, TypeError, "strategy='mirrored'"),
        ({"callbacks": 5}, TypeError, "callbacks=5"),
        ({"backup_dir": 5}, TypeError, "backup_dir=5"),
        ({"verbose": "x"}, ValueError, "verbose='x'"),
        ({"unfreeze": -1}, ValueError, r"from unfreeze=-1"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, message):
    with pytest.raises(error, match=message):
        fine_tune(base(), (IMAGES, IDS), num_classes=3, **{**QUIET, **kwargs})


def test_images_and_labels_of_different_lengths_are_refused_at_the_call():
    with pytest.raises(ValueError, match=r"`train_data` must be \(images, labels\) with one label per image.*\(20,\)"):
        fine_tune(base(), (IMAGES, IDS[:20]), num_classes=3, **QUIET)
    with pytest.raises(ValueError, match=r"`validation_data` must be \(images, labels\)"):
        fine_tune(base(), (IMAGES, IDS), (IMAGES, IDS[:20]), num_classes=3, **QUIET)


def test_empty_data_is_refused_before_the_first_step():
    with pytest.raises(ValueError, match="`train_data` holds no sample"):
        fine_tune(base(), (IMAGES[:0], IDS[:0]), num_classes=3, **QUIET)
    empty = tf.data.Dataset.from_tensor_slices((IMAGES, IDS)).batch(8).take(0)
    with pytest.raises(ValueError, match="`validation_data` holds no sample"):
        fine_tune(base(), (IMAGES, IDS), empty, num_classes=3, **QUIET)


def test_images_in_zero_one_are_refused_by_the_augmentation_preset():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"look scaled to \[0, 1\]"):
        fine_tune(base(), (IMAGES / 255.0, IDS), num_classes=3, **QUIET)
    history = fine_tune(base(), (IMAGES / 255.0, IDS), num_classes=3, augmentation={"value_range": (0, 1)}, **QUIET)
    assert np.isfinite(history.history["loss"]).all()


def test_a_frozen_phase_that_rounds_away_warns():
    with pytest.warns(UserWarning, match=r"frozen_epochs=0.25 of 3 epochs rounds to 0"):
        fine_tune(base(), (IMAGES, IDS), num_classes=3, **{**QUIET, "epochs": 3, "frozen_epochs": 0.25})


def test_a_subclassed_base_called_on_data_gets_its_head_and_input_shape_works_before():
    class Base(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    keras.utils.set_random_seed(0)
    called = Base()
    called(IMAGES[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = fine_tune(called, (IMAGES, IDS), num_classes=3, **QUIET)
    assert history.model.input_shape == (None, 8, 8, 1)
    with pytest.raises(ValueError, match="never called on data.*pass `input_shape`"):
        fine_tune(Base(), (IMAGES, IDS), num_classes=3, **QUIET)
    history = fine_tune(Base(), (IMAGES, IDS), num_classes=3, input_shape=(8, 8, 1), **QUIET)
    assert history.model.output_shape == (None, 3)


def test_on_a_py_dataset_bad_validation_data_and_labels_are_refused_naming_them():
    from keras_finetune.array_batches import ArrayBatches

    batches = ArrayBatches(IMAGES, IDS, 8, 3, seed=0)
    with pytest.raises(TypeError, match=r"`validation_data` must be a tuple \(images, labels\) or a keras.utils.PyDataset.*Received: function"):
        fine_tune(base(), batches, lambda epoch: None, num_classes=3, **QUIET)
    with pytest.raises(ValueError, match=r"`validation_data` must be \(images, labels\) with one label per image"):
        fine_tune(base(), batches, (IMAGES, IDS[:20]), num_classes=3, **QUIET)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\)"):
        fine_tune(base(), batches, (IMAGES, IDS + 1), num_classes=3, **QUIET)
