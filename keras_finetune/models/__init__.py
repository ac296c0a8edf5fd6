"""Models with their own training step: knowledge distillation."""

from keras_finetune.models.distiller import Distiller

__all__ = ["Distiller"]
