"""The package's checks of what a caller hands over: arguments, data formats, class ids, models.

Every public entry point checks its arguments here, at the call, so a bad
value fails with the argument's name and the value received instead of a
NaN loss or an error deep inside TensorFlow twenty steps later. Numbers must
be finite, booleans real booleans (the string "False" is true in Python),
ranges ordered. Class ids are checked where labels enter a graph
(`class_ids`), with asserts that cost nothing measurable (see
benchmarks/RESULTS.md). XLA drops asserts: inside a model compiled with
`jit_compile=True` the label checks of the losses do not run, nor inside a
compiled JAX step, which cannot see values.

Nothing here imports TensorFlow: data that is a `tf.data.Dataset` or a
TensorFlow tensor comes from a program that imported it already.
"""

from __future__ import annotations

import importlib
import math
import sys

import keras
import numpy as np

DATA_FORMATS = ("channels_last", "channels_first")
# The channel counts of images: grey, grey with alpha, RGB, RGBA.
_IMAGE_CHANNELS = (1, 2, 3, 4)


def is_int(value) -> bool:
    """An int or numpy integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int, float or numpy number, and not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_count(value, argument: str, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int, or a ValueError naming `argument` unless it is an int in [minimum, maximum]."""
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"`{argument}` must be an int {bound}. Received: {argument}={value!r}")
    return int(value)


def check_number(value, argument: str, low: float = -math.inf, high: float = math.inf, *, open_low=False, open_high=False) -> float:
    """`value` as a float: a TypeError unless a number, a ValueError unless finite and within the bounds."""
    if not is_number(value):
        raise TypeError(f"`{argument}` must be a number. Received: {argument}={value!r}")
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (math.isfinite(value) and above and below):
        raise ValueError(f"`{argument}` must be {_bounds(low, high, open_low, open_high)}. Received: {argument}={value!r}")
    return float(value)


def _bounds(low: float, high: float, open_low: bool, open_high: bool) -> str:
    """The bounds in words: "a finite number > 0", "a number in [0, 1)"."""
    if high == math.inf:
        return "a finite number" if low == -math.inf else f"a finite number {'>' if open_low else '>='} {low:g}"
    return f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"


def check_positive(value, argument: str) -> float:
    """`value` as a float, or an error naming `argument` unless it is a finite number > 0."""
    return check_number(value, argument, 0.0, open_low=True)


def check_fraction(value, argument: str, *, below_one: bool = False) -> float:
    """`value` as a float, or an error naming `argument` unless it is in [0, 1] ([0, 1) with `below_one`)."""
    return check_number(value, argument, 0.0, 1.0, open_high=below_one)


def check_bool(value, argument: str) -> bool:
    """`value` as a bool, or a TypeError naming `argument`: a string such as "False" is not taken as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{argument}` must be True or False. Received: {argument}={value!r}")
    return bool(value)


def check_pair(value, argument: str, low: float = -math.inf, high: float = math.inf, *, open_low=False, strict=False) -> tuple[float, float]:
    """A (min, max) pair of finite numbers, min <= max (min < max when `strict`), within [low, high]
    ((low, high] with `open_low`)."""
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"`{argument}` must be a (min, max) pair. Received: {argument}={value!r}") from None
    if not (is_number(first) and is_number(second)):
        raise TypeError(f"`{argument}` must be a pair of numbers. Received: {argument}={value!r}")
    above = first > low if open_low else first >= low
    ordered = first < second if strict else first <= second
    if not (math.isfinite(first) and math.isfinite(second) and above and ordered and second <= high):
        order = "min < max" if strict else "min <= max"
        within = "" if (low, high) == (-math.inf, math.inf) else (
            f", within {'(' if open_low else '['}{low:g}, {high:g}]"
        )
        raise ValueError(
            f"`{argument}` must be a range (min, max) of finite numbers with {order}{within}. "
            f"Received: {argument}={value!r}"
        )
    return float(first), float(second)


def check_layer(value, argument: str) -> None:
    if not isinstance(value, keras.layers.Layer):
        raise TypeError(
            f"`{argument}` must be a keras Layer or Model. "
            f"Received: {argument}={value!r} of type {type(value).__name__}"
        )


def check_epoch(value, argument: str) -> None:
    """A ValueError naming `argument` unless it is an int epoch >= 0 or a float fraction in [0, 1)."""
    if is_int(value):
        if value < 0:
            raise ValueError(
                f"`{argument}` must be an epoch >= 0 or a fraction in [0, 1). Received: {argument}={value!r}"
            )
    elif isinstance(value, (float, np.floating)):
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"A float `{argument}` is a fraction of the planned epochs, "
                f"in [0, 1). Received: {argument}={value!r}"
            )
    else:
        raise ValueError(
            f"`{argument}` must be an int epoch or a float fraction. Received: {argument}={value!r}"
        )


def epoch_of(value, epochs: int) -> int:
    """The epoch a `check_epoch` value names in a `fit` of `epochs` epochs (a fraction is floored)."""
    return int(value) if is_int(value) else math.floor(value * epochs)


def check_data_format(data_format) -> str:
    """`data_format`, or Keras's `image_data_format()` when None; a ValueError otherwise."""
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f'`data_format` must be "channels_last", "channels_first" or None. '
            f"Received: data_format={data_format!r}"
        )
    return data_format


def check_one_label_per_image(images, labels, argument: str) -> None:
    """A ValueError naming `argument` unless `images` and `labels` (arrays or tensors) hold as many samples."""
    shapes = [tuple(images.shape), tuple(labels.shape)]
    if not shapes[0] or not shapes[1] or shapes[0][0] != shapes[1][0]:
        raise ValueError(
            f"`{argument}` must be (images, labels) with one label per image. Received: arrays of shapes {shapes}"
        )


def check_not_empty(data, argument: str) -> None:
    """A ValueError when `data` holds nothing: a dataset of no batch, or arrays of no sample.

    Keras would run the epoch without a step and return a History without a loss.
    """
    if is_dataset(data):
        empty = int(data.cardinality()) == 0
    else:
        first = keras.tree.flatten(data)[0] if data is not None else None
        empty = getattr(first, "shape", None) is not None and len(first.shape) > 0 and first.shape[0] == 0
    if empty:
        raise ValueError(f"`{argument}` holds no sample: there is nothing to train or evaluate on. Received: {argument}={data!r}")


def check_channel_axis(shape, data_format: str, caller: str) -> None:
    """A ValueError when a batch of images plainly has its channels on the other axis than `data_format`.

    "Plainly": the axis `data_format` names is larger than 4 while the other
    end has 1 to 4 entries (a channels-last RGB batch called channels-first
    has 8 "channels" of 8x3 pixels). Unknown sizes pass.
    """
    if len(shape) != 4:
        return
    named, other = (shape[1], shape[-1]) if data_format == "channels_first" else (shape[-1], shape[1])
    if named is not None and other is not None and named not in _IMAGE_CHANNELS and other in _IMAGE_CHANNELS:
        where = "first" if data_format == "channels_last" else "last"
        raise ValueError(
            f"{caller} has data_format={data_format!r}, but the images look channels-{where}: "
            f"{other} channels on that axis, {named} on the axis data_format names. Pass "
            f"data_format='channels_{where}'. Received: images of shape {tuple(shape)}"
        )


def output_activation(model) -> str | None:
    """The activation the model's (single) output comes out of: "softmax", "linear" (logits), ...

    None when its last layer has no activation to read (a custom layer).
    """
    layer = model.layers[-1] if getattr(model, "layers", None) else None
    if isinstance(layer, keras.Model):
        return output_activation(layer)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", None)


def ends_in_softmax(model) -> bool:
    """Whether the model's (single) output comes out of a softmax: probabilities, not logits."""
    return output_activation(model) == "softmax"


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (so `tf.data` can read the data), importing it if so."""
    try:
        importlib.import_module("tensorflow")
    except ImportError:
        return False
    return True


def is_dataset(data) -> bool:
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow: a dataset means it is imported)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def traced(tensor) -> bool:
    """Whether `tensor` is a JAX tracer: a value of a function being compiled, known only when it runs."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(tensor, jax.core.Tracer)


def class_ids(labels, num_classes: int):
    """Integer class ids as int32, asserted in [0, num_classes): float ids must be whole numbers.

    Out-of-range ids would become all-zero one-hot rows (`one_hot`) and a
    float id 1.7 would be truncated to class 1, both silently. TensorFlow
    tensors (the TensorFlow backend, and a `tf.data` map on any backend) get
    asserts that run wherever the graph runs (a `tf.data` map, a traced
    loss) except under XLA. JAX and PyTorch tensors are checked when their
    values are known (eagerly, or in a PyTorch step), with a ValueError.
    """
    tf = sys.modules.get("tensorflow")
    if tf is not None and (keras.backend.backend() == "tensorflow" or tf.is_tensor(labels)):
        return _asserted_class_ids(tf, labels, num_classes)
    labels = keras.ops.convert_to_tensor(labels)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "float" not in dtype and "int" not in dtype:
        raise TypeError(f"Class ids must be integers. Received: labels of dtype {dtype}")
    if not traced(labels):
        check_class_ids(np.asarray(keras.ops.convert_to_numpy(labels)), num_classes)
    return keras.ops.cast(labels, "int32")


def check_class_ids(ids: np.ndarray, num_classes: int) -> None:
    """A ValueError unless the numbers `ids` are whole class ids in [0, num_classes)."""
    if ids.dtype.kind == "f" and not np.array_equal(ids, np.round(ids)):
        raise ValueError(f"class ids given as floats must be whole numbers (0., 1., ...). Received: labels {ids.ravel()[:5]}...")
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(
            f"class ids must be in [0, {num_classes}); ids 1..{num_classes} need `labels - 1`. "
            f"Received: labels from {ids.min()} to {ids.max()}"
        )


def _asserted_class_ids(tf, labels, num_classes: int):
    labels = tf.convert_to_tensor(labels)
    checks = []
    if labels.dtype.is_floating:
        checks.append(
            tf.debugging.assert_equal(
                labels, tf.round(labels), message="class ids given as floats must be whole numbers (0., 1., ...)"
            )
        )
    elif not labels.dtype.is_integer:
        raise TypeError(f"Class ids must be integers. Received: labels of dtype {labels.dtype.name}")
    hint = f"class ids must be in [0, {num_classes}); ids 1..{num_classes} need `labels - 1`"
    checks += [
        tf.debugging.assert_non_negative(labels, message=hint),
        tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=hint),
    ]
    with tf.control_dependencies(checks):
        return tf.cast(labels, "int32")
