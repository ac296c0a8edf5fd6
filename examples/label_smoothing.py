"""Label smoothing for integer labels (Keras's sparse loss has none), in both conventions.

With ε = 0.1 the best a model can do is 1 − ε + ε/K on the true class, so its
confidence stops short of 1; without smoothing it heads for 1.

    python examples/label_smoothing.py      # a few seconds on a CPU
"""

import keras
import numpy as np
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.freezing import freeze
from keras_finetune.heads import build_classifier
from keras_finetune.losses import SparseCategoricalCrossentropy, smooth_labels


def main():
    for mode in ("uniform", "others"):
        targets = np.asarray(smooth_labels([2], 0.1, 4, mode=mode), "float64").round(4)
        print(f"{mode!r} targets for class 2 of 4, ε=0.1: {targets[0].tolist()}")
    base = freeze(pretrained_base())
    x, y = synthetic_images(256, seed=1)
    x_test, y_test = synthetic_images(256, seed=2)
    for epsilon in (0.0, 0.1):
        keras.utils.set_random_seed(0)
        model = build_classifier(base, 4, pooling="flatten")
        model.compile(keras.optimizers.Adam(1e-3), SparseCategoricalCrossentropy(label_smoothing=epsilon))
        model.fit(x, y, epochs=10, batch_size=32, verbose=0)
        confidence = model.predict(x_test, verbose=0).max(axis=-1).mean()
        print(f"label smoothing {epsilon}: mean top probability {confidence:.3f}, "
              f"held-out accuracy {accuracy(model, x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
