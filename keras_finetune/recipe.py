"""`fine_tune`: the whole playbook in one call, built from the package's public parts."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import keras

from keras_finetune import backend
from keras_finetune.array_batches import ArrayBatches
from keras_finetune.callbacks import (
    EMA, SWA, AtomicBackup, CosineAnnealing, EpochSeeds, OneCycle, ProgressiveUnfreezing, update_batchnorm,
)
from keras_finetune.callbacks.backup import resumed_epoch
from keras_finetune.freezing import batchnorm_layers, follow_untrained_batchnorm
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix, image_augmentation
from keras_finetune.models import MixingModel
from keras_finetune.optimizers import layer_decay_optimizer
from keras_finetune.validation import (
    check_bool, check_count, check_epoch, check_fraction, check_number, check_positive, ends_in_softmax, epoch_of,
    is_dataset, is_int, output_activation, tensorflow_installed,
)

__all__ = ["fine_tune"]


def _nested_base(model: keras.Model) -> keras.Model:
    """The one model nested in `model.layers`: the base of a `build_classifier` model."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            "Pass `base_model`: `model` must hold exactly one nested model to find the base "
            f"by itself. Received: a model with {len(nested)} nested models "
            f"{[layer.name for layer in nested]}"
        )
    return nested[0]


def _schedule(unfreeze, frozen_epochs, epochs: int, learning_rate: float, factor: float) -> tuple[dict, dict]:
    """ProgressiveUnfreezing's schedule and rates: each phase after the first at `factor` times the last."""
    if isinstance(unfreeze, dict):
        schedule = dict(unfreeze)
    else:
        check_epoch(frozen_epochs, "frozen_epochs")
        start = epoch_of(frozen_epochs, epochs)
        if start == 0 and frozen_epochs and unfreeze not in (None, 0):
            warnings.warn(
                f"frozen_epochs={frozen_epochs!r} of {epochs} epochs rounds to 0: the base trains "
                "from the first step, beside an untrained head. Give more epochs or an int frozen_epochs.",
                stacklevel=3,
            )
        if unfreeze is None or unfreeze == 0:
            schedule = {0: 0}
        elif start == 0:
            schedule = {0: unfreeze}
        else:
            schedule = {0: 0, start: unfreeze}
    starts = sorted(schedule)
    if starts and starts[-1] >= epochs:
        raise ValueError(
            f"Every phase must start within the {epochs} epochs (0 to {epochs - 1}, counted from 0). "
            f"Received: a phase starting at epoch {starts[-1]} (frozen_epochs={frozen_epochs!r}, "
            f"unfreeze={unfreeze!r})"
        )
    rates = {start: learning_rate * factor**index for index, start in enumerate(starts)}
    return schedule, rates


def _part(value, argument: str, build):
    """An augmentation/mixing argument as a callable: True the preset, a dict its options, a layer itself."""
    if value is None or value is False:
        return None
    if value is True:
        return build({})
    if isinstance(value, dict):
        return build(value)
    if callable(value):
        return value
    raise TypeError(
        f"`{argument}` must be True, False, None, a dict of options or a layer. "
        f"Received: {argument}={value!r}"
    )


def _in_scope(model: keras.Model, base_model: keras.Model, strategy) -> tuple[keras.Model, keras.Model]:
    """`model` when its variables belong to `strategy` (or there is none); else a copy made in its scope, weights included."""
    if strategy is None or backend.made_in(model, strategy):
        return model, base_model
    with _scope(strategy):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy, copy.get_layer(base_model.name)


def _refuse_classifier(model: keras.Model, num_classes) -> None:
    """A ValueError when `model`, given as a base, ends in a classifier already: a second head would go on top."""
    last = model.layers[-1] if model.layers else None
    if ends_in_softmax(model) or (isinstance(last, keras.layers.Dense) and len(model.output_shape) == 2):
        raise ValueError(
            f"`model` ({model.name!r}) ends in a classifier (its last layer {last.name!r} outputs "
            f"{model.output_shape[-1]} scores), and `num_classes` would put a second head on top. Pass it "
            "without `num_classes` to fine-tune it as it is (with `base_model=` its base), or pass its base "
            f"(e.g. a keras.applications model with include_top=False). Received: num_classes={num_classes!r}"
        )


def _random_layers(augmentation, mixing, channels: int, classes: int, seed):
    """The augmentation and mixing layers of `fine_tune`'s arguments (None where turned off)."""
    preset = {"seed": seed}
    if channels != 3:  # saturation and hue need RGB
        preset.update(saturation=None, hue=None)
    augment = _part(augmentation, "augmentation", lambda options: image_augmentation(**{**preset, **options}))
    mix = _part(mixing, "mixing", lambda options: MixUpOrCutMix(**{"seed": seed, "num_classes": classes, **options}))
    return augment, mix


def _in_step(train_data) -> bool:
    """Whether `train_data` reaches `fit` as a `PyDataset`, augmented and mixed in the step: a `PyDataset`
    itself, or arrays where TensorFlow is missing. Everything else goes through a `tf.data` pipeline."""
    if isinstance(train_data, keras.utils.PyDataset):
        return True
    if tensorflow_installed():
        return False
    if isinstance(train_data, tuple) and len(train_data) == 2:
        return True
    raise TypeError(
        "Without TensorFlow (no tf.data), `train_data` must be a tuple (images, labels) of arrays or a "
        f"keras.utils.PyDataset of (images, labels) batches. Received: {type(train_data).__name__}"
    )


def _step_batches(data, argument: str, batch_size: int, classes: int, seed):
    """Arrays as `ArrayBatches` (shuffled when training), a `PyDataset` or a `tf.data.Dataset` as given."""
    if isinstance(data, tuple) and len(data) == 2:
        return ArrayBatches(*data, batch_size, classes, seed=seed, shuffle=argument == "train_data", argument=argument)
    if isinstance(data, keras.utils.PyDataset) or (argument == "validation_data" and is_dataset(data)):
        return data
    raise TypeError(
        f"`{argument}` must be a tuple (images, labels) or a keras.utils.PyDataset of such batches here. "
        f"Received: {type(data).__name__}"
    )


def _fit_inputs(model, train_data, validation_data, batch_size, classes, epochs, augmentation, mixing, seed, strategy, backup_dir):
    """What `fit` runs on: the model or its `MixingModel`, the training and validation batches, the steps per
    epoch (None: unknown, or a `PyDataset` Keras reads anew each epoch), the un-augmented batches, and the
    callbacks that follow the epochs (the order of `ArrayBatches`)."""
    if not _in_step(train_data):
        from keras_finetune import tf_pipeline

        augment, mix = _random_layers(augmentation, mixing, model.input_shape[-1], classes, seed)
        train, steps, plain = tf_pipeline.training_pipeline(
            train_data, batch_size, classes, epochs, resumed_epoch(backup_dir), augment, mix, seed
        )
        validation = None if validation_data is None else tf_pipeline.validation_pipeline(validation_data, batch_size, classes)
        return model, train, validation, steps, plain, []
    train = _step_batches(train_data, "train_data", batch_size, classes, seed)
    validation = None if validation_data is None else _step_batches(validation_data, "validation_data", batch_size, classes, seed)
    with _scope(strategy):  # the layers' seeds are variables of the step
        augment, mix = _random_layers(augmentation, mixing, model.input_shape[-1], classes, seed)
        # Which also makes integer labels one-hot. Named as a MixingModel would be (not after this private class).
        fitted = _SavesTheClassifier(model, mix, augmentation=augment, name="mixing_model")
    follow = [train.follow_epochs()] if isinstance(train, ArrayBatches) else []
    return fitted, train, validation, None, train, follow


class _SavesTheClassifier(MixingModel):
    """`fine_tune`'s wrapper, which the callbacks see as their model: saved whole (a `ModelCheckpoint`
    among the caller's callbacks), it writes the classifier, which reloads with `keras` alone and
    predicts the same. Its weights (`save_weights`, what `backup_dir` holds) stay the wrapper's,
    the random layers' states and the optimizer's included."""

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        return self.model.save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)


def _classifier(model, num_classes, base_model, head, input_shape, strategy) -> tuple[keras.Model, keras.Model, int]:
    """The classifier, its base (both in `strategy`'s scope) and its number of classes."""
    if num_classes is not None:
        if not is_int(num_classes) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}")
        _refuse_classifier(model, num_classes)
        base_model = model
        model = build_classifier(model, int(num_classes), **{"input_shape": input_shape, **(head or {})})
    elif base_model is None:
        base_model = _nested_base(model)
    classes = model.output_shape[-1]
    if not is_int(classes) or classes < 2:
        raise ValueError(
            f"`model` must output one score per class (at least 2). Received: output shape {model.output_shape}"
        )
    return (*_in_scope(model, base_model, strategy), classes)


def _from_logits(model: keras.Model, from_logits) -> bool:
    """Whether the loss takes logits: what the model's last layer shows, or `from_logits` if it agrees."""
    activation = output_activation(model)
    if from_logits is None:
        if activation in ("softmax", "linear"):
            return activation == "linear"
        raise ValueError(
            f"Cannot tell whether `model` outputs logits or probabilities: its output comes out of "
            f"{activation or 'a layer without activation'!r}, neither a softmax nor a linear layer. Pass "
            "from_logits=True or False. Received: from_logits=None"
        )
    from_logits = check_bool(from_logits, "from_logits")
    if activation == ("softmax" if from_logits else "linear"):
        made = "probabilities (it ends in a softmax)" if from_logits else "logits (its last layer has no activation)"
        raise ValueError(
            f"`model` outputs {made}, and the loss would take them for "
            f"{'logits' if from_logits else 'probabilities'}. Leave from_logits=None to follow the model. "
            f"Received: from_logits={from_logits!r}"
        )
    return from_logits


def _untrained_batchnorm_train(base_model: keras.Model, frozen_epochs, unfreeze_lr_factor: float) -> list:
    """BatchNorm layers that "auto" lets train because they never saw data follow at momentum 0.9 at
    most (`follow_untrained_batchnorm`); a warning when the whole base looks untrained."""
    untrained = follow_untrained_batchnorm(base_model)
    everything = len(untrained) == len(batchnorm_layers(base_model))
    if untrained and everything and (frozen_epochs or unfreeze_lr_factor != 1):
        warnings.warn(
            f"The {len(untrained)} BatchNorm layers of {base_model.name!r} hold their initial statistics: the base "
            "looks untrained, so they train (freeze_batchnorm='auto'). A frozen phase and a lower rate for the "
            "base are meant for pretrained weights; to train from scratch pass frozen_epochs=0, unfreeze_lr_factor=1.",
            stacklevel=3,
        )
    return untrained


def _check_parts(swa, swa_lr, ema, layer_decay, label_smoothing, epochs: int, schedule, warmup_epochs: int, seed, callbacks) -> None:
    """The recipe's parts as `fine_tune` takes them, or the error that names the argument."""
    check_fraction(label_smoothing, "label_smoothing", below_one=True)
    if layer_decay is not None:
        check_number(layer_decay, "layer_decay", 0.0, 1.0, open_low=True)
    if ema is not None:
        check_fraction(ema, "ema", below_one=True)
        if swa is not None:
            raise ValueError(
                "`ema` and `swa` would both put an average of the weights into the model when `fit` ends; "
                f"pass swa=None with ema. Received: ema={ema!r}, swa={swa!r}"
            )
    if swa_lr is not None:
        check_positive(swa_lr, "swa_lr")
    if swa is not None:
        check_epoch(swa, "swa")
        if epoch_of(swa, epochs) == epochs - 1:
            warnings.warn(f"swa={swa!r} of {epochs} epochs averages the last epoch's weights alone.", stacklevel=3)
    if schedule not in ("cosine", "one_cycle", None) and not isinstance(schedule, keras.callbacks.Callback):
        raise ValueError(
            f'`schedule` must be "cosine", "one_cycle", None or a keras Callback. Received: schedule={schedule!r}'
        )
    if schedule == "cosine" and warmup_epochs > epochs:
        raise ValueError(
            f"`warmup_epochs` is longer than the run ({epochs} epochs): the rate would never reach "
            f"`learning_rate`. Received: warmup_epochs={warmup_epochs!r}"
        )
    if seed is not None and not is_int(seed):
        raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
    if any(isinstance(callback, keras.callbacks.BackupAndRestore) for callback in callbacks or []):
        raise ValueError(
            "Pass `backup_dir` instead of a BackupAndRestore callback: fine_tune must know where to resume "
            "its pipeline and SWA. Received: a BackupAndRestore in callbacks"
        )


def _check_plumbing(optimizer, head, strategy, callbacks, backup_dir, verbose) -> None:
    """The arguments that say how to run rather than what to train, each of the kind it must be."""
    if isinstance(optimizer, str):
        try:
            keras.optimizers.get(optimizer)
        except ValueError:
            raise ValueError(f"`optimizer` must name a Keras optimizer (e.g. 'adam', 'sgd'). Received: optimizer={optimizer!r}") from None
    elif not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` must be a name or a keras.optimizers.Optimizer. Received: optimizer={optimizer!r}")
    strategies = (keras.distribution.DataParallel, keras.distribution.ModelParallel)
    tf = sys.modules.get("tensorflow")  # a tf.distribute strategy means TensorFlow is imported
    if tf is not None:
        strategies += (tf.distribute.Strategy,)
    kinds = (
        ("head", head, dict, "a dict of build_classifier options"),
        ("strategy", strategy, strategies, "a tf.distribute.Strategy or a keras.distribution"),
        ("backup_dir", backup_dir, (str, os.PathLike), "a folder's path"),
    )
    for argument, value, kind, described in kinds:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"`{argument}` must be None or {described}. Received: {argument}={value!r}")
    if callbacks is not None and (
        not isinstance(callbacks, (list, tuple)) or not all(isinstance(c, keras.callbacks.Callback) for c in callbacks)
    ):
        raise TypeError(f"`callbacks` must be a list of keras Callbacks. Received: callbacks={callbacks!r}")
    if verbose not in ("auto", 0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f'`verbose` must be "auto", 0, 1 or 2, as in `fit`. Received: verbose={verbose!r}')


def _unfreezing(base_model, unfreeze, frozen_epochs, epochs: int, learning_rate: float, factor: float, freeze_batchnorm):
    """The `ProgressiveUnfreezing` of `fine_tune`'s arguments; its errors name `unfreeze` when they come from it."""
    try:
        return ProgressiveUnfreezing(
            base_model, *_schedule(unfreeze, frozen_epochs, epochs, learning_rate, factor), freeze_batchnorm=freeze_batchnorm
        )
    except ValueError as error:
        if isinstance(unfreeze, dict) or "schedule value" not in str(error):
            raise
        raise ValueError(f"{error} (from unfreeze={unfreeze!r})") from None


def _compile(fitted, model, base_model, optimizer, learning_rate: float, layer_decay, label_smoothing: float, from_logits: bool, strategy) -> None:
    """Compile `model`, and the `fitted` wrapper (if it is one) with the same optimizer and loss."""
    with _scope(strategy):
        if layer_decay is not None:
            optimizer = layer_decay_optimizer(model, base_model, learning_rate, decay=layer_decay, optimizer=optimizer)
        elif isinstance(optimizer, str):
            optimizer = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": learning_rate}})
        # Keras's own loss (our uniform smoothing is the same), so a saved model reloads without this package.
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, from_logits=from_logits)
        for compiled in {id(model): model, id(fitted): fitted}.values():
            compiled.compile(optimizer, loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def _scope(strategy):
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _rate_schedule(schedule, learning_rate: float, epochs: int, warmup_epochs: int, steps):
    """The callback of `schedule`: cosine per epoch, one cycle per phase (fastai's `fine_tune`), or the caller's."""
    if schedule == "cosine":
        return CosineAnnealing(t_max=epochs, warmup_epochs=warmup_epochs)
    if schedule != "one_cycle":
        return schedule
    if steps is None:
        raise ValueError(
            'schedule="one_cycle" sets the rate per step and needs the steps per epoch, which this training data does '
            'not tell (a dataset of unknown length). Use schedule="cosine", or data of known length. Received: schedule="one_cycle"'
        )
    return OneCycle(learning_rate, cycle_momentum="auto", restart_per_phase=True)


def _recipe_callbacks(seed, rate_schedule, swa, swa_lr, ema, bn_data, backup_dir) -> list:
    """Per-epoch seeds, the rate schedule and SWA or EMA, after ProgressiveUnfreezing."""
    callbacks = [] if seed is None else [EpochSeeds(seed)]
    if rate_schedule is not None:
        callbacks.append(rate_schedule)
    if swa is not None:
        callbacks.append(SWA(swa, swa_lr=swa_lr, bn_data=bn_data, backup_dir=backup_dir))
    if ema is not None:
        callbacks.append(EMA(ema, bn_data=bn_data, backup_dir=backup_dir))
    return callbacks


def fine_tune(
    model: keras.Model,
    train_data,
    validation_data=None,
    *,
    num_classes: int | None = None,
    base_model: keras.Model | None = None,
    head: dict | None = None,
    epochs: int = 20,
    frozen_epochs: int | float = 0.25,
    unfreeze="all",
    learning_rate: float = 1e-3,
    unfreeze_lr_factor: float = 0.1,
    optimizer: str | keras.optimizers.Optimizer = "adam",
    schedule="cosine",
    warmup_epochs: int = 1,
    augmentation=True,
    mixing=True,
    label_smoothing: float = 0.1,
    swa: int | float | None = 0.75,
    swa_lr: float | None = None,
    ema: float | None = None,
    layer_decay: float | None = None,
    freeze_batchnorm: bool | str = "auto",
    batch_size: int = 32,
    from_logits: bool | None = None,
    input_shape: tuple | None = None,
    strategy=None,
    callbacks: list | None = None,
    seed: int | None = None,
    backup_dir: str | None = None,
    verbose="auto",
) -> keras.callbacks.History:
    """Fine-tune a pretrained network with the whole playbook, in one `fit`.

    The parts, each one of this package's public pieces and each switchable:

    1. A dropout head (`build_classifier`) when `num_classes` is given and
       `model` is a base; otherwise `model` is the classifier and its base is
       `base_model` (or the one model nested in it).
    2. `ProgressiveUnfreezing`: the base frozen (head only) for
       `frozen_epochs`, then `unfreeze` (`"all"`, the top N units of
       `freezing.unfreeze`: blocks where the base has them, a layer name) at `learning_rate * unfreeze_lr_factor`; a dict `unfreeze` is the
       whole schedule (epoch -> phase), each phase `unfreeze_lr_factor` times
       the rate of the one before. BatchNorm layers with learned statistics
       stay frozen; those still at their initial statistics (a base that was
       never trained) train, their moving statistics at momentum 0.9 at most
       (`freeze_batchnorm="auto"`, with a warning that says how to train
       such a base from scratch; without SWA, their statistics are
       recomputed over the training batches when `fit` ends, as SWA's pass
       does). The optimizer keeps its state across phases.
    3. `CosineAnnealing` over all `epochs` with `warmup_epochs` of linear
       warm-up, on top of each phase's rate (`schedule=None` turns it off;
       `"one_cycle"` runs a `OneCycle` per phase peaking at its rate, as
       fastai's `fine_tune` does; a Keras callback, e.g. `StepLR` or
       `ReduceLROnPlateau`, replaces it). With `layer_decay`, the optimizer
       is a `layer_decay_optimizer`: each block of the base at `layer_decay`
       times the rate of the block above it.
    4. The training pipeline, one epoch after the other: shuffled batches, `image_augmentation` (True:
       the preset; a dict: its options; a layer: that layer), then
       `MixUpOrCutMix` (True, a dict of options, or a layer). The preset
       leaves out saturation and hue for images without 3 channels. Labels become
       one-hot rows first, in training and validation data alike. The
       pipeline is `tf.data`, the layers in its maps; a `keras.utils.PyDataset`
       (and arrays where TensorFlow is not installed, as `ArrayBatches`) feeds
       `fit` directly, the layers running in the training step on the device
       (`MixingModel`; the callbacks then see that wrapper as their `model`).
    5. Label smoothing `label_smoothing` in the loss (Keras's uniform
       convention; smoothing commutes with mixing, so the mixed labels are
       smoothed as timm does).
    6. `SWA` from epoch `swa` (int, or a fraction of `epochs`) to the end, at
       `swa_lr` if given, with the BatchNorm statistics of trainable
       BatchNorm layers recomputed over the un-augmented training batches;
       or, with `ema` (and `swa=None`), an `EMA` of every step with that
       decay, its statistics recomputed the same way.
    7. Compiled with Keras's own `CategoricalCrossentropy` (so a saved model
       reloads with plain `keras.models.load_model`) and fit under `strategy`
       (default `get_strategy()`): when `model` was built outside its scope,
       a copy is made inside it.
    8. With `backup_dir`, `AtomicBackup` (Keras's BackupAndRestore, whole
       whenever the process dies) and SWA's state there: a run interrupted
       at any point and started again with the same
       arguments resumes at the last completed epoch and, with a `seed`, ends
       with the weights of an uninterrupted run (dropout, shuffle,
       augmentation and mixing draw from `(seed, epoch)`, see `EpochSeeds`).

    Args:
        model: keras.Model. A classifier, or a base when `num_classes` is set.
        train_data: a `tf.data.Dataset` of `(images, labels)` batches, a
            tuple `(images, labels)` of arrays (shuffled each epoch and
            batched by `batch_size`), a function `epoch -> dataset` of
            that epoch's batches (`epoch` a scalar int64 tensor; for data
            whose order must depend on the epoch alone, as a resumable run
            needs), or a `keras.utils.PyDataset` of `(images, labels)`
            batches (e.g. `array_batches.ArrayBatches`). Labels: integer class ids or one-hot rows. A dataset
            that reshuffles itself each iteration repeats differently after
            a resume. Without TensorFlow: arrays or a `PyDataset`.
        validation_data: the same forms but a function, evaluated after each
            epoch. Defaults to `None`.
        num_classes: int >= 2. Build a dropout head with this many classes on
            `model`. Defaults to `None` (`model` is the classifier).
        base_model: keras.Model. The base inside `model` to freeze and
            unfreeze. Defaults to `None` (the one model nested in `model`).
        head: dict. Options of `build_classifier` (`hidden_units`, `dropout`,
            `pooling`). Defaults to `None` (its defaults).
        epochs: int. Epochs of the one `fit`. Defaults to 20.
        frozen_epochs: int or float. Epochs (or a fraction of `epochs`) with
            the base frozen; 0 unfreezes from the start. Defaults to 0.25.
        unfreeze: `"all"`, an int N, a layer name, `None` (the base stays
            frozen: a probe), or a dict schedule. Defaults to `"all"`.
        learning_rate: float. The rate of the first phase. Defaults to 1e-3.
        unfreeze_lr_factor: float. Each later phase's rate over the phase
            before. Defaults to 0.1.
        optimizer: str or keras.optimizers.Optimizer. A name (built with
            `learning_rate`) or an optimizer made in `strategy`'s scope.
            Defaults to `"adam"`.
        schedule: `"cosine"`, `"one_cycle"`, `None` or a Keras callback
            that sets the rate. Defaults to `"cosine"`.
        warmup_epochs: int. Linear warm-up epochs of the cosine schedule.
            Defaults to 1.
        augmentation: True, False/None, a dict of `image_augmentation`
            options, or a layer applied to image batches. Defaults to True.
        mixing: True, False/None, a dict of `MixUpOrCutMix` options, or a
            layer called as `layer(images, labels)`. Defaults to True.
        label_smoothing: float in [0, 1]. Defaults to 0.1.
        swa: int, float or None. First averaged epoch, or a fraction of
            `epochs`; `None` turns SWA off. Defaults to 0.75.
        swa_lr: float. The rate held while averaging. Defaults to `None`
            (the schedule's).
        ema: float or None. The decay of an `EMA` of the weights, in
            [0, 1), in place of SWA (pass `swa=None`). Defaults to `None`.
        layer_decay: float or None. Layer-wise rate decay per block, in
            (0, 1]. Defaults to `None` (one rate for the base).
        freeze_batchnorm: bool or `"auto"`. Keep the base's BatchNorm
            layers frozen: all, none, or those with learned statistics.
            Defaults to `"auto"`.
        batch_size: int. Batch size for array data. Defaults to 32.
        from_logits: bool or None. Whether the classifier outputs logits.
            Defaults to `None`: read from its last layer (a softmax gives
            probabilities, a layer without activation logits); a value that
            contradicts the last layer is refused.
        input_shape: tuple. The base's input shape without the batch axis,
            for the head, when the base has none (a subclassed model never
            called). Defaults to `None`.
        strategy: what `fit` distributes over: on TensorFlow a
            `tf.distribute.Strategy` (default `distribute.get_strategy()`), on
            JAX a `keras.distribution` (default `DataParallel` over every
            device when there are several); None on PyTorch. The choice is
            logged.
        callbacks: list. More callbacks, run after the recipe's own (so a
            `CSVLogger` sees the logs they add). Defaults to `None`.
        seed: int. Seed of the shuffle, augmentation and mixing draws; with
            a seed the random maps run one batch at a time, so a run repeats
            exactly, and its dropout masks too (`EpochSeeds`). Defaults to
            `None` (parallel maps).
        backup_dir: str. A folder of its own for the backup of an
            interrupted run (deleted when `fit` completes). Defaults to
            `None`.
        verbose: as in `fit`. Defaults to `"auto"`.

    Returns:
        `fit`'s `History`. `history.history` has, per epoch, `phase` (index
        of the unfreezing phase), `learning_rate`, `trainable_params`, and
        with SWA `swa_n`, next to the losses and `accuracy`. `history.model`
        is the trained model (with SWA, holding the average).

    Example:

    ```python
    base = keras.applications.MobileNetV3Small(
        input_shape=(224, 224, 3), include_top=False, weights="imagenet"
    )
    history = fine_tune(base, train_ds, val_ds, num_classes=5, epochs=12)
    history.model.save("fine_tuned.keras")
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    epochs = check_count(epochs, "epochs", 1)
    batch_size = check_count(batch_size, "batch_size", 1)
    warmup_epochs = check_count(warmup_epochs, "warmup_epochs", 0)
    learning_rate = check_positive(learning_rate, "learning_rate")
    unfreeze_lr_factor = check_positive(unfreeze_lr_factor, "unfreeze_lr_factor")
    _check_plumbing(optimizer, head, strategy, callbacks, backup_dir, verbose)
    _check_parts(swa, swa_lr, ema, layer_decay, label_smoothing, epochs, schedule, warmup_epochs, seed, callbacks)
    strategy = backend.strategy(strategy)
    model, base_model, classes = _classifier(model, num_classes, base_model, head, input_shape, strategy)
    from_logits = _from_logits(model, from_logits)
    untrained = []
    if freeze_batchnorm == "auto":
        untrained = _untrained_batchnorm_train(base_model, frozen_epochs if unfreeze is not None else 0, unfreeze_lr_factor)
    unfreezing = _unfreezing(base_model, unfreeze, frozen_epochs, epochs, learning_rate, unfreeze_lr_factor, freeze_batchnorm)
    fitted, train, validation, steps, bn_data, follow = _fit_inputs(
        model, train_data, validation_data, batch_size, classes, epochs, augmentation, mixing, seed, strategy, backup_dir
    )
    _compile(fitted, model, base_model, optimizer, learning_rate, layer_decay, label_smoothing, from_logits, strategy)
    rate_schedule = _rate_schedule(schedule, learning_rate, epochs, warmup_epochs, steps or getattr(train, "num_batches", None))
    recipe = [*follow, unfreezing, *_recipe_callbacks(seed, rate_schedule, swa, swa_lr, ema, bn_data, backup_dir)]
    backup = [] if backup_dir is None else [AtomicBackup(backup_dir)]

    with backend.fitting(strategy):
        history = fitted.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            steps_per_epoch=steps,
            shuffle=False,  # the pipeline shuffles; Keras would only warn that it cannot
            callbacks=recipe + list(callbacks or []) + backup,  # the backup last, once every log is written
            verbose=verbose,
        )
    history.set_model(model)
    trained = [layer for layer in untrained if layer.trainable]
    if trained and swa is None and ema is None:  # SWA's and EMA's pass does this: statistics of the final weights, not lagging averages
        update_batchnorm(model, bn_data, layers=trained)
    return history
