"""Learning-rate range test: sweep the rate up exponentially, watch the loss.

Keras has none. `LRFinder` is the callback that sweeps and records;
`lr_find` runs it on a compiled model and puts the weights and the optimizer
back afterwards, so it can be run again after each unfreeze on whatever is
trainable at that moment.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_finetune import backend
from keras_finetune.callbacks import _optimizer
from keras_finetune.report import pyplot
from keras_finetune.validation import check_count, check_number, check_positive

__all__ = ["LRFinder", "lr_find"]


class LRFinder(keras.callbacks.Callback):
    """Raise the learning rate exponentially each step and record the loss.

    Step `k` of `steps` trains at `min_lr * (max_lr / min_lr) ** (k / (steps - 1))`.
    The loss of each step is recovered exactly from the running mean Keras
    logs, which assumes batches of equal size (`lr_find` makes them so).
    Training stops early once the smoothed loss exceeds `stop_factor` times
    its best value, or is not finite. The callback does not restore the
    weights: `lr_find` does.

    After training, `learning_rates`, `losses` and `smoothed_losses` hold the
    curve; `suggestion` is the rate where the smoothed loss falls fastest
    (against log rate) before its minimum, and `plot(path)` draws it.

    Args:
        min_lr: float. The first rate, > 0. Defaults to `1e-7`.
        max_lr: float. The last rate, > `min_lr`. Defaults to `10.0`.
        steps: int. Steps of the sweep, >= 2. Defaults to `100`.
        smoothing: float. Factor of the bias-corrected exponential moving
            average of the loss, in [0, 1). Defaults to `0.98`.
        stop_factor: float. Stop when the smoothed loss exceeds this many
            times its minimum, > 1. Defaults to `4.0`.

    Example:

    ```python
    finder = LRFinder(steps=100)
    model.fit(train_ds.repeat(), epochs=1, steps_per_epoch=100, callbacks=[finder])
    print(finder.suggestion)  # then restore the weights: or use lr_find
    ```

    References:
        Smith, Cyclical Learning Rates for Training Neural Networks,
        arXiv 1506.01186.
    """

    def __init__(
        self,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        steps: int = 100,
        smoothing: float = 0.98,
        stop_factor: float = 4.0,
    ):
        super().__init__()
        min_lr, max_lr = check_positive(min_lr, "min_lr"), check_positive(max_lr, "max_lr")
        stop_factor, smoothing = check_number(stop_factor, "stop_factor"), check_number(smoothing, "smoothing")
        if not min_lr < max_lr:
            raise ValueError(
                f"LRFinder needs 0 < min_lr < max_lr. Received: min_lr={min_lr}, max_lr={max_lr}"
            )
        check_count(steps, "steps", 2)
        if not 0 <= smoothing < 1:
            raise ValueError(f"`smoothing` must be in [0, 1). Received: smoothing={smoothing}")
        if not stop_factor > 1:
            raise ValueError(f"`stop_factor` must be > 1. Received: stop_factor={stop_factor}")
        self.min_lr, self.max_lr, self.steps = float(min_lr), float(max_lr), int(steps)
        self.smoothing, self.stop_factor = float(smoothing), float(stop_factor)
        self.learning_rates, self.losses, self.smoothed_losses = [], [], []

    def on_train_begin(self, logs=None) -> None:
        _optimizer.check_settable(self.model.optimizer, "LRFinder")
        self.learning_rates, self.losses, self.smoothed_losses = [], [], []
        self._average = 0.0
        self._previous_mean = 0.0

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        k = len(self.losses)
        if k >= self.steps:
            self.model.stop_training = True
            return
        rate = self.min_lr * (self.max_lr / self.min_lr) ** (k / (self.steps - 1))
        backend.sync(self.model)
        _optimizer.set_learning_rate(self.model.optimizer, rate)
        self.learning_rates.append(rate)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if len(self.losses) == len(self.learning_rates):
            return  # the step after the sweep ended
        mean = float(logs["loss"])
        # Keras logs the mean over the epoch so far; undo it.
        loss = (batch + 1) * mean - batch * (self._previous_mean if batch else 0.0)
        self._previous_mean = mean
        self.losses.append(loss)
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** len(self.losses))
        self.smoothed_losses.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.stop_factor * min(self.smoothed_losses):
            self.model.stop_training = True

    @property
    def min_loss_lr(self) -> float:
        """The rate at the lowest smoothed loss."""
        self._check_swept()
        return self.learning_rates[int(np.nanargmin(self.smoothed_losses))]

    @property
    def suggestion(self) -> float:
        """The rate of steepest descent of the smoothed loss before its minimum.

        The first 10 steps (at most half of those before the minimum) are
        skipped, as fastai's v1 finder skips them: their average still rests
        on a few batches, and one easy batch there looks like the steepest
        descent of the sweep.
        """
        self._check_swept()
        end = int(np.nanargmin(self.smoothed_losses)) + 1
        if end < 3:  # the loss never fell: the sweep started too high
            return self.min_loss_lr / 10
        slopes = np.gradient(
            np.asarray(self.smoothed_losses[:end]), np.log10(self.learning_rates[:end])
        )
        skip = min(10, end // 2)
        return self.learning_rates[skip + int(np.argmin(slopes[skip:]))]

    def _check_swept(self) -> None:
        if not self.losses:
            raise ValueError("LRFinder has no losses yet: run `fit` with it (or `lr_find`) first.")

    def plot(self, path: str) -> str:
        """Save the loss against the rate (log scale) as a PNG; needs matplotlib."""
        self._check_swept()
        plt = pyplot("LRFinder.plot")
        rates, suggestion = self.learning_rates[: len(self.losses)], self.suggestion
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(rates, self.losses, alpha=0.3, label="loss")
        axes.plot(rates, self.smoothed_losses, label="smoothed")
        axes.axvline(suggestion, color="red", linestyle="--", label=f"suggestion {suggestion:.2g}")
        axes.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR range test")
        axes.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path


def _equal_batches(data, batch_size: int):
    """An endless dataset of equal-sized batches from a dataset or (x, y)."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        first = tf.nest.flatten(next(iter(data)))[0]
        batch_size = int(first.shape[0])
        return data.unbatch().repeat().batch(batch_size, drop_remainder=True)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        count = len(data[0])
        dataset = tf.data.Dataset.from_tensor_slices(tuple(data))
        # One order for every iterator: JAX's `fit` draws a batch from an iterator of its own before training.
        dataset = dataset.shuffle(count, seed=0, reshuffle_each_iteration=False)
        return dataset.repeat().batch(min(batch_size, count), drop_remainder=True)
    raise TypeError(
        "`data` must be a batched tf.data.Dataset or an (x, y) tuple of arrays. "
        f"Received: data of type {type(data).__name__}"
    )


def lr_find(
    model: keras.Model,
    data,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    batch_size: int = 32,
    plot_path: str | None = None,
    **finder_kwargs,
) -> LRFinder:
    """Run an LR range test on a compiled model and restore it afterwards.

    Trains the variables that are trainable now, for `steps` steps (or until
    the loss diverges) with a fresh copy of the compiled optimizer, then puts
    every weight (BatchNorm statistics included), the compiled optimizer
    (untouched, built or not) and the traced train function back. Run it
    again after an unfreeze to pick the rate of the next phase.

    Args:
        model: keras.Model. A compiled model.
        data: A batched `tf.data.Dataset` (re-batched to equal batches of its
            first batch's size and repeated) or an `(x, y)` tuple of arrays.
        min_lr: float. The first rate. Defaults to `1e-7`.
        max_lr: float. The last rate. Defaults to `10.0`.
        steps: int. Steps of the sweep. Defaults to `100`.
        batch_size: int. Batch size for `(x, y)` arrays. Defaults to `32`.
        plot_path: str. Save the curve there as a PNG when matplotlib is
            installed (a warning otherwise). Defaults to `None`.
        **finder_kwargs: `smoothing`, `stop_factor` of `LRFinder`.

    Returns:
        The `LRFinder`, with `learning_rates`, `losses`, `smoothed_losses`,
        `suggestion` and `plot`.

    Example:

    ```python
    finder = keras_finetune.lr_find(model, train_ds, steps=100)
    model.optimizer.learning_rate = finder.suggestion
    ```
    """
    if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
        raise ValueError(f"lr_find needs a compiled keras.Model. Received: model={model!r}")
    finder = LRFinder(min_lr, max_lr, steps, **finder_kwargs)
    dataset = _equal_batches(data, batch_size)
    saved = [np.array(v.numpy()) for v in model.weights]
    original, train_function, history = model.optimizer, model.train_function, getattr(model, "history", None)
    with backend.scope(model):
        model.optimizer = original.__class__.from_config(original.get_config())
    model.train_function = None
    try:
        model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[finder], shuffle=False, verbose=0)
    finally:
        model.optimizer, model.train_function, model.history = original, train_function, history
        model.stop_training = False
        for variable, value in zip(model.weights, saved):
            variable.assign(value)
    if plot_path is not None:
        try:
            finder.plot(plot_path)
        except ImportError as error:
            import warnings

            warnings.warn(f"lr_find did not save {plot_path}: {error}", stacklevel=2)
    return finder
