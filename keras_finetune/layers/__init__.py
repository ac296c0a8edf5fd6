"""Layers for the input pipeline: MixUp, CutMix, RandomResizedCrop, the augmentation preset and its pixel-range check."""

from keras_finetune.layers.augmentation import PixelRange, image_augmentation
from keras_finetune.layers.mixing import CutMix, MixUp, MixUpOrCutMix
from keras_finetune.layers.random_resized_crop import RandomResizedCrop

__all__ = ["CutMix", "MixUp", "MixUpOrCutMix", "PixelRange", "RandomResizedCrop", "image_augmentation"]
