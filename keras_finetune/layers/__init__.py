"""Layers for the input pipeline: MixUp, CutMix, RandomResizedCrop, the augmentation preset."""

from keras_finetune.layers.augmentation import image_augmentation
from keras_finetune.layers.mixing import CutMix, MixUp, MixUpOrCutMix
from keras_finetune.layers.random_resized_crop import RandomResizedCrop

__all__ = ["CutMix", "MixUp", "MixUpOrCutMix", "RandomResizedCrop", "image_augmentation"]
