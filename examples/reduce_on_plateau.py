"""Keras's ReduceLROnPlateau next to unfreezing phases: a reduction holds until the next phase sets its rate.

`min_delta=1.0` makes every epoch without a drop of 1.0 in the loss a plateau,
so the reductions show in this short run: the head's rate is halved, the phase
starting at epoch 3 (from 0) sets its own rate, and the next plateau halves that.

    python examples/reduce_on_plateau.py      # a few seconds on a CPU
"""

import keras
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.callbacks import ProgressiveUnfreezing
from keras_finetune.heads import build_classifier


def main():
    base = pretrained_base()
    x, y = synthetic_images(256, seed=1)
    model = build_classifier(base, 4, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    callbacks = [
        ProgressiveUnfreezing(base, {0: 0, 3: "all"}, {0: 1e-3, 3: 2e-4}),
        keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=1, min_delta=1.0),
    ]
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=callbacks)
    print(f"learning rate per epoch {[round(r, 8) for r in history.history['learning_rate']]}")
    print(f"held-out accuracy {accuracy(model, *synthetic_images(256, seed=2)):.3f}")


if __name__ == "__main__":
    main()
