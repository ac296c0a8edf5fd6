"""Progressive unfreezing in one `fit`: what it costs per epoch, and how often it traces.

Median seconds per epoch of a bare `fit` against the same fit with
`ProgressiveUnfreezing` and `CosineAnnealing` added (first epoch, which
traces, excluded), interleaved and repeated; and the number of traces of the
train step in a three-phase run. What it is worth against the two-fit
recompile recipe is a row of the demo's ablation (`benchmarks/demo.py`).

    python benchmarks/progressive_unfreezing.py [--repeats 5]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_finetune import demo  # noqa: E402
from keras_finetune.pretrained import build_base  # noqa: E402
from keras_finetune.callbacks import CosineAnnealing, ProgressiveUnfreezing  # noqa: E402
from keras_finetune.freezing import unfreeze  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.losses import SparseCategoricalCrossentropy  # noqa: E402

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
    base = build_base()
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
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cost(args.repeats)


if __name__ == "__main__":
    main()
