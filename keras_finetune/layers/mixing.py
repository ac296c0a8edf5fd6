"""MixUp, CutMix and a per-batch switch between them, for `(images, labels)`.

Keras 3's `keras.layers.MixUp`/`CutMix` mix labels only when handed the
`{"images", "labels"}` dict, need float one-hot labels, and inside a model
mix the images while leaving the labels alone, without a word. These layers
take `(images, labels)` the way a batched `tf.data` pipeline hands them over
(`ds.map(MixUp(num_classes=10))`), accept integer or one-hot labels and the
dict form, smooth the labels before mixing, and refuse to mix images without
their labels.

Each sample gets its own λ ~ Beta(α, α) and its partner from one random
permutation of the batch, shared by images and labels. CutMix pastes a box
from the partner and uses the box's area, after clipping at the borders, as
the label weight. The random draws (`get_random_transformation`) are apart
from applying them (`transform`), so a test can inject λ, partners and boxes.

`enabled` is a boolean variable the traced pipeline reads on every batch:
`keras_finetune.callbacks.StopMixing` turns it off for the last epochs (on
JAX, a compiled train step reads it when traced, and StopMixing has the
step traced again when it turns it off). Off,
or at inference (`training=False`), images pass through untouched and labels
come back one-hot (smoothed only in training).

References:
    Zhang et al., mixup: Beyond Empirical Risk Minimization, arXiv 1710.09412.
    Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers
    with Localizable Features, arXiv 1905.04899.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_finetune.layers.data_layer import DataLayer
from keras_finetune.validation import (
    check_channel_axis, check_data_format, check_fraction, check_positive, class_ids, is_int,
)

__all__ = ["CutMix", "MixUp", "MixUpOrCutMix"]


def _check_num_classes(num_classes):
    if num_classes is None:
        return None
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive int or None. Received: num_classes={num_classes!r}"
        )
    return num_classes


def _is_float(dtype) -> bool:
    return "float" in str(dtype)


def _is_integer(dtype) -> bool:
    return "int" in str(dtype)


class _Switch:
    """`enabled` where TensorFlow is not installed: the on/off value, with the variable's `assign` and `numpy`."""

    def __init__(self, value: bool):
        self.value = bool(value)

    def assign(self, value) -> None:
        self.value = bool(value)

    def numpy(self) -> np.bool_:
        return np.bool_(self.value)


class MixingLayer(DataLayer):
    """Input handling, label preparation, the on/off switch and config of the mixing layers."""

    # The dtype images of an integer type come back as; None keeps the type.
    _integer_images_become = "float32"

    def __init__(self, num_classes=None, label_smoothing=0.0, data_format=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.num_classes = _check_num_classes(num_classes)
        self.label_smoothing = check_fraction(label_smoothing, "label_smoothing", below_one=True)
        self.data_format = check_data_format(data_format)
        try:
            import tensorflow as tf
        except ImportError:  # JAX or PyTorch alone: no pipeline can read the switch, only a traced step
            self.enabled = _Switch(True)
        else:
            # A TensorFlow variable on every backend: a pipeline's graph reads it on every batch. Not a weight.
            self.enabled = tf.Variable(True, trainable=False, name="mixing_enabled")
        # Set when a pipeline or a model first calls the layer (at trace time): StopMixing checks it.
        self.used = False
        self.built = True

    def _enabled(self):
        """The switch as this call's ops read it: the variable in TensorFlow, its value elsewhere (read when traced)."""
        return self.enabled if self.backend.name == "tensorflow" else bool(self.enabled.numpy())

    def call(self, images, labels=None, training=True):
        self.used = True
        if isinstance(images, dict):
            if labels is not None:
                raise ValueError(
                    f"{type(self).__name__} takes a dict or (images, labels), not both. "
                    f"Received: a dict and labels={labels!r}"
                )
            data = dict(images)
            data["images"], data["labels"] = self.call(
                data.get("images"), data.get("labels"), training=training
            )
            return data
        if labels is None:
            self._refuse_images_alone()
        images, labels = self._check_inputs(images, labels)
        images = self._cast_images(images)
        labels = self._one_hot(labels)
        if training is False:
            return images, labels
        if self.label_smoothing:  # uniform smoothing, as losses.smooth_labels
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / labels.shape[-1]

        # Off, the draws are the identity (λ = 1, empty boxes): a tf.cond here would cost
        # ~10% of the throughput in a tf.data map.
        transformation = self.get_random_transformation(images)
        mixed_images, mixed_labels = self.transform(images, labels, transformation)
        if self.backend.name == "tensorflow":  # a cond may lose the static shape
            mixed_images.set_shape(images.shape)
            mixed_labels.set_shape(labels.shape)
        return mixed_images, mixed_labels

    def _refuse_images_alone(self):
        raise ValueError(
            f"{type(self).__name__} mixes images and labels together, and received no "
            "labels. Inside a model it never sees the labels, so it would mix the images "
            "alone. Map it over the batched dataset instead, "
            f"`train_ds.map({type(self).__name__}(num_classes=...))`, or wrap the model "
            "in `keras_finetune.models.MixingModel(model, layer)` to mix on the "
            "accelerator. Received: labels=None"
        )

    def _check_inputs(self, images, labels):
        images = self.backend.convert_to_tensor(images)
        labels = self.backend.convert_to_tensor(labels)
        if len(images.shape) != 4:
            detail = (
                " A single image cannot be mixed: batch the dataset before mapping this layer."
                if len(images.shape) == 3
                else ""
            )
            raise ValueError(
                f"`images` must be a batch of rank 4 (batch, height, width, channels or "
                f"channels-first).{detail} Received: images of shape {tuple(images.shape)}"
            )
        check_channel_axis(images.shape, self.data_format, type(self).__name__)
        batch, label_batch = images.shape[0], labels.shape[0] if len(labels.shape) else None
        if len(labels.shape) == 0 or (batch is not None and label_batch is not None and batch != label_batch):
            raise ValueError(
                "`labels` must have the same batch size as `images`. "
                f"Received: images of shape {tuple(images.shape)}, labels of shape {tuple(labels.shape)}"
            )
        if batch is None or label_batch is None:  # known only when a TensorFlow graph runs
            import tensorflow as tf

            same = tf.debugging.assert_equal(
                tf.shape(images)[0], tf.shape(labels)[0], message="labels and images differ in batch size"
            )
            with tf.control_dependencies([same]):
                images = tf.identity(images)
        return images, labels

    def _cast_images(self, images):
        if _is_float(images.dtype) or self._integer_images_become is None:
            return images
        return self.backend.cast(images, self._integer_images_become)

    def _one_hot(self, labels):
        """Integer ids (batch,) or (batch, 1) → float one-hot; float labels are taken as one-hot."""
        labels = self.backend.convert_to_tensor(labels)
        if _is_integer(labels.dtype):
            if self.num_classes is None:
                raise ValueError(
                    f"Integer labels need `num_classes` to become one-hot. Pass "
                    f"{type(self).__name__}(num_classes=...). Received: num_classes=None"
                )
            if len(labels.shape) == 2 and labels.shape[-1] == 1:
                labels = labels[:, 0]
            if len(labels.shape) != 1:
                raise ValueError(
                    "Integer labels must have shape (batch,) or (batch, 1). "
                    f"Received: labels of shape {tuple(labels.shape)}"
                )
            return self.backend.nn.one_hot(class_ids(labels, self.num_classes), self.num_classes, dtype="float32")
        if not _is_float(labels.dtype) or len(labels.shape) != 2 or labels.shape[-1] == 1:
            raise ValueError(
                "`labels` must be integer class ids or float one-hot rows of shape "
                "(batch, num_classes); one float column is class ids, to be passed as integers "
                f"with `num_classes`. Received: labels of dtype {keras.backend.standardize_dtype(labels.dtype)} "
                f"and shape {tuple(labels.shape)}"
            )
        if self.num_classes is not None and labels.shape[-1] != self.num_classes:
            raise ValueError(
                f"One-hot labels have {labels.shape[-1]} classes on their last axis. "
                f"Received: num_classes={self.num_classes}"
            )
        return labels

    def _generator(self):
        return self._get_seed_generator(self.backend.name)

    def _spatial_size(self, images):
        shape = self.backend.core.shape(images)
        if self.data_format == "channels_first":
            return shape[0], shape[2], shape[3]
        return shape[0], shape[1], shape[2]

    def _permutation(self, batch_size):
        ops = self.backend
        return ops.cast(ops.numpy.argsort(ops.random.uniform((batch_size,), seed=self._generator())), "int32")

    def _beta(self, batch_size, alpha):
        """λ ~ Beta(α, α) as G1 / (G1 + G2), in log space: G ~ Gamma(α) is Gamma(α + 1)·U^(1/α).

        For a small α both gammas underflow to 0 in float32, and
        `keras.random.beta` then returns 0.5 for most samples, the opposite
        of what a small α means (λ near 0 or 1).
        """
        ops, shape = self.backend, (2, batch_size)
        log_gamma = ops.numpy.log(ops.random.gamma(shape, alpha + 1.0, seed=self._generator()))
        log_uniform = ops.numpy.log(ops.random.uniform(shape, minval=np.finfo("float32").tiny, seed=self._generator()))
        log_g = log_gamma + log_uniform / alpha
        return ops.nn.sigmoid(log_g[0] - log_g[1])

    def compute_output_spec(self, images, labels=None, training=True):
        if isinstance(images, dict):
            return super().compute_output_spec(images, labels, training=training)
        if labels is None:
            self._refuse_images_alone()
        dtype = images.dtype
        if not _is_float(dtype) and self._integer_images_become is not None:
            dtype = self._integer_images_become
        labels_dtype = labels.dtype if _is_float(labels.dtype) else "float32"
        num_classes = self.num_classes if not _is_float(labels.dtype) else labels.shape[-1]
        return (
            keras.KerasTensor(images.shape, dtype=dtype),
            keras.KerasTensor((labels.shape[0], num_classes), dtype=labels_dtype),
        )

    def get_config(self):
        config = {
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
            "data_format": self.data_format,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


def _mix(ops, values, lam, permutation):
    """λ·x + (1−λ)·x[perm] along the batch: one gather and one multiply-add.

    Written this way (not x[perm] + λ·(x − x[perm])) it is about 1.4x faster in a
    tf.data map, and exact at λ = 1.
    """
    values, permutation = ops.convert_to_tensor(values), ops.convert_to_tensor(permutation)
    partners = ops.numpy.take(values, permutation, axis=0)
    lam = ops.cast(ops.numpy.reshape(lam, (-1,) + (1,) * (len(values.shape) - 1)), values.dtype)
    return lam * values + (1.0 - lam) * partners


def _cut_boxes(ops, generator, lam, height, width):
    """Boxes (y1, x1, y2, x2) of area ≈ (1−λ)·H·W around a uniform centre, clipped at the borders."""
    batch_size = ops.core.shape(lam)[0]
    cut = ops.numpy.sqrt(1.0 - ops.cast(lam, "float32"))
    cut_h = ops.cast(cut * ops.cast(height, "float32"), "int32")
    cut_w = ops.cast(cut * ops.cast(width, "float32"), "int32")
    centre_y = ops.random.randint((batch_size,), 0, height, seed=generator, dtype="int32")
    centre_x = ops.random.randint((batch_size,), 0, width, seed=generator, dtype="int32")
    y1 = centre_y - cut_h // 2
    x1 = centre_x - cut_w // 2
    return ops.numpy.stack(
        [
            ops.numpy.clip(y1, 0, height),
            ops.numpy.clip(x1, 0, width),
            ops.numpy.clip(y1 + cut_h, 0, height),
            ops.numpy.clip(x1 + cut_w, 0, width),
        ],
        axis=1,
    )


def _box_lam(ops, boxes, height, width):
    """The share of each image left outside its box: the area-corrected label weight."""
    boxes = ops.convert_to_tensor(boxes)
    area = ops.cast((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), "float32")
    return 1.0 - area / ops.cast(height * width, "float32")


def _cut_images(ops, images, boxes, permutation, data_format):
    """Paste each partner's box into the image with one gather and one select, any dtype.

    The select runs on a (batch, rows, columns·channels) view, or
    (batch, channels, rows·columns) for channels-first, so that its mask
    broadcasts over a leading axis: a mask broadcast over the channels axis
    made the select 2x slower.
    """
    boxes, permutation = ops.convert_to_tensor(boxes), ops.convert_to_tensor(permutation)
    shape = ops.core.shape(images)
    if data_format == "channels_first":
        height, width, channels = shape[2], shape[3], shape[1]
    else:
        height, width, channels = shape[1], shape[2], shape[3]
    rows = ops.numpy.arange(height, dtype="int32")[None, :]
    cols = ops.numpy.arange(width, dtype="int32")[None, :]
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 2:3])  # (batch, height)
    in_cols = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 3:4])  # (batch, width)
    if data_format == "channels_first":
        mask = ops.numpy.reshape(in_rows[:, :, None] & in_cols[:, None, :], (-1, 1, height * width))
        view = (shape[0], channels, height * width)
    else:
        in_cols = ops.numpy.reshape(ops.numpy.repeat(in_cols, channels, axis=1), (-1, 1, width * channels))
        mask = in_rows[:, :, None] & in_cols
        view = (shape[0], height, width * channels)
    partners = ops.numpy.reshape(ops.numpy.take(images, permutation, axis=0), view)
    return ops.numpy.reshape(ops.numpy.where(mask, partners, ops.numpy.reshape(images, view)), shape)


@keras.saving.register_keras_serializable(package="keras_finetune")
class MixUp(MixingLayer):
    """MixUp for `(images, labels)` batches: blend each sample with a random partner.

    Each sample `i` gets `λ_i ~ Beta(α, α)` and a partner `p(i)` from one
    random permutation of the batch: `x_i ← λ_i x_i + (1 − λ_i) x_p(i)` and the
    same for its (smoothed, one-hot) label. Integer images come back float32
    in their original range (a blend is not an integer); float16/bfloat16 and
    float32 keep their dtype. What Keras's `MixUp` lacks: the
    `(images, labels)` call, integer labels, label smoothing, an error instead
    of silently mixing images alone, and the on/off switch.

    Args:
        alpha: float. α > 0 of the Beta distribution; small values keep most
            samples close to themselves. Defaults to 0.2.
        num_classes: int. Number of classes, needed for integer labels (which
            come back one-hot float32); checked against one-hot labels.
            Defaults to `None`.
        label_smoothing: float. ε in [0, 1), applied before mixing: the true
            class gets `1 − ε + ε/K`. Defaults to 0.
        data_format: str. `"channels_last"` or `"channels_first"`. Defaults
            to Keras's `image_data_format()`.
        seed: int. Seed of the random draws. Defaults to `None`.

    Example:

    ```python
    train_ds = train_ds.batch(64).map(MixUp(num_classes=10, label_smoothing=0.1))
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    model.fit(train_ds)
    ```

    References:
        Zhang et al., mixup: Beyond Empirical Risk Minimization,
        arXiv 1710.09412.
    """

    def __init__(self, alpha=0.2, num_classes=None, label_smoothing=0.0, data_format=None, seed=None, **kwargs):
        super().__init__(num_classes, label_smoothing, data_format, seed, **kwargs)
        self.alpha = check_positive(alpha, "alpha")

    def get_random_transformation(self, images):
        """Draw `{"lam": (batch,), "permutation": (batch,)}`; λ = 1 while `enabled` is off."""
        batch_size = self.backend.core.shape(images)[0]
        lam = self.backend.numpy.where(self._enabled(), self._beta(batch_size, self.alpha), 1.0)
        return {"lam": lam, "permutation": self._permutation(batch_size)}

    def transform(self, images, labels, transformation):
        """Mix float images and one-hot labels with the given λ and permutation."""
        lam, permutation = transformation["lam"], transformation["permutation"]
        return _mix(self.backend, images, lam, permutation), _mix(self.backend, labels, lam, permutation)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_finetune")
class CutMix(MixingLayer):
    """CutMix for `(images, labels)` batches: paste a box from a random partner.

    Sample `i` draws `λ_i ~ Beta(α, α)` and a box of `√(1−λ_i)` times the
    image's height and width around a uniform centre, clipped at the borders;
    the box's pixels come from its partner `p(i)` (one permutation for the
    batch). The label weight is the area actually kept, `1 − box/(H·W)`, so
    a box cut short by a border counts for what it covers. Pixels are copied,
    never blended: uint8 images stay uint8 and every dtype is kept. What
    Keras's `CutMix` lacks: the `(images, labels)` call, integer labels, label
    smoothing, the area correction per sample, and a single vectorised select
    instead of per-image slicing.

    Args:
        alpha: float. α > 0 of the Beta distribution. Defaults to 1.0
            (box area uniform).
        num_classes: int. Number of classes, needed for integer labels.
            Defaults to `None`.
        label_smoothing: float. ε in [0, 1), applied before mixing.
            Defaults to 0.
        data_format: str. `"channels_last"` or `"channels_first"`. Defaults
            to Keras's `image_data_format()`.
        seed: int. Seed of the random draws. Defaults to `None`.

    Example:

    ```python
    train_ds = train_ds.batch(64).map(CutMix(num_classes=10))
    ```

    References:
        Yun et al., CutMix: Regularization Strategy to Train Strong
        Classifiers with Localizable Features, arXiv 1905.04899.
    """

    _integer_images_become = None

    def __init__(self, alpha=1.0, num_classes=None, label_smoothing=0.0, data_format=None, seed=None, **kwargs):
        super().__init__(num_classes, label_smoothing, data_format, seed, **kwargs)
        self.alpha = check_positive(alpha, "alpha")

    def get_random_transformation(self, images):
        """Draw `{"boxes": (batch, 4) int32 y1, x1, y2, x2, "permutation": (batch,)}`.

        The boxes are empty while `enabled` is off.
        """
        batch_size, height, width = self._spatial_size(images)
        lam = self._beta(batch_size, self.alpha)
        boxes = _cut_boxes(self.backend, self._generator(), lam, height, width)
        return {
            "boxes": self.backend.numpy.where(self._enabled(), boxes, self.backend.numpy.zeros_like(boxes)),
            "permutation": self._permutation(batch_size),
        }

    def transform(self, images, labels, transformation):
        """Paste the given boxes from the permuted batch; weight labels by the area kept."""
        boxes, permutation = transformation["boxes"], transformation["permutation"]
        _, height, width = self._spatial_size(images)
        ops = self.backend
        lam = _box_lam(ops, boxes, height, width)
        return _cut_images(ops, images, boxes, permutation, self.data_format), _mix(ops, labels, lam, permutation)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_finetune")
class MixUpOrCutMix(MixingLayer):
    """Per batch: mix with probability `prob`, by CutMix with probability `switch_prob`, else MixUp.

    timm's `Mixup` in batch mode. One uniform draw per batch decides whether
    it is mixed, a second whether by CutMix; a batch left unmixed still gets
    its labels one-hot and smoothed. Integer images come back float32 (a
    dataset has one dtype, and a MixUp batch is not integer).

    Args:
        mixup_alpha: float. α > 0 for MixUp's λ. Defaults to 0.2.
        cutmix_alpha: float. α > 0 for CutMix's λ. Defaults to 1.0.
        switch_prob: float in [0, 1]. Probability that a mixed batch uses
            CutMix. Defaults to 0.5.
        prob: float in [0, 1]. Probability that a batch is mixed at all.
            Defaults to 1.0.
        num_classes: int. Number of classes, needed for integer labels.
            Defaults to `None`.
        label_smoothing: float. ε in [0, 1), applied before mixing.
            Defaults to 0.
        data_format: str. `"channels_last"` or `"channels_first"`. Defaults
            to Keras's `image_data_format()`.
        seed: int. Seed of the random draws. Defaults to `None`.

    Example:

    ```python
    mixing = MixUpOrCutMix(num_classes=1000, label_smoothing=0.1)
    train_ds = train_ds.batch(128).map(mixing, num_parallel_calls=tf.data.AUTOTUNE)
    ```

    References:
        Zhang et al., arXiv 1710.09412; Yun et al., arXiv 1905.04899.
    """

    def __init__(
        self,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        switch_prob=0.5,
        prob=1.0,
        num_classes=None,
        label_smoothing=0.0,
        data_format=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(num_classes, label_smoothing, data_format, seed, **kwargs)
        self.mixup_alpha = check_positive(mixup_alpha, "mixup_alpha")
        self.cutmix_alpha = check_positive(cutmix_alpha, "cutmix_alpha")
        self.switch_prob = check_fraction(switch_prob, "switch_prob")
        self.prob = check_fraction(prob, "prob")

    def get_random_transformation(self, images):
        """Draw `mix`, `use_cutmix` (scalar bools), `lam`, `boxes` and `permutation`.

        `mix` is False while `enabled` is off.
        """
        batch_size, height, width = self._spatial_size(images)
        ops = self.backend
        coins = ops.random.uniform((2,), seed=self._generator())
        use_cutmix = coins[1] < self.switch_prob
        lam = ops.numpy.where(
            use_cutmix, self._beta(batch_size, self.cutmix_alpha), self._beta(batch_size, self.mixup_alpha)
        )
        return {
            "mix": ops.numpy.logical_and(coins[0] < self.prob, self._enabled()),
            "use_cutmix": use_cutmix,
            "lam": lam,
            "boxes": _cut_boxes(ops, self._generator(), lam, height, width),
            "permutation": self._permutation(batch_size),
        }

    def transform(self, images, labels, transformation):
        """Apply MixUp (with `lam`), CutMix (with `boxes`) or nothing, as the flags say."""
        ops, permutation = self.backend, transformation["permutation"]
        _, height, width = self._spatial_size(images)

        def cutmix():
            boxes = transformation["boxes"]
            lam = _box_lam(ops, boxes, height, width)
            return _cut_images(ops, images, boxes, permutation, self.data_format), _mix(ops, labels, lam, permutation)

        def mixup():
            lam = transformation["lam"]
            return _mix(ops, images, lam, permutation), _mix(ops, labels, lam, permutation)

        return ops.core.cond(
            transformation["mix"],
            lambda: ops.core.cond(transformation["use_cutmix"], cutmix, mixup),
            lambda: (images, labels),
        )

    def get_config(self):
        config = {
            "mixup_alpha": self.mixup_alpha,
            "cutmix_alpha": self.cutmix_alpha,
            "switch_prob": self.switch_prob,
            "prob": self.prob,
        }
        return {**super().get_config(), **config}
