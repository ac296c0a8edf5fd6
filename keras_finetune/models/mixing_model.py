"""`MixingModel`: augmentation and MixUp/CutMix inside the training step, on the accelerator.

When the input pipeline is CPU-bound, augmenting and mixing big image batches
on the host costs throughput. This wrapper runs the same layers inside `fit`'s
compiled step instead, on the device that trains: `train_step` augments the
images, then mixes `(x, y)`, before the forward pass; `evaluate` only turns
integer labels one-hot (no augmentation, mixing or smoothing), so the
compiled loss sees the same label form; and `predict`/`__call__` are the
wrapped model's. It is how `fine_tune` trains on data that is not a `tf.data`
pipeline (a `keras.utils.PyDataset`, or arrays where TensorFlow is missing).
"""

from __future__ import annotations

import keras

from keras_finetune import backend
from keras_finetune.layers.mixing import MixingLayer
from keras_finetune.validation import class_ids

__all__ = ["MixingModel"]


@keras.saving.register_keras_serializable(package="keras_finetune")
class MixingModel(keras.Model):
    """Wraps a model so that `fit` augments and mixes each batch on the device, before the forward pass.

    The mixing layer and its random draws are the ones a `tf.data` map would
    use: the same layer with the same seed gives the same mixed batches
    either way (on the same kind of device). Compile it as you would the
    model, with a loss for one-hot targets (`"categorical_crossentropy"`):
    integer labels become one-hot rows (of the mixing layer's `num_classes`,
    or without one the model's outputs). After `fit`, use
    `mixing_model.model` (or the wrapper, which predicts the same). The
    layers' random states are variables of the wrapper, so `EpochSeeds` on
    it reseeds them with the model's dropout.

    Args:
        model: keras.Model. The model to train.
        mixing: a `MixUp`, `CutMix` or `MixUpOrCutMix` layer, or None (no
            mixing). Defaults to `None`.
        augmentation: a Keras layer applied to the images of each training
            batch with `training=True` before mixing (e.g.
            `image_augmentation()`), or None. Defaults to `None`. With
            neither, the wrapper only turns integer labels one-hot.

    Example:

    ```python
    trainer = MixingModel(model, CutMix(num_classes=10))
    trainer.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    trainer.fit(train_ds.batch(64), validation_data=val_ds.batch(64), epochs=10)
    model.save("fine_tuned.keras")
    ```
    """

    def __init__(self, model, mixing=None, augmentation=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"MixingModel needs `model` to be a keras.Model. Received: model={model!r} "
                f"of type {type(model).__name__}"
            )
        if mixing is not None and not isinstance(mixing, MixingLayer):
            raise TypeError(
                "MixingModel needs `mixing` to be a keras_finetune MixUp, CutMix or "
                f"MixUpOrCutMix layer, or None. Received: mixing={mixing!r} of type {type(mixing).__name__}"
            )
        if augmentation is not None and not isinstance(augmentation, keras.layers.Layer):
            raise TypeError(
                "MixingModel needs `augmentation` to be a Keras layer (e.g. image_augmentation()), or None. "
                f"Received: augmentation={augmentation!r} of type {type(augmentation).__name__}"
            )
        self.model = model
        self.mixing = mixing
        self.augmentation = augmentation
        self.built = model.built

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Exports the wrapped model for serving, as `self.model.export(...)`: mixing is for training only."""
        return self.model.export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # Keras's "auto" leaves a step holding its rotation, zoom or translation layer uncompiled (TensorFlow's
        # XLA lacks their op), and its setter would refuse True; on JAX they compile (`backend.COMPILES_IMAGE_TRANSFORMS`).
        if (
            kwargs.get("jit_compile", "auto") == "auto" and not self.run_eagerly and backend.COMPILES_IMAGE_TRANSFORMS
            and all(layer.supports_jit for layer in self.model._flatten_layers())
        ):
            self._jit_compile = True

    def compile_from_config(self, config):
        # What Keras's does, which skips a model whose `compile` is its own: a reloaded wrapper trains on.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        if y is None and hasattr(x, "shape"):  # arrays without labels: refused before Keras builds anything
            self._refuse_unlabelled()
        return super().fit(x, y, *args, **kwargs)

    @staticmethod
    def _refuse_unlabelled():
        raise ValueError(
            "MixingModel trains and evaluates on (x, y) batches: mixing needs the labels. "
            "Received: a batch without labels"
        )

    def _with_labels(self, data, training: bool):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            self._refuse_unlabelled()
        if training and self.augmentation is not None:
            x = self.augmentation(x, training=True)
        if self.mixing is not None:
            x, y = self.mixing(x, y, training=training)
        return (x, y) if sample_weight is None else (x, y, sample_weight)

    def _targets(self, y):
        # Under a strategy Keras builds the compiled loss and metrics from a raw batch
        # (averaged over replicas, so class ids may arrive as floats) before any
        # train_step: class ids must become one-hot rows there too.
        if y is None or ("float" in str(y.dtype) and len(y.shape) != 1):
            return y
        if self.mixing is not None:
            return self.mixing._one_hot(keras.ops.cast(y, "int32"))
        classes = self.model.output_shape[-1]
        return keras.ops.one_hot(class_ids(keras.ops.reshape(y, (-1,)), classes), classes, dtype="float32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        return super().compute_loss(x, self._targets(y), y_pred, sample_weight, **kwargs)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, self._targets(y), y_pred, sample_weight)

    # Keras's own steps on the mixed batch; `fit` hands JAX's its state too.
    def train_step(self, *args):
        return backend.prepared_step(self, lambda data: self._with_labels(data, training=True), super().train_step, *args)

    def test_step(self, *args):
        return backend.prepared_step(self, lambda data: self._with_labels(data, training=False), super().test_step, *args)

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "mixing": keras.saving.serialize_keras_object(self.mixing),
            "augmentation": keras.saving.serialize_keras_object(self.augmentation),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("model", "mixing", "augmentation"):
            config[key] = keras.saving.deserialize_keras_object(config.get(key), custom_objects=custom_objects)
        return cls(**config)
