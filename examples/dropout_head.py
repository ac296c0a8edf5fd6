"""A dropout classification head on a pretrained base: pooling, dropout, dense, dropout, dense.

Trained on 24 images with the base frozen, with and without dropout.

    python examples/dropout_head.py      # a few seconds on a CPU
"""

import keras
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.freezing import freeze
from keras_finetune.heads import build_classifier


def main():
    base = freeze(pretrained_base())
    x, y = synthetic_images(24, seed=1)
    x_test, y_test = synthetic_images(512, seed=2)
    for dropout in ((0.5, 0.3), 0.0):
        keras.utils.set_random_seed(0)
        model = build_classifier(base, 4, hidden_units=(128,), dropout=dropout, pooling="flatten")
        print(" -> ".join(layer.name for layer in model.layers[1:]))
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=20, batch_size=8, verbose=0)
        print(f"dropout {dropout}: training accuracy {accuracy(model, x, y):.3f}, "
              f"held-out accuracy {accuracy(model, x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
