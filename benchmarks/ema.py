"""EMA: the per-step cost of averaging every weight, against a bare `fit` and Keras's own `use_ema=True`.

Epochs of `keras.applications.MobileNetV3Small` (`weights=None`, 96x96x3
inputs, 10 classes, the model and data of `benchmarks/swa.py`): a bare `fit`;
`fit` with `EMA` updating after every step and after every 10th; and, as the
reference users have today, the same model compiled with Keras's
`SGD(use_ema=True)` (trainable variables only, inside the train step).
Epochs interleaved, median seconds per epoch, from the first step's begin
to the last step's end: the ratio is the per-step cost. (A new `EMA` makes
its average and traces its update in its first `fit`: a one-off cost,
printed apart.) What EMA is worth in accuracy is measured
on the demo task by `benchmarks/playbook_parts.py`.

    python benchmarks/ema.py [--repeats 15]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from swa import mobilenet_data  # noqa: E402
from timing import interleaved_epochs, print_ratios  # noqa: E402

from keras_finetune.callbacks import EMA  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    model, dataset = mobilenet_data()
    keras_ema, _ = mobilenet_data()
    keras_ema.compile(keras.optimizers.SGD(0.01, momentum=0.9, use_ema=True), "sparse_categorical_crossentropy")
    weights = sum(int(np.prod(v.shape)) for v in model.weights)

    def run(callbacks, extra=(), fitted=model):
        fitted.fit(dataset, epochs=1, verbose=0, callbacks=[*extra, *callbacks])

    # One callback each, reused: its average and traced update are made once, in the untimed first fit.
    every_step, every_10th = EMA(0.999), EMA(0.999, every_n_steps=10)
    seconds = interleaved_epochs(
        {
            "bare fit": run,
            "fit + EMA, every step": lambda callbacks: run(callbacks, [every_step]),
            "fit + EMA, every 10th step": lambda callbacks: run(callbacks, [every_10th]),
            "Keras SGD(use_ema=True)": lambda callbacks: run(callbacks, fitted=keras_ema),
        },
        args.repeats,
    )
    steps = len(list(dataset))
    print(
        f"EMA cost, MobileNetV3Small (weights=None, {weights:,} weights), "
        f"{steps} steps of 32 96x96x3 images per epoch, median of {args.repeats} epochs:"
    )
    print_ratios(seconds, "bare fit")
    start = time.perf_counter()
    run([], [EMA(0.999)])
    print(f"  one-off: a first fit of one epoch with a new EMA takes {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
