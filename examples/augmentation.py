"""Augmentation in the tf.data pipeline: RandomResizedCrop and Keras's own geometry layers, one preset.

The synthetic images are grey and their class is where a square sits, so flips
and colour jitter are off: a flip would change the class.

    python examples/augmentation.py      # a few seconds on a CPU
"""

import keras
import tensorflow as tf
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.freezing import unfreeze
from keras_finetune.heads import build_classifier
from keras_finetune.layers import image_augmentation


def main():
    augment = image_augmentation(
        16, 16, crop_scale=(0.7, 1.0), flip=None, rotation=10.0, zoom=None, translation=0.05,
        brightness=None, contrast=None, saturation=None, hue=None, seed=0,
    )
    print(" -> ".join(layer.name for layer in augment.layers))
    x, y = synthetic_images(256, seed=1)
    train = (
        tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
        .map(lambda images, labels: (augment(images, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    changed = augment(x[:32], training=True)
    print(f"mean absolute pixel change {float(tf.reduce_mean(tf.abs(changed - x[:32]))):.3f}; "
          f"at inference {float(tf.reduce_mean(tf.abs(augment(x[:32], training=False) - x[:32]))):.3f}")
    model = build_classifier(unfreeze(pretrained_base()), 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(train, epochs=6, verbose=0, shuffle=False)  # the pipeline shuffles
    print(f"held-out accuracy {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
