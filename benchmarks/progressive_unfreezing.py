"""Progressive unfreezing in one `fit` against the two-fit recompile recipe.

Part 1, quality: the demo's transfer task (digits 5-9 from 3 images per class,
a conv base pre-trained on digits 0-4), over several seeds, 100 epochs in all:
- two fits, as copied: head on the frozen base, then `base.trainable = True`,
  recompile with `Adam(1e-5)`, fit again (BatchNorm back in training mode);
- two fits, fair: the same, but BatchNorm kept frozen and the second fit at
  the same rate as the one-fit recipe;
- one fit: `ProgressiveUnfreezing` (head only, then the whole base, BatchNorm
  frozen), optimizer state kept.

Part 2, cost: median seconds per epoch of a bare `fit` against the same fit
with `ProgressiveUnfreezing` and `CosineAnnealing` added (first epoch, which
traces, excluded), interleaved and repeated; and the number of traces of the
train step in a three-phase run.

    python benchmarks/progressive_unfreezing.py [--seeds 3] [--repeats 5]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_finetune import demo  # noqa: E402
from keras_finetune.callbacks import CosineAnnealing, ProgressiveUnfreezing  # noqa: E402
from keras_finetune.freezing import unfreeze  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.losses import SparseCategoricalCrossentropy  # noqa: E402

EPOCHS = 100


def one_fit(base, images, labels, seed):
    schedule, rates = demo.unfreezing_schedule(EPOCHS)
    return demo.train_classifier(
        base, images, labels, seed, EPOCHS, callbacks=[ProgressiveUnfreezing(base, schedule, rates)]
    )


def quality(seeds: int) -> None:
    images, labels = demo.load_digits_images()
    source = np.isin(labels, demo.SOURCE_CLASSES)
    target_images, target_labels = images[~source], labels[~source] - min(demo.TARGET_CLASSES)
    rate = demo.unfreezing_schedule(EPOCHS)[1][EPOCHS // 2]
    recipes = {
        "two fits, as copied (BatchNorm trains, Adam 1e-5)": lambda b, x, y, s: demo.two_fits(b, x, y, s, EPOCHS, 1e-5),
        f"two fits, fair (BatchNorm frozen, Adam {rate:g})": lambda b, x, y, s: demo.two_fits(b, x, y, s, EPOCHS, rate, keep_batchnorm_frozen=True),
        f"one fit, ProgressiveUnfreezing (Adam {rate:g} after)": one_fit,
    }
    results = {name: [] for name in recipes}
    for seed in range(seeds):
        train, test = demo._few_shot_split(target_labels, 3, np.random.default_rng(seed))
        pretrained = demo.pretrain_base(images[source], labels[source], seed)
        for name, recipe in recipes.items():
            start = time.perf_counter()
            model = recipe(demo.copy_base(pretrained), target_images[train], target_labels[train], seed)
            seconds = time.perf_counter() - start
            results[name].append((demo._accuracy(model, target_images[test], target_labels[test]), seconds))
        print(f"seed {seed}: " + ", ".join(f"{runs[-1][0]:.1%}" for runs in results.values()), flush=True)
    print(demo.format_table(results, 3, len(test)))


class EpochClock(keras.callbacks.Callback):
    """Seconds per epoch from one epoch's begin to the next (all callbacks' hooks included)."""

    def on_train_begin(self, logs=None):
        self.marks = []

    def on_epoch_begin(self, epoch, logs=None):
        self.marks.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.marks.append(time.perf_counter())
        self.seconds = np.diff(self.marks)


def timed_fit(images, labels, epochs, callbacks, traces=None):
    keras.utils.set_random_seed(0)
    base = demo.build_base(0)
    unfreeze(base)
    model = build_classifier(base, 10, pooling="flatten")
    model.compile(keras.optimizers.Adam(1e-3), SparseCategoricalCrossentropy(label_smoothing=0.1))
    if traces is not None:
        train_step = model.train_step

        def counting_train_step(data):
            traces.append(1)  # Python runs only while tracing
            return train_step(data)

        model.train_step = counting_train_step
    clock = EpochClock()
    model.fit(images, labels, batch_size=32, epochs=epochs, verbose=0, callbacks=[*callbacks(base), clock])
    return clock.seconds


def cost(repeats: int, epochs: int = 12) -> None:
    images, labels = demo.load_digits_images()
    variants = {
        "bare fit (base trainable, BatchNorm frozen)": lambda base: [],
        "+ ProgressiveUnfreezing + CosineAnnealing": lambda base: [
            ProgressiveUnfreezing(base, {0: "all"}, {0: 1e-3}),
            CosineAnnealing(t_max=epochs),
        ],
    }
    seconds = {name: [] for name in variants}
    for _ in range(repeats):
        for name, callbacks in variants.items():
            seconds[name].extend(timed_fit(images, labels, epochs, callbacks)[1:])
    floor = np.median(seconds[next(iter(variants))])
    print(f"\n{len(images)} images, batch 32, {repeats} repeats x {epochs - 1} timed epochs")
    print(f"{'variant':<50}{'median s/epoch':>15}{'ratio':>8}")
    for name, values in seconds.items():
        print(f"{name:<50}{np.median(values):>15.4f}{np.median(values) / floor:>8.3f}")

    traces = []
    phases = {0: 0, 4: 6, 8: "all"}
    per_epoch = timed_fit(
        images, labels, epochs, lambda base: [ProgressiveUnfreezing(base, phases, {0: 1e-3, 4: 3e-4, 8: 1e-4})], traces
    )
    print(f"\nthree phases {phases} over {epochs} epochs: {len(traces)} traces of the train step")
    print("seconds per epoch: " + " ".join(f"{s:.3f}" for s in per_epoch) + " (phase starts: 0, 4, 8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    quality(args.seeds)
    cost(args.repeats)


if __name__ == "__main__":
    main()
