"""Stochastic Weight Averaging with the BatchNorm statistics recomputed for the averaged weights.

The base's BatchNorm layers train here (`freeze_batchnorm=False`), so the
average needs statistics of its own: SWA recomputes them over `bn_data` when
`fit` ends.

    python examples/swa.py      # a few seconds on a CPU
"""

import keras
import numpy as np
import tensorflow as tf
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.callbacks import SWA
from keras_finetune.freezing import unfreeze
from keras_finetune.heads import build_classifier


class KeepWeights(keras.callbacks.Callback):
    """Keeps the weights at every epoch end (to compare the average with numpy's)."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self.model.get_layer("head_output").kernel.numpy().copy())


def main():
    base = unfreeze(pretrained_base(), freeze_batchnorm=False)
    x, y = synthetic_images(256, seed=1)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(32)
    model = build_classifier(base, 4, pooling="flatten")
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    kept = KeepWeights()
    swa = SWA(start_epoch=4, swa_lr=0.01, anneal_epochs=1, bn_data=train)
    history = model.fit(train, epochs=8, verbose=0, shuffle=False, callbacks=[swa, kept])
    averaged = model.get_layer("head_output").kernel.numpy()
    print(f"weights averaged per epoch {history.history['swa_n']}")
    print(f"head kernel equals numpy's mean of epochs 4-7: {np.allclose(averaged, np.mean(kept.epochs[4:], axis=0), atol=1e-6)}")
    print(f"held-out accuracy of the average {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
