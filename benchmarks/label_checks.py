"""Cost of the class-id checks (`keras_finetune.validation.class_ids`) in a `tf.data` map and in the loss.

Pipeline: cached batches of integer ids (and, in the second pair, of 64x64x3
images beside them) turned one-hot by a `tf.data` map, as `fine_tune` does,
with and without the asserts (ids in [0, K), whole numbers). The ids-only
pair is the worst case: nothing else in the map. Each pipeline gets one
untimed pass, then the rounds run interleaved; printed are the median
batches/s and the median ratio of each round.

Loss: the same linear classifier (1000 classes, batch 256) trained by `fit`
with Keras's `SparseCategoricalCrossentropy` (the floor) and with
`keras_finetune.losses.SparseCategoricalCrossentropy()` (no smoothing: the
same computation plus the checks), median seconds per epoch over interleaved
repeats.

    python benchmarks/label_checks.py [--rounds 7] [--repeats 5]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import interleaved_epochs, print_ratios  # noqa: E402

from keras_finetune.losses import SparseCategoricalCrossentropy  # noqa: E402
from keras_finetune.validation import class_ids  # noqa: E402

CLASSES = 1000


def pipelines(batches: int, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    ids = tf.data.Dataset.from_tensor_slices(rng.integers(0, CLASSES, (batches, batch_size)).astype("int32")).cache()
    images = rng.uniform(0, 255, (batch_size, 64, 64, 3)).astype("float32")
    pairs = ids.map(lambda y: (images, y)).cache()
    return {
        "ids only, tf.one_hot (reference)": ids.map(lambda y: tf.one_hot(y, CLASSES)),
        "ids only, one_hot(class_ids(...))": ids.map(lambda y: tf.one_hot(class_ids(y, CLASSES), CLASSES)),
        "images + ids, tf.one_hot (reference)": pairs.map(lambda x, y: (x, tf.one_hot(y, CLASSES))),
        "images + ids, one_hot(class_ids(...))": pairs.map(lambda x, y: (x, tf.one_hot(class_ids(y, CLASSES), CLASSES))),
    }


def batches_per_second(dataset) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in dataset)
    return count / (time.perf_counter() - start)


def time_pipelines(rounds: int, batches: int, batch_size: int) -> None:
    datasets = pipelines(batches, batch_size)
    for dataset in datasets.values():
        batches_per_second(dataset)
    speeds = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            speeds[name].append(batches_per_second(dataset))
    names = list(datasets)
    print(f"tf.data map, {batches} batches of {batch_size}, {rounds} rounds (medians: batches/s, time ratio and "
          "microseconds per batch over its reference)")
    for index, name in enumerate(names):
        reference = np.array(speeds[names[index - index % 2]])
        mine = np.array(speeds[name])
        ratio = np.median(reference / mine)
        extra = np.median(1e6 / mine - 1e6 / reference)
        print(f"  {name:40s} {np.median(mine):9.1f} batches/s  time ratio {ratio:.3f}  {extra:+6.1f} us/batch")


def time_loss(repeats: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50_000, 64)).astype("float32")
    y = rng.integers(0, CLASSES, 50_000).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(256).cache().prefetch(2)

    def fit_with(loss):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(CLASSES)])
        model.compile(keras.optimizers.SGD(0.01), loss)
        return lambda callbacks: model.fit(data, epochs=1, verbose=0, callbacks=callbacks)

    seconds = interleaved_epochs(
        {
            "keras SparseCategoricalCrossentropy (floor)": fit_with(keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
            "keras_finetune SparseCategoricalCrossentropy": fit_with(SparseCategoricalCrossentropy(from_logits=True)),
        },
        repeats,
    )
    print(f"fit, linear classifier onto {CLASSES} classes, 50000 examples, batch 256, {repeats} repeats")
    print_ratios(seconds, "keras SparseCategoricalCrossentropy (floor)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    time_pipelines(args.rounds, args.batches, args.batch_size)
    time_loss(args.repeats)


if __name__ == "__main__":
    main()
