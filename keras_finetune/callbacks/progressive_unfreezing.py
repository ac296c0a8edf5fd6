"""Unfreeze a pretrained base from the top down in phases, inside one `fit`.

The usual recipe is two `fit` calls with a recompile in between, which throws
the optimizer state away; and setting `layer.trainable` from a callback does
nothing in Keras 3, because the train step was traced once. This callback
builds the optimizer up front over every variable any phase will train, flips
the `trainable` flags when a phase starts and makes Keras trace the train step
again (once per phase change). The optimizer keeps its iteration count and the
moments of the variables that were already training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras
import numpy as np

from keras_finetune import backend
from keras_finetune.callbacks import _optimizer
from keras_finetune.blocks import all_layers, units
from keras_finetune.freezing import batchnorm_to_freeze, describe_units, named_layer, parameter_count, unfreeze
from keras_finetune.validation import check_positive, is_int

__all__ = ["ProgressiveUnfreezing"]


def _check_epochs(mapping, argument: str) -> list:
    epochs = list(mapping)
    for epoch in epochs:
        if not is_int(epoch) or epoch < 0:
            raise ValueError(
                f"The keys of `{argument}` must be epochs, ints >= 0 counted "
                f"from 0 as Keras counts them. Received: {argument}={mapping!r}"
            )
    if epochs != sorted(set(epochs)):
        raise ValueError(
            f"The epochs of `{argument}` must be given in increasing order. "
            f"Received: {argument}={mapping!r}"
        )
    return [int(epoch) for epoch in epochs]


def _check_phase(value, base_model: keras.Model, found):
    """Normalise one entry of `schedule`: an int N (units from the top), "all", or a layer name."""
    if is_int(value):
        if not 0 <= value <= len(found):
            raise ValueError(
                f"An int in `schedule` counts the {describe_units(found)} of {base_model.name!r} from the top: "
                f"0 to {len(found)}. Received: schedule value {value}"
            )
        return int(value)
    if value == "all":
        return "all"
    if isinstance(value, str):
        what = '`schedule` values must be 0, an int N, "all", or the name of'
        return named_layer(base_model, value, what, f"Received: schedule value {value!r}").name
    raise ValueError(
        '`schedule` values must be 0, an int N, "all", or the name of a layer of the base. '
        f"Received: schedule value {value!r}"
    )


class ProgressiveUnfreezing(keras.callbacks.Callback):
    """Unfreeze a pretrained base in phases within one `fit`, keeping optimizer state.

    `schedule` maps the first epoch of each phase to how much of `base_model`
    trains from then on, counted in units from the top (see `unfreeze`: its
    blocks where it has blocks, else the entries of `base_model.layers`): `0`
    (the base is frozen, only the head trains), an int N (the top N units),
    `"all"`, or the name of a layer, nested ones included (its unit and every
    unit above it).
    Everything below is frozen again, so a later phase may also freeze more.
    `learning_rates` maps the first epoch of a phase to the learning rate set
    when that phase starts; a phase it does not name keeps the current rate.
    It may also be a callable `epoch -> rate`, called with each phase's first
    epoch.

    What this does that a recompile does not: the optimizer is built, before
    the first epoch, over every variable any phase trains (under a strategy,
    inside its scope), so when a phase starts the `trainable` flags change and
    Keras traces the train step once more, and nothing else: the optimizer's
    `iterations` and the moments of variables that were already training
    survive. BatchNormalization layers of the base stay frozen, in inference
    mode, unless `freeze_batchnorm=False` (small fine-tuning batches would
    overwrite their pretrained statistics); with `"auto"` those still at
    their initial statistics (never trained) train. The policy is resolved
    once, here, so a resumed run freezes the same layers.

    The trainable state and learning rate follow from the epoch alone, so a
    run resumed with `initial_epoch` or `keras.callbacks.BackupAndRestore`
    ends as an uninterrupted one does. (A rate changed within a phase by
    `ReduceLROnPlateau` is not restored; the phase's rate is set again.)

    With `StepLR` or `CosineAnnealing` in the same `fit`, the phase's rate is
    the base rate that the schedule scales (see those classes). Once `SWA`
    anneals the rate (its `swa_lr`), phases starting later leave it alone. With a
    `keras.optimizers.MultiOptimizer` (see
    `keras_finetune.optimizers.discriminative_optimizer`), the rates given
    here are those of its default (head) optimizer; the other sub-optimizers
    keep their ratio to it.

    Epoch logs gain `phase` (the index of the epoch's phase in `schedule`),
    `trainable_params` and `learning_rate`, so `History`,
    `CSVLogger` and TensorBoard show the phases.

    Args:
        base_model: keras.Model. The pretrained base, a layer of the model
            being fit.
        schedule: dict. First epoch of each phase (from 0, increasing) to
            `0`, an int N, `"all"` or a layer name. Must include epoch 0.
        learning_rates: dict or callable. First epoch of a phase to the
            learning rate set when it starts, or `epoch -> rate`. Defaults to
            `None` (the rate is left alone).
        freeze_batchnorm: bool, `"auto"` or list. Keep the base's
            BatchNormalization layers frozen: all, none, those with learned
            statistics, or the ones listed (see `freezing.unfreeze`).
            Defaults to `True`.
        warmup_steps: int. After a phase that adds trainable variables,
            raise the learning rate linearly over this many steps up to the
            phase's rate: Adam's first updates of newly unfrozen variables are
            about 3x the rate because their moments start at zero. Defaults
            to `0` (off).
        blocks: list of str or callable. The base's blocks, as
            `keras_finetune.blocks.units` takes them. Defaults to `None`
            (found from the layer names).
        verbose: int. 1 prints one line per phase change. Defaults to `0`.

    Example:

    ```python
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None)
    model = keras_finetune.build_classifier(base, num_classes=10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(
        train_ds,
        epochs=9,
        callbacks=[
            ProgressiveUnfreezing(
                base,
                schedule={0: 0, 3: 4, 6: "all"},  # the top 4 of its 10 blocks
                learning_rates={0: 1e-3, 3: 1e-4, 6: 1e-5},
            )
        ],
    )
    ```

    References:
        Howard and Ruder, Universal Language Model Fine-tuning (gradual
        unfreezing, discriminative rates), arXiv 1801.06146.
    """

    def __init__(
        self,
        base_model: keras.Model,
        schedule: Mapping,
        learning_rates: Mapping | Callable | None = None,
        freeze_batchnorm: bool | str | list = True,
        warmup_steps: int = 0,
        blocks=None,
        verbose: int = 0,
    ):
        super().__init__()
        if not isinstance(base_model, keras.Model):
            raise TypeError(
                "`base_model` must be a keras.Model. Received: "
                f"base_model={base_model!r} of type {type(base_model).__name__}"
            )
        if not isinstance(schedule, Mapping) or not schedule:
            raise ValueError(
                "`schedule` must be a non-empty dict from epoch to 0, N, "
                f'"all" or a layer name. Received: schedule={schedule!r}'
            )
        self._starts = _check_epochs(schedule, "schedule")
        if self._starts[0] != 0:
            raise ValueError(
                "`schedule` must say what trains from epoch 0 (0 for the head "
                f"only). Received: schedule={schedule!r}"
            )
        found = units(base_model, blocks)
        self._phases = [_check_phase(schedule[epoch], base_model, found) for epoch in self._starts]
        self._rates = self._check_learning_rates(learning_rates)
        if not is_int(warmup_steps) or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an int >= 0. Received: warmup_steps={warmup_steps!r}")
        self.base_model = base_model
        self.schedule = dict(schedule)
        self.learning_rates = learning_rates
        self.freeze_batchnorm = freeze_batchnorm
        self._frozen_batchnorm = batchnorm_to_freeze(base_model, freeze_batchnorm)
        self.warmup_steps = int(warmup_steps)
        self.blocks = blocks
        self.verbose = verbose
        self._applied = None
        self._warmup = None

    def _check_learning_rates(self, learning_rates) -> dict:
        """Rates by phase index; a callable is called once per phase."""
        if learning_rates is None:
            return {}
        if callable(learning_rates):
            return {
                index: check_positive(learning_rates(epoch), f"learning_rates({epoch})")
                for index, epoch in enumerate(self._starts)
            }
        if not isinstance(learning_rates, Mapping):
            raise TypeError(
                "`learning_rates` must be a dict from epoch to rate or a "
                f"callable. Received: learning_rates={learning_rates!r}"
            )
        rates = {}
        for epoch in _check_epochs(learning_rates, "learning_rates"):
            if epoch not in self._starts:
                raise ValueError(
                    "`learning_rates` sets rates when phases start; epoch "
                    f"{epoch} starts no phase of `schedule` (phases start at "
                    f"{self._starts}); use StepLR or CosineAnnealing to change "
                    f"the rate within a phase. Received: learning_rates={learning_rates!r}"
                )
            rates[self._starts.index(epoch)] = check_positive(
                learning_rates[epoch], f"learning_rates[{epoch}]"
            )
        return rates

    def phase_starts(self) -> list:
        """The first epoch of each phase, in order."""
        return list(self._starts)

    def phase_index(self, epoch: int) -> int:
        """Index of the phase that `epoch` belongs to."""
        return int(np.searchsorted(self._starts, epoch, side="right")) - 1

    def base_learning_rate(self, epoch: int) -> float | None:
        """The rate of the latest phase up to `epoch` that sets one, if any."""
        named = [index for index in self._rates if index <= self.phase_index(epoch)]
        return self._rates[max(named)] if named else None

    def _apply(self, index: int) -> None:
        phase = self._phases[index]
        if phase == "all":
            unfreeze(self.base_model, freeze_batchnorm=self._frozen_batchnorm, blocks=self.blocks)
        elif isinstance(phase, str):
            unfreeze(self.base_model, from_layer=phase, freeze_batchnorm=self._frozen_batchnorm, blocks=self.blocks)
        else:
            unfreeze(self.base_model, top=phase, freeze_batchnorm=self._frozen_batchnorm, blocks=self.blocks)

    def _every_phase_variable(self) -> list:
        """Variables of the model trainable in any phase, in model order."""
        flags = [(layer, layer.trainable) for layer in all_layers(self.base_model)]
        wanted = set()
        for index in range(len(self._phases)):
            self._apply(index)
            wanted.update(id(v) for v in self.model.trainable_variables)
        for layer, trainable in flags:  # parents first, so children win
            layer.trainable = trainable
        return [v for v in self.model.variables if id(v) in wanted]

    def set_model(self, model) -> None:
        super().set_model(model)
        _optimizer.clear_controllers(model)
        self._applied = None
        if not any(layer is self.base_model for layer in all_layers(model)):
            raise ValueError(
                "`base_model` must be a layer of the model being fit. "
                f"Received: base_model={self.base_model.name!r}, "
                f"not found in model {model.name!r}"
            )
        if getattr(model, "optimizer", None) is not None:
            # Before any on_train_begin: BackupAndRestore loads optimizer
            # state there and needs the full set of variables to load into.
            _optimizer.cover_variables(model, self._every_phase_variable())

    def on_train_begin(self, logs=None) -> None:
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("ProgressiveUnfreezing needs a compiled model: call `compile` first.")
        if self._rates:
            _optimizer.check_settable(self.model.optimizer, "ProgressiveUnfreezing")
        _optimizer.register_controller(self.model, "phases", self)

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        index = self.phase_index(epoch)
        if index == self._applied:
            return
        before = {id(v) for v in self.model.trainable_variables}
        self._apply(index)
        self.model.make_train_function(force=True)
        # Under a JAX distribution the test step's output shardings follow what trains too.
        self.model.make_test_function(force=True)
        first_phase_of_fit = self._applied is None
        self._applied = index
        rate = self.base_learning_rate(epoch)
        if (
            rate is not None
            and _optimizer.controller(self.model, "schedule") is None
            and not _optimizer.swa_sets_rate(self.model, epoch)
        ):
            _optimizer.set_learning_rate(self.model.optimizer, rate)
        added = any(id(v) not in before for v in self.model.trainable_variables)
        if self.warmup_steps and added and not first_phase_of_fit:
            self._warmup = {"step": 0, "target": None}
        if self.verbose:
            self._report(epoch, index)

    def _report(self, epoch: int, index: int) -> None:
        phase = self._phases[index]
        what = {0: "frozen (head only)", "all": "fully trainable"}.get(phase)
        if what is None:
            what = f"trainable from {phase!r} up" if isinstance(phase, str) else f"trainable in its top {phase} units"
        rate = _optimizer.current_learning_rate(self.model.optimizer)
        print(
            f"Epoch {epoch + 1}: ProgressiveUnfreezing: {self.base_model.name!r} "
            f"{what}; {parameter_count(self.model.trainable_variables):,} trainable parameters; "
            f"learning rate {rate:.3g}"
        )

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self._warmup is None:
            return
        backend.sync(self.model)
        if self._warmup["target"] is None:  # read after every on_epoch_begin ran
            self._warmup["target"] = _optimizer.current_learning_rate(self.model.optimizer)
        self._warmup["step"] += 1
        target, step = self._warmup["target"], self._warmup["step"]
        if step > self.warmup_steps:
            self._warmup = None
            _optimizer.set_learning_rate(self.model.optimizer, target)
        else:
            _optimizer.set_learning_rate(self.model.optimizer, target * step / (self.warmup_steps + 1))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self._warmup is not None and self._warmup["target"] is not None:
            # The epoch ended inside the warm-up: leave the phase's rate for
            # the other callbacks, and read it again at the next epoch.
            _optimizer.set_learning_rate(self.model.optimizer, self._warmup["target"])
            self._warmup["target"] = None
        if logs is not None:
            logs["phase"] = self.phase_index(epoch)
            logs["trainable_params"] = parameter_count(self.model.trainable_variables)
            logs["learning_rate"] = _optimizer.current_learning_rate(self.model.optimizer)

    def on_train_end(self, logs=None) -> None:
        _optimizer.clear_controllers(self.model)
