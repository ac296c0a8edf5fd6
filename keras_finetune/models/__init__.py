"""Models with their own training step: knowledge distillation, on-device mixing."""

from keras_finetune.models.distiller import Distiller
from keras_finetune.models.mixing_model import MixingModel

__all__ = ["Distiller", "MixingModel"]
