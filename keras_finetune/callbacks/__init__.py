"""Callbacks for `model.fit`: unfreezing phases, learning-rate schedules, one-cycle, LR range test, SWA, EMA, mixing off, per-epoch seeds, atomic backups."""

from keras_finetune.callbacks.backup import AtomicBackup
from keras_finetune.callbacks.batchnorm_statistics import update_batchnorm
from keras_finetune.callbacks.ema import EMA
from keras_finetune.callbacks.epoch_seeds import EpochSeeds
from keras_finetune.callbacks.lr_finder import LRFinder, lr_find
from keras_finetune.callbacks.lr_schedules import CosineAnnealing, StepLR
from keras_finetune.callbacks.one_cycle import OneCycle
from keras_finetune.callbacks.progressive_unfreezing import ProgressiveUnfreezing
from keras_finetune.callbacks.stop_mixing import StopMixing
from keras_finetune.callbacks.swa import SWA

__all__ = [
    "AtomicBackup",
    "CosineAnnealing",
    "EMA",
    "EpochSeeds",
    "LRFinder",
    "OneCycle",
    "ProgressiveUnfreezing",
    "StepLR",
    "StopMixing",
    "SWA",
    "lr_find",
    "update_batchnorm",
]
