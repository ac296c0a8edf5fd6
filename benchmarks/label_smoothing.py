"""Cost of sparse label smoothing inside `fit`, against the usual alternatives.

Three ways to train the same linear classifier on integer labels, interleaved
and repeated so that machine noise hits all of them alike:

- keras sparse, no smoothing: `keras.losses.SparseCategoricalCrossentropy()`
  (the floor: what unsmoothed training costs);
- snippet, one-hot + Keras smoothing: `tf.data` maps the labels to one-hot
  and `keras.losses.CategoricalCrossentropy(label_smoothing=0.1)` smooths;
- keras_finetune sparse smoothing:
  `keras_finetune.losses.SparseCategoricalCrossentropy(label_smoothing=0.1)`.

Prints the median seconds per epoch (first epoch, which traces, excluded)
and each one's ratio to the floor.

    python benchmarks/label_smoothing.py [--classes 1000] [--repeats 5]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import EpochTimer  # noqa: E402

from keras_finetune.losses import SparseCategoricalCrossentropy  # noqa: E402


def make_model(features, classes):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(classes)])


def datasets(x, labels, classes, batch_size):
    sparse = tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size).cache()
    one_hot = sparse.map(lambda images, y: (images, tf.one_hot(y, classes)))
    return sparse.prefetch(2), one_hot.prefetch(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, args.features)).astype("float32")
    labels = rng.integers(0, args.classes, size=args.examples).astype("int32")
    sparse_ds, one_hot_ds = datasets(x, labels, args.classes, args.batch_size)
    variants = {
        "keras sparse, no smoothing (floor)": (
            sparse_ds, lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        "snippet: one-hot in tf.data + keras CCE(label_smoothing=0.1)": (
            one_hot_ds, lambda: keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)),
        "keras_finetune SparseCategoricalCrossentropy(label_smoothing=0.1)": (
            sparse_ds, lambda: SparseCategoricalCrossentropy(label_smoothing=0.1, from_logits=True)),
    }
    seconds = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (dataset, loss) in variants.items():
            model = make_model(args.features, args.classes)
            model.compile(keras.optimizers.SGD(0.01), loss())
            timer = EpochTimer()
            model.fit(dataset, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[timer])
            seconds[name].extend(timer.seconds[1:])

    floor = np.median(seconds[next(iter(variants))])
    print(f"{args.examples} examples, {args.classes} classes, batch {args.batch_size}, "
          f"{args.repeats} repeats x {args.epochs - 1} timed epochs")
    width = max(map(len, variants))
    print(f"{'variant':<{width}}  {'median s/epoch':>14}  {'ratio':>6}")
    for name, values in seconds.items():
        median = np.median(values)
        print(f"{name:<{width}}  {median:14.4f}  {median / floor:6.3f}")


if __name__ == "__main__":
    main()
