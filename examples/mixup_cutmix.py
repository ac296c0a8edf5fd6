"""MixUp and CutMix on `(images, integer labels)` batches in tf.data: one permutation for both.

    python examples/mixup_cutmix.py      # a few seconds on a CPU
"""

import keras
import numpy as np
import tensorflow as tf
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.callbacks import StopMixing
from keras_finetune.freezing import unfreeze
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix


def main():
    mixing = MixUpOrCutMix(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, num_classes=4, label_smoothing=0.1, seed=0)
    x, y = synthetic_images(256, seed=1)
    train = (
        tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
        .map(mixing, num_parallel_calls=tf.data.AUTOTUNE)          # -> (images, soft one-hot labels)
        .prefetch(tf.data.AUTOTUNE)
    )
    _, labels = next(iter(train))
    labels = labels.numpy()
    print(f"label rows sum to {labels.sum(axis=1).min():.4f}..{labels.sum(axis=1).max():.4f}; "
          f"{np.mean(labels.max(axis=1) < 0.925 - 1e-6):.0%} of the first batch's rows are mixtures")
    model = build_classifier(unfreeze(pretrained_base()), 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    model.fit(train, epochs=8, verbose=0, shuffle=False, callbacks=[StopMixing(mixing, epoch=6)])  # last 2 unmixed
    print(f"held-out accuracy {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
