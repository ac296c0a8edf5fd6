"""Synthetic data and a small pretrained base the examples share (nothing to download):
import it from a script in this folder, which Python puts on `sys.path` when it runs the script."""

import keras
import numpy as np

from keras_finetune.heads import build_classifier


def synthetic_images(count, seed):
    """Four classes: a bright square in one of the four quadrants, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count).astype("int32")
    images = rng.normal(0.0, 0.5, (count, 16, 16, 1)).astype("float32")
    for index, label in enumerate(labels):
        row, column = divmod(int(label), 2)
        images[index, 8 * row + 2 : 8 * row + 6, 8 * column + 2 : 8 * column + 6] += 1.0
    return images, labels


def pretrained_base(seed=0, epochs=3):
    """Two conv-BatchNorm-ReLU-pool blocks, pre-trained under a linear head on other samples of the task.

    The class is where the square is: put heads on it with `pooling="flatten"`, as global
    pooling would throw the position away."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1))
    x = inputs
    for index, filters in enumerate((8, 16)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{index}")(x)
    base = keras.Model(inputs, x, name="base")
    model = build_classifier(base, 4, hidden_units=(), dropout=0.0, pooling="flatten")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(*synthetic_images(512, seed + 100), epochs=epochs, batch_size=32, verbose=0)
    return base


def accuracy(model, images, labels):
    """Held-out accuracy of a softmax classifier."""
    return float(np.mean(np.argmax(model.predict(images, verbose=0), axis=-1) == labels))
