"""Synthetic data the examples share (nothing to download): import it from a
script in this folder, which Python puts on `sys.path` when it runs the script."""

import numpy as np


def synthetic_images(count, seed):
    """Four classes: a bright square in one of the four quadrants, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count).astype("int32")
    images = rng.normal(0.0, 0.5, (count, 16, 16, 1)).astype("float32")
    for index, label in enumerate(labels):
        row, column = divmod(int(label), 2)
        images[index, 8 * row + 2 : 8 * row + 6, 8 * column + 2 : 8 * column + 6] += 1.0
    return images, labels
