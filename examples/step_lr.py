"""PyTorch's StepLR for `model.fit`: the rate times `gamma` every `step_size` epochs.

    python examples/step_lr.py      # a few seconds on a CPU
"""

import keras
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.callbacks import StepLR
from keras_finetune.freezing import unfreeze
from keras_finetune.heads import build_classifier


def main():
    base = unfreeze(pretrained_base())          # whole base trains, BatchNorm stays frozen
    x, y = synthetic_images(256, seed=1)
    model = build_classifier(base, 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[StepLR(step_size=2, gamma=0.5)])
    print(f"learning rate per epoch {[round(r, 8) for r in history.history['learning_rate']]}")
    print(f"held-out accuracy {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
