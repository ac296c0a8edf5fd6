"""Progressive unfreezing in one `fit`: head only, then the top block, then the whole base.

The optimizer is built over every variable any phase trains, so a phase change
keeps its state; the base's BatchNorm layers stay frozen (inference mode).

    python examples/freezing_phases.py      # a few seconds on a CPU
"""

import keras
import numpy as np
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.callbacks import ProgressiveUnfreezing
from keras_finetune.heads import build_classifier
from keras_finetune.losses import SparseCategoricalCrossentropy


class FirstConvKernel(keras.callbacks.Callback):
    """Records the base's first kernel at each epoch end."""

    def __init__(self, base):
        super().__init__()
        self.base, self.kernels = base, []

    def on_epoch_end(self, epoch, logs=None):
        self.kernels.append(self.base.get_layer("conv0").kernel.numpy().copy())


def main():
    base = pretrained_base()
    pretrained = base.get_layer("conv0").kernel.numpy().copy()
    x, y = synthetic_images(256, seed=1)
    x_test, y_test = synthetic_images(256, seed=2)
    model = build_classifier(base, 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), SparseCategoricalCrossentropy(label_smoothing=0.1))
    unfreezing = ProgressiveUnfreezing(
        base,
        schedule={0: 0, 2: 4, 4: "all"},            # head; the top 4 layers (conv1 block); all
        learning_rates={0: 1e-3, 2: 3e-4, 4: 1e-4},
        verbose=1,
    )
    kernels = FirstConvKernel(base)
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[unfreezing, kernels])
    moved = [not np.array_equal(k, pretrained) for k in kernels.kernels]
    print(f"trainable params per epoch {history.history['trainable_params']}")
    print(f"conv0 changed by epoch end {moved}")   # only once the last phase reaches it
    print(f"held-out accuracy {accuracy(model, x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
