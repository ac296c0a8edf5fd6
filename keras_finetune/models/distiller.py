"""Knowledge distillation as a `keras.Model` you compile and fit.

`Distiller(student, teacher)` keeps the keras.io example's API
(`compile(optimizer, metrics, student_loss_fn, distillation_loss_fn, alpha,
temperature)`) and fixes what copies of it get wrong:

- The teacher is frozen and runs with `training=False`; gradients are taken
  over the student's variables only, so teacher weights and BatchNorm
  statistics never change.
- The default distillation term is `T² · KL(softmax(t/T) ‖ softmax(s/T))`,
  computed from log-softmax. Keras's `keras.distillation.Distiller` given the
  string "kl_divergence" skips the softmax and the T² factor.
- Models that end in a softmax are handled: the log of their probabilities
  stands in for their logits. Softmax is unchanged by adding a constant to
  every logit, so `softmax(log(p) / T)` equals `softmax(logits / T)`.
- Under a `tf.distribute` strategy the loss differentiated on each replica is
  divided by the replica count (gradients are summed across replicas), and the
  logged losses are not, so logs and updates equal a one-device run on the
  same global batch. Under `mixed_float16` the loss goes through the
  optimizer's loss scaling.

Reference: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", arXiv 1503.02531.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_finetune import backend
from keras_finetune.validation import check_fraction, check_not_empty, check_positive, ends_in_softmax, is_dataset

__all__ = ["Distiller"]

TEACHER_OUTPUTS = "teacher_outputs"
# Every reduction that averages over the batch; "sum" would change the loss's scale.
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "none", None)


def _check_model(model, argument: str) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Distiller needs `{argument}` to be a keras.Model. Received: "
            f"{argument}={model!r} of type {type(model).__name__}"
        )


def _output_size(model):
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    return outputs[0].shape[-1]


def _as_logits(outputs, probabilities: bool):
    outputs = ops.cast(outputs, "float32")
    if probabilities:
        # Probabilities that underflowed to 0 would give -inf; the smallest
        # normal float32 stands in for them.
        return ops.log(ops.maximum(outputs, np.finfo("float32").tiny))
    return outputs


def _loss_function(loss, argument: str):
    if loss is None:
        return None
    if isinstance(loss, str):
        return keras.losses.get(loss)
    if not callable(loss):
        raise TypeError(
            f"Distiller.compile needs `{argument}` to be a loss: a keras.losses.Loss, "
            f"a function (y_true, y_pred) or a loss name. Received: {argument}={loss!r}"
        )
    reduction = getattr(loss, "reduction", None) if isinstance(loss, keras.losses.Loss) else None
    if reduction not in _MEAN_REDUCTIONS:
        raise ValueError(
            f"Distiller averages `{argument}` over the batch (weighted by sample_weight), "
            f"so the loss's reduction must be a mean or 'none'. Received: "
            f"{argument}={loss!r} with reduction={reduction!r}"
        )
    return loss


def _per_sample(loss, y_true, y_pred):
    """The loss's unreduced values in float32, without Keras's replica scaling."""
    y_pred = ops.cast(y_pred, "float32")
    if isinstance(loss, keras.losses.Loss):
        return ops.cast(loss.call(ops.convert_to_tensor(y_true, loss.dtype), y_pred), "float32")
    return ops.cast(loss(y_true, y_pred), "float32")


def _weighted_mean(values, sample_weight=None, over_weights: bool = False):
    """Mean over the batch of `values * sample_weight` (Keras's sum_over_batch_size)."""
    if len(values.shape) == 0:  # an already reduced custom loss
        return values
    if sample_weight is None:
        return ops.mean(values)
    weights = ops.cast(sample_weight, "float32")
    while len(weights.shape) > len(values.shape):
        weights = ops.squeeze(weights, axis=-1)
    while len(weights.shape) < len(values.shape):
        weights = ops.expand_dims(weights, axis=-1)
    weights = ops.broadcast_to(weights, ops.shape(values))
    if over_weights:
        return ops.divide_no_nan(ops.sum(values * weights), ops.sum(weights))
    return ops.mean(values * weights)


def _is_cached(value) -> bool:
    return isinstance(value, dict) and TEACHER_OUTPUTS in value


def _unpack(data):
    """`(x, y, teacher_outputs, sample_weight)` from any element fit accepts.

    Cached teacher outputs arrive last, as `(x, y, {"teacher_outputs": t})`
    or `(x, {"teacher_outputs": t})` without labels, with an optional
    "sample_weight" entry in the dict: the dict keeps them apart from Keras's
    `(x, y, sample_weight)` convention.
    """
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and _is_cached(data[-1]):
        y = data[1] if len(data) == 3 else None
        return data[0], y, data[-1][TEACHER_OUTPUTS], data[-1].get("sample_weight")
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
        tuple(data) if isinstance(data, list) else data
    )
    return x, y, None, sample_weight


def _carries_teacher_outputs(data) -> bool:
    if not is_dataset(data):
        return False
    spec = data.element_spec
    return isinstance(spec, tuple) and len(spec) in (2, 3) and _is_cached(spec[-1])


@keras.saving.register_keras_serializable(package="keras_finetune")
class Distiller(keras.Model):
    """Trains `student` on true labels and on a frozen `teacher`'s outputs.

    The loss is `alpha * student_loss + (1 - alpha) * distillation_loss`. The
    student loss compares the student's outputs with the true labels; the
    distillation loss is, per sample, `T² · KL(softmax(t/T) ‖ softmax(s/T))`
    for teacher logits `t` and student logits `s` (log-probabilities stand in
    for the logits of a model that ends in a softmax). Both terms are averaged
    over the batch, weighted by `sample_weight` when one is given, and the
    student's regularization losses are added. Logs carry `loss`,
    `student_loss`, `distillation_loss` and the compiled metrics, which see
    the student's outputs and the true labels. `call` runs the student, so
    `predict` and `evaluate` are the student's.

    Subclass to change what is distilled: `teacher_forward(x)` produces the
    teacher's side, `student_forward(x, training)` returns the student's
    predictions and what the distillation term sees, and
    `distillation_loss(teacher_outputs, student_outputs)` returns the
    per-sample term (see `examples/feature_distillation.py`).

    Args:
        student: keras.Model. The model to train. It is also what
            `distiller.student.save(...)` stores as a plain Keras model.
        teacher: keras.Model. A trained model with the student's output
            size; it is frozen (`trainable = False`) here.

    Example:

    ```python
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        alpha=0.1,
        temperature=3.0,
    )
    distiller.fit(x_train, y_train, epochs=3)
    distiller.evaluate(x_test, y_test)
    ```

    References:
        Hinton et al., "Distilling the Knowledge in a Neural Network", arXiv 1503.02531.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, **kwargs):
        super().__init__(**kwargs)
        _check_model(student, "student")
        _check_model(teacher, "teacher")
        if student is teacher:
            raise ValueError(
                "Distiller needs two different models: the teacher is frozen, the student "
                f"trains. Received the same model as both: {student.name!r}"
            )
        sizes = _output_size(teacher), _output_size(student)
        if None not in sizes and sizes[0] != sizes[1]:
            raise ValueError(
                "Distiller needs teacher and student outputs of the same size. Received: "
                f"teacher output size {sizes[0]}, student output size {sizes[1]}"
            )
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self._teacher_probabilities = ends_in_softmax(teacher)
        self._student_probabilities = ends_in_softmax(student)
        # Nothing of its own to build: `call` is the student's.
        self.built = student.built and teacher.built
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha: float = 0.1,
        temperature: float = 3.0,
        **kwargs,
    ):
        """Configures the distillation.

        Args:
            optimizer: keras.optimizers.Optimizer or name. Trains the student.
                Defaults to "adam".
            metrics: list. Metrics of the student's outputs against the true
                labels. Defaults to None.
            student_loss_fn: keras.losses.Loss, function or name. The loss on
                the true labels. Required unless `alpha=0`. Defaults to None.
            distillation_loss_fn: keras.losses.Loss or function, or None.
                Called as `fn(softmax(t / T), softmax(s / T))` and multiplied
                by T², as in the keras.io example (pass
                `keras.losses.KLDivergence()` there). None uses an exact
                log-softmax KL divergence. Defaults to None.
            alpha: float in [0, 1]. Weight of the student loss; the
                distillation loss gets `1 - alpha`. Defaults to 0.1.
            temperature: float > 0. Softens both distributions. Defaults to 3.0.
            **kwargs: Passed to `keras.Model.compile` (for example
                `jit_compile`, `steps_per_execution`). `loss` is not accepted:
                use `student_loss_fn`.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "Distiller.compile takes the loss on the true labels as `student_loss_fn` "
                f"(the keras.io example's name). Received: loss={kwargs['loss']!r}"
            )
        kwargs.pop("loss", None)
        alpha = check_fraction(alpha, "alpha")
        temperature = check_positive(temperature, "temperature")
        if student_loss_fn is None and alpha > 0:
            raise ValueError(
                "Distiller.compile needs `student_loss_fn` (the loss on the true labels) "
                f"unless alpha=0. Received: student_loss_fn=None with alpha={alpha}"
            )
        self.student_loss_fn = _loss_function(student_loss_fn, "student_loss_fn")
        self.distillation_loss_fn = _loss_function(distillation_loss_fn, "distillation_loss_fn")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.teacher.trainable = False
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Exports the student for serving, as `self.student.export(...)`: the teacher is for training only."""
        return self.student.export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)

    # The three methods a subclass overrides to distil something else.

    def teacher_forward(self, x):
        """The teacher's side of the distillation term: its outputs in inference mode."""
        return self.teacher(x, training=False)

    def student_forward(self, x, training=False):
        """Returns `(predictions, outputs the distillation term compares)`."""
        predictions = self.student(x, training=training)
        return predictions, predictions

    def distillation_loss(self, teacher_outputs, student_outputs):
        """Per-sample `T² · KL(softmax(t/T) ‖ softmax(s/T))`, shape `(batch,)`."""
        teacher = _as_logits(teacher_outputs, self._teacher_probabilities) / self.temperature
        student = _as_logits(student_outputs, self._student_probabilities) / self.temperature
        if self.distillation_loss_fn is None:
            log_teacher = ops.log_softmax(teacher, axis=-1)
            log_student = ops.log_softmax(student, axis=-1)
            values = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)
        else:
            values = _per_sample(
                self.distillation_loss_fn,
                ops.softmax(teacher, axis=-1),
                ops.softmax(student, axis=-1),
            )
        return values * self.temperature**2

    # Training and evaluation.

    def _loss_terms(self, x, y, teacher_outputs, sample_weight, training: bool):
        if teacher_outputs is None:  # not cached: the teacher runs on this batch
            teacher_outputs = self.teacher_forward(x)
        teacher_outputs = keras.tree.map_structure(ops.stop_gradient, teacher_outputs)
        predictions, student_outputs = self.student_forward(x, training=training)
        over_weights = getattr(self.student_loss_fn, "reduction", None) == "mean_with_sample_weight"
        if y is None and self.alpha > 0:
            raise ValueError(
                "Distiller got data without labels, which needs alpha=0 (distillation "
                f"only). Received: alpha={self.alpha}"
            )
        if y is None or self.student_loss_fn is None:
            student_loss = ops.zeros((), "float32")
        else:  # logged even when alpha=0 gives it no weight
            student_loss = _weighted_mean(
                _per_sample(self.student_loss_fn, y, predictions), sample_weight, over_weights
            )
        distillation_loss = _weighted_mean(
            ops.cast(self.distillation_loss(teacher_outputs, student_outputs), "float32"),
            sample_weight,
        )
        loss = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        for regularization in self.student.losses:
            loss = loss + ops.cast(regularization, "float32")
        return predictions, {
            "loss": loss,
            "student_loss": student_loss,
            "distillation_loss": distillation_loss,
        }

    def _track(self, x, losses) -> None:
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        self.loss_tracker.update_state(losses["loss"], sample_weight=batch_size)
        self.student_loss_tracker.update_state(losses["student_loss"], sample_weight=batch_size)
        self.distillation_loss_tracker.update_state(
            losses["distillation_loss"], sample_weight=batch_size
        )

    def _step(self, data, training: bool):
        """The loss to differentiate and the logs of one batch; the trackers and metrics updated."""
        x, y, teacher_outputs, sample_weight = _unpack(data)
        predictions, losses = self._loss_terms(x, y, teacher_outputs, sample_weight, training=training)
        self._track(x, losses)
        return losses["loss"], self.compute_metrics(x, y, predictions, sample_weight)

    # One step per backend (`fit` hands JAX's its state too): the student's variables train.
    def train_step(self, *args):
        return backend.train_step(self, self._step, *args)

    def test_step(self, *args):
        return backend.test_step(self, self._step, *args)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Keras's symbolic build unpacks a cached batch the usual way.
        if _is_cached(y):
            y, sample_weight = None, y.get("sample_weight")
        elif _is_cached(sample_weight):
            sample_weight = sample_weight.get("sample_weight")
        return super().compute_metrics(x, y, y_pred, sample_weight)

    @property
    def metrics(self):
        ours = [self.loss_tracker, self.student_loss_tracker, self.distillation_loss_tracker]
        # Keras's own "loss" tracker stays empty: the losses above replace it.
        return ours + [
            m for m in super().metrics if m.name != "loss" and not any(m is o for o in ours)
        ]

    def fit(self, x=None, y=None, *args, **kwargs):
        check_not_empty(x, "x")
        if kwargs.get("validation_data") is not None:
            check_not_empty(kwargs["validation_data"], "validation_data")
        for data in (x, kwargs.get("validation_data")):
            if _carries_teacher_outputs(data):
                self._check_cached_pairs(data)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        # fit's own validation passes were checked when fit began.
        if _carries_teacher_outputs(x) and not kwargs.get("_use_cached_eval_dataset"):
            self._check_cached_pairs(x)
        return super().evaluate(x, y, *args, **kwargs)

    def _check_cached_pairs(self, dataset) -> None:
        """Refuses cached teacher outputs paired with inputs the teacher did not see.

        The teacher runs again on the first batch: random augmentation mapped
        over a cached dataset changes the inputs but not the cached outputs.
        """
        for element in dataset.take(1):
            x, _, cached, _ = _unpack(element)
            live = self.teacher_forward(x)
            for old, new in zip(keras.tree.flatten(cached), keras.tree.flatten(live)):
                old = np.asarray(ops.convert_to_numpy(old), "float32")
                new = np.asarray(ops.convert_to_numpy(new), "float32")
                scale = max(1.0, float(np.max(np.abs(new), initial=0.0)))
                if old.shape != new.shape or not np.allclose(old, new, rtol=0, atol=1e-2 * scale):
                    raise ValueError(
                        "The cached teacher outputs do not match the inputs they come with: "
                        "the teacher gives other outputs for the first batch (largest "
                        f"difference {np.max(np.abs(old - new)) if old.shape == new.shape else 'n/a'}"
                        f", shapes {old.shape} and {new.shape}). Random augmentation applied "
                        "after cache_teacher_outputs does this; augment before the teacher "
                        "runs, with a live teacher, or cache un-augmented data. "
                        f"Received: a dataset with element_spec={dataset.element_spec}"
                    )

    def cache_teacher_outputs(
        self, dataset, shuffle: bool = False, seed: int | None = None
    ):
        """Runs the teacher once and returns a dataset that carries its outputs.

        The returned dataset yields `(x, y, {"teacher_outputs": t})` (with a
        "sample_weight" entry when `dataset` had weights, and `(x, {...})`
        when it had no labels) in batches of the first batch's size. `fit`
        then skips the teacher. Inputs, labels and outputs are held in memory,
        as `Dataset.cache()` would hold them.

        Cache un-augmented data only: a random augmentation before this call
        is frozen to one draw, and `fit`/`evaluate` refuse a cached dataset
        whose inputs no longer give the cached outputs (they run the teacher
        on its first batch to check).

        Args:
            dataset: tf.data.Dataset. Batches of `x`, `(x, y)` or
                `(x, y, sample_weight)`.
            shuffle: bool. Reshuffle the samples every epoch. Defaults to False.
            seed: int or None. Seed of the shuffle. Defaults to None.

        Returns:
            A batched `tf.data.Dataset`.
        """
        if not is_dataset(dataset):
            raise TypeError(
                "cache_teacher_outputs needs a batched tf.data.Dataset. Received: "
                f"dataset of type {type(dataset).__name__}"
            )
        if _carries_teacher_outputs(dataset):
            raise ValueError(
                "cache_teacher_outputs got a dataset that already carries teacher outputs. "
                f"Received: element_spec={dataset.element_spec}"
            )
        forward = backend.compiled(self.teacher_forward)
        batches = []
        for element in dataset:
            x, y, _, sample_weight = _unpack(element)
            cached = {TEACHER_OUTPUTS: forward(keras.tree.map_structure(ops.convert_to_tensor, x))}
            if sample_weight is not None:
                cached["sample_weight"] = sample_weight
            batch = (x, cached) if y is None else (x, y, cached)
            batches.append(keras.tree.map_structure(ops.convert_to_numpy, batch))
        if not batches:
            raise ValueError("cache_teacher_outputs got a dataset that yields nothing.")
        import tensorflow as tf

        batch_size = len(keras.tree.flatten(batches[0][0])[0])
        samples = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *batches)
        cached = tf.data.Dataset.from_tensor_slices(samples)
        if shuffle:
            cached = cached.shuffle(len(keras.tree.flatten(samples)[0]), seed=seed)
        return cached.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    # Saving.

    def get_config(self):
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:  # compiled: our arguments join Keras's
            config.update(
                keras.saving.serialize_keras_object(
                    {
                        "student_loss_fn": self.student_loss_fn,
                        "distillation_loss_fn": self.distillation_loss_fn,
                        "alpha": self.alpha,
                        "temperature": self.temperature,
                    }
                )
            )
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)
