"""The weight-averaging core that `SWA` and `EMA` share.

Both keep an average of every float weight of a model (trainable or not,
BatchNormalization statistics included) in float32 (float64 for float64
weights) on the model's device, fold the current weights into it as
`average += rate * (weights - average)` in one compiled function, leave out a
set of weights holding NaN or infinities, evaluate the average on validation
data and put it into the model, and keep it on disk so that a resumed `fit`
ends as an uninterrupted one. They differ only in the rate: `1 / (n + 1)` for
SWA's equal average of `n` earlier sets, `1 - decay` for an EMA.
"""

from __future__ import annotations

import contextlib
import os
import zipfile

import keras
import numpy as np

from keras_finetune import backend
from keras_finetune.callbacks.batchnorm_statistics import trained_batchnorm_layers, update_batchnorm

__all__ = ["WeightAverage"]


def _averaged(variable) -> bool:
    return "float" in str(variable.dtype)


def _copy(variable, dtype):
    # A copy, never the same buffer: JAX's `fit` hands the model's buffers to its step, which frees them.
    return keras.ops.copy(keras.ops.cast(variable, dtype))


class WeightAverage:
    """A running average of `model`'s float weights; equal (`decay=None`) or exponential.

    A weight joins the average at the first update that names it `live`
    and stays in it; until then its average is its value at `restart`.
    Exponential: with `warmup`, a weight's `n`-th update (from 0) uses the
    decay `min(decay, (1 + n) / (10 + n))`; a weight element that is NaN or
    infinite keeps its average. Equal: the `n`-th update has the rate
    `1 / (n + 1)`, and a set of weights with one NaN or infinity is left out
    whole (`take_skipped` counts them).
    """

    def __init__(self, model: keras.Model, decay: float | None = None, warmup: bool = False):
        self.model = model
        self.decay = decay
        self.warmup = warmup
        self.variables = [v for v in model.weights if _averaged(v)]
        self.averages = [
            keras.Variable(np.asarray(v.numpy()), dtype="float64" if "64" in str(v.dtype) else "float32", trainable=False)
            for v in self.variables
        ]
        # Updates each weight took part in; sets left out because a weight was not finite (equal average).
        self.counts = keras.Variable(np.zeros(len(self.variables), "float32"), trainable=False)
        self.skipped = keras.Variable(np.zeros((), "float32"), trainable=False)  # not weakly typed: JAX would trace again
        # Which weights join the average at the next update (with every weight that joined before).
        self.live = keras.Variable(np.ones(len(self.variables), bool), trainable=False)
        self.last_epoch = -1
        self._all_finite = None  # `broken`'s compiled check
        self.extras = {}  # the caller's own scalars, saved and loaded with the average
        # An EMA updates every step: fused by XLA, 2.6 ms an update for MobileNetV3Small's 210 weights
        # on 2 CPU cores, against 5 ms as TensorFlow ops (keeping the averages end to end in one
        # variable was slower still: the per-weight rates must be spread over the elements). SWA
        # updates once an epoch, where XLA's compile costs more than it saves (a `fit` of the demo's
        # recipe took 3.3-3.5 s with it, 2.7-2.8 s traced without it, 2.2-2.6 s without SWA).
        self._update = backend.assigning(
            self._fold_in,
            [self.counts, self.skipped, *self.averages],
            [self.live, self.counts, self.skipped, *self.averages, *self.variables],
            xla=decay is not None,
        )

    def restart(self) -> None:
        """Start over from the model's current weights: averages equal to them, no update counted."""
        for average, variable in zip(self.averages, self.variables):
            average.assign(_copy(variable, average.dtype))
        self.counts.assign(np.zeros(self.counts.shape, "float32"))
        self.skipped.assign(np.zeros((), "float32"))
        self.last_epoch = -1

    def _rates(self, counts):
        if self.decay is None:
            return 1.0 / (counts + 1.0)
        if not self.warmup:
            return keras.ops.full_like(counts, 1.0 - self.decay)
        return 1.0 - keras.ops.minimum(self.decay, (1.0 + counts) / (10.0 + counts))

    def _fold_in(self, values: list) -> list:
        """The update as a pure function: `live, counts, skipped, averages, weights` to `counts, skipped, averages`."""
        live, counts, skipped = values[:3]
        averages = values[3 : 3 + len(self.averages)]
        weights = [keras.ops.cast(w, a.dtype) for w, a in zip(values[3 + len(self.averages) :], averages)]
        joins = keras.ops.logical_or(live, counts > 0)
        if self.decay is None:  # whole sets: one weight not finite leaves the set out
            # One reduction over every element: a reduction per weight, stacked, took XLA 17 s to compile
            # for MobileNetV3Small's 210 weights on 2 CPU cores (JAX), against 3 s for this.
            finite = keras.ops.all(keras.ops.isfinite(keras.ops.concatenate([keras.ops.reshape(w, (-1,)) for w in weights])))
            joins = keras.ops.logical_and(joins, finite)
            skipped = skipped + keras.ops.cast(keras.ops.logical_not(finite), "float32")
        rates = self._rates(counts)
        folded = []
        for index, (average, weight) in enumerate(zip(averages, weights)):
            # Exponential: element by element (one pass over the weights, the per-step cost).
            keep = joins[index] if self.decay is None else keras.ops.logical_and(joins[index], keras.ops.isfinite(weight))
            rate = keras.ops.cast(rates[index], average.dtype)
            # A select, not a zero rate: 0 * NaN is NaN.
            folded.append(keras.ops.where(keep, average + rate * (weight - average), average))
        return [counts + keras.ops.cast(joins, "float32"), skipped, *folded]

    def update(self, when=None) -> None:
        """Fold the model's current weights into the average: those `live` names and those that joined before.

        An exponential average's update is compiled by XLA on TensorFlow; a
        caller may call it inside a function of its own (a train step), with
        `when` a traced bool that says whether it is due.
        """
        self._update(when)

    @property
    def count(self) -> int:
        """Updates the most-averaged weight took part in (SWA: sets of weights averaged)."""
        return int(np.max(self.counts.numpy(), initial=0))

    def take_skipped(self) -> int:
        """Updates left out since the last call."""
        skipped = int(self.skipped.numpy())
        self.skipped.assign(np.zeros((), "float32"))
        return skipped

    def broken(self) -> list:
        """Paths of the model's weights that hold NaN or infinities now.

        One compiled check of them all first, one number read back, rather
        than every weight copied to the host (EMA checks once an epoch): for
        MobileNetV3Small's 206 weights 0.9 ms against 2.1 ms on 2 CPU cores
        (JAX), where on an accelerator each copy also waits for the device.
        """
        if self._all_finite is None:
            self._all_finite = backend.compiled(
                lambda values: keras.ops.all(keras.ops.stack([keras.ops.all(keras.ops.isfinite(v)) for v in values]))
            )
        if bool(keras.ops.convert_to_numpy(self._all_finite([v.value for v in self.variables]))):
            return []
        return [v.path for v in self.variables if not np.isfinite(np.asarray(v.numpy())).all()]

    # In the model: when `fit` ends, or for an evaluation.

    def _assign(self, variables: list, values: list) -> None:
        # In the strategy's scope: a cross-replica assignment reaches every replica.
        with backend.scope(self.model):
            for variable, value in zip(variables, values):
                variable.assign(_copy(value, variable.dtype))

    def put_into_model(self) -> None:
        self._assign(self.variables, self.averages)

    @contextlib.contextmanager
    def in_model(self):
        """The average in the model inside the block, the trained weights (all of them) after it."""
        weights = self.model.weights
        trained = [np.array(variable.numpy()) for variable in weights]
        try:
            self.put_into_model()
            yield
        finally:
            self._assign(weights, trained)

    def evaluate(self, validation_data, prefix: str, bn_data=None, bn_steps=None) -> dict:
        """`model.evaluate` of the average (statistics recomputed over `bn_data` first), its logs prefixed."""
        with self.in_model():
            if bn_data is not None and trained_batchnorm_layers(self.model):
                update_batchnorm(self.model, bn_data, steps=bn_steps)
            if isinstance(validation_data, tuple):
                results = self.model.evaluate(*validation_data, verbose=0, return_dict=True)
            else:
                results = self.model.evaluate(validation_data, verbose=0, return_dict=True)
        return {f"{prefix}{name}": value for name, value in results.items()}

    # On disk: `<stem>_state.npz`, the one before it, and a partial file renamed into place once whole.

    @staticmethod
    def _files(directory: str, stem: str) -> list:
        return [os.path.join(directory, f"{stem}_state{suffix}.npz") for suffix in ("", ".previous", ".partial")]

    def save(self, directory: str, stem: str) -> None:
        os.makedirs(directory, exist_ok=True)
        path, previous, partial = self._files(directory, stem)
        np.savez(
            partial,
            counts=self.counts.numpy(),
            last_epoch=self.last_epoch,
            **{f"extra_{name}": value for name, value in self.extras.items()},
            **{f"average_{index}": np.asarray(average.numpy()) for index, average in enumerate(self.averages)},
        )
        # The state of the epoch before stays: BackupAndRestore may resume there
        # if it had not written its own files for this epoch yet.
        if os.path.exists(path):
            os.replace(path, previous)
        os.replace(partial, path)

    def load(self, directory: str, stem: str, last_epoch: int) -> bool:
        """Load the state saved after `last_epoch`, if one of the files holds it whole."""
        for path in self._files(directory, stem):
            stored = self._read(path)
            if stored is not None and int(stored["last_epoch"]) == last_epoch:
                averages = [stored[f"average_{index}"] for index in range(len(self.averages))]
                for average, value in zip(self.averages, averages):
                    average.assign(value)
                self.counts.assign(stored["counts"])
                self.last_epoch = last_epoch
                self.extras = {name[len("extra_"):]: value.item() for name, value in stored.items() if name.startswith("extra_")}
                return True
        return False

    def _read(self, path: str) -> dict | None:
        if not os.path.exists(path):
            return None
        try:
            with np.load(path) as stored:
                stored = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # cut short by a kill while it was written: another file holds a whole state
        averages = sum(name.startswith("average_") for name in stored)
        shapes = [stored[f"average_{index}"].shape for index in range(averages)]
        if shapes != [tuple(v.shape) for v in self.variables]:
            raise ValueError(
                f"The averaging state in {path} was written for another model: its "
                "averages do not match this model's weights. Use a fresh "
                f"`backup_dir`. Received: backup_dir={os.path.dirname(path)!r}"
            )
        return stored

    def remove_files(self, directory: str, stem: str) -> None:
        for path in self._files(directory, stem):
            if os.path.exists(path):
                os.remove(path)
