"""MixUp, CutMix and RandomResizedCrop throughput through a `tf.data` pipeline.

Mixing: cached batches of 64x224x224x3 float32 images with one-hot labels
(1000 classes), mapped with
- a bare hand-written mix, the floor: Beta λ per sample (two gamma draws),
  one gather, one multiply-add, labels likewise;
- `keras_finetune.layers.MixUp` / `CutMix` (with one-hot labels, and with
  integer labels, which they turn one-hot themselves);
- `keras.layers.MixUp` / `CutMix` fed Keras's dict form;
- `CutMix` on uint8 batches (a pure copy; the output stays uint8).
Crop: cached 256x256x3 float32 images cropped to 224x224 by
`RandomResizedCrop` (one `crop_and_resize` per batch) against the usual
per-image map (`tf.image.sample_distorted_bounding_box` + `tf.slice` +
`tf.image.resize`, then batch), sequential and with
`num_parallel_calls=AUTOTUNE`.

Each pipeline gets one untimed pass (tracing, cache fill), then the rounds
run interleaved; in a round each pipeline's figure is its best of 3 passes.
Printed: the median over rounds of images/s, and the median of each round's
ratio to the reference.

    python benchmarks/mixing.py [--rounds 5] [--batches 12]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_finetune.layers import CutMix, MixUp, RandomResizedCrop  # noqa: E402

BATCH = 64
CLASSES = 1000


def bare_mixup(alpha=0.2):
    def mix(images, labels):
        batch = tf.shape(images)[0]
        first = tf.random.gamma([batch], alpha)
        lam = first / (first + tf.random.gamma([batch], alpha))
        permutation = tf.random.shuffle(tf.range(batch))
        lam_images = tf.reshape(lam, (-1, 1, 1, 1))
        lam_labels = tf.reshape(lam, (-1, 1))
        images = lam_images * images + (1.0 - lam_images) * tf.gather(images, permutation)
        labels = lam_labels * labels + (1.0 - lam_labels) * tf.gather(labels, permutation)
        return images, labels

    return mix


def keras_dict(layer):
    def mix(images, labels):
        out = layer({"images": images, "labels": labels})
        return out["images"], out["labels"]

    return mix


def per_image_crop(image):
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4)),
        area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.image.resize(tf.slice(image, begin, size), (224, 224))


def throughput(dataset, images_per_pass):
    """Best of 3 passes, in images per second."""
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in dataset:
            pass
        best = min(best, time.perf_counter() - start)
    return images_per_pass / best


def run(pipelines, images_per_pass, rounds, reference):
    for dataset in pipelines.values():  # trace and fill the caches
        for _ in dataset:
            pass
    rates = {name: [] for name in pipelines}
    for _ in range(rounds):
        for name, dataset in pipelines.items():
            rates[name].append(throughput(dataset, images_per_pass))
    width = max(map(len, pipelines))
    for name, values in rates.items():
        ratio = np.median(np.array(values) / np.array(rates[reference]))
        print(f"  {name:{width}s} {np.median(values):8.0f} img/s  ratio to {reference} {ratio:.2f}")
    return rates


def mixing_pipelines(batches):
    rng = np.random.default_rng(0)
    count = batches * BATCH
    images = rng.uniform(0, 255, size=(count, 224, 224, 3)).astype("float32")
    ids = rng.integers(0, CLASSES, size=count).astype("int32")
    one_hot = np.eye(CLASSES, dtype="float32")[ids]

    def cached(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()

    floats, floats_ids = cached(images, one_hot), cached(images, ids)
    uint8 = cached(images.astype("uint8"), ids)
    return {
        "bare mix (floor)": floats.map(bare_mixup()),
        "MixUp": floats.map(MixUp(seed=0)),
        "MixUp, int labels": floats_ids.map(MixUp(num_classes=CLASSES, seed=0)),
        "keras MixUp (dict)": floats.map(keras_dict(keras.layers.MixUp(seed=0))),
        "CutMix": floats.map(CutMix(seed=0)),
        "CutMix, int labels": floats_ids.map(CutMix(num_classes=CLASSES, seed=0)),
        "keras CutMix (dict)": floats.map(keras_dict(keras.layers.CutMix(seed=0))),
        "CutMix, uint8": uint8.map(CutMix(num_classes=CLASSES, seed=0)),
    }


def crop_pipelines(batches):
    images = np.random.default_rng(1).uniform(0, 255, size=(batches * BATCH, 256, 256, 3)).astype("float32")
    single = tf.data.Dataset.from_tensor_slices(images).cache()
    crop = RandomResizedCrop(224, 224, seed=0)
    return {
        "per-image map": single.map(per_image_crop).batch(BATCH),
        "per-image map, AUTOTUNE": single.map(per_image_crop, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH),
        "RandomResizedCrop": single.batch(BATCH).map(crop),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores")
    print(f"Mixing: {args.batches} cached batches of {BATCH}x224x224x3, {args.rounds} rounds of best-of-3")
    rates = run(mixing_pipelines(args.batches), args.batches * BATCH, args.rounds, "bare mix (floor)")
    print("Against Keras's layers (same rounds, median of the per-round ratios):")
    for ours, theirs in [("MixUp", "keras MixUp (dict)"), ("CutMix", "keras CutMix (dict)")]:
        ratio = np.median(np.array(rates[ours]) / np.array(rates[theirs]))
        print(f"  {ours} / {theirs}: {ratio:.2f}")
    print(f"\nCrop: {args.batches} batches of {BATCH} images 256x256x3 -> 224x224")
    run(crop_pipelines(args.batches), args.batches * BATCH, args.rounds, "per-image map")


if __name__ == "__main__":
    main()
