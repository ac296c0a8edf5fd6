"""EMA: the per-step cost of averaging every weight, against a bare train step and Keras's own `use_ema=True`.

`keras.applications.MobileNetV3Small` (`weights=None`, 96x96x3 inputs, 10
classes, the model and data of `benchmarks/swa.py`), compiled with
`SGD(0.01, momentum=0.9)`. On one device `EMA` traces its update into the
train step; this times the train functions `fit` calls, taken from the
model: bare; with `EMA(0.999)` updating after every step and after every
10th; and, as the reference users have today, the same model compiled with
`SGD(use_ema=True)` (Keras's own EMA of the trainable variables inside the
step); and EMA's update alone, called without a step, the floor of what
it can cost inside one. Blocks of 5 steps (or updates) of each in turn,
`--rounds` times; median seconds per step and the ratio to the bare step.

What EMA is worth in accuracy is measured on the demo task by
`benchmarks/playbook_parts.py`.

    python benchmarks/ema.py [--rounds 30]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from swa import mobilenet_data  # noqa: E402
from timing import print_ratios  # noqa: E402

from keras_finetune.callbacks import EMA  # noqa: E402


def with_ema(model, ema: EMA):
    """The train function `fit` runs with `ema`: what its callbacks do before the first step."""
    ema.set_model(model)
    ema.set_params({"epochs": 1, "steps": 16, "verbose": 0})
    ema.on_train_begin()
    ema.on_epoch_begin(0)
    ema.on_train_batch_begin(0)
    return model.train_function


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    model, dataset = mobilenet_data()
    keras_ema, _ = mobilenet_data()
    keras_ema.compile(keras.optimizers.SGD(0.01, momentum=0.9, use_ema=True), "sparse_categorical_crossentropy")
    for fitted in (model, keras_ema):
        fitted.fit(dataset, epochs=1, verbose=0)  # builds the optimizers
    model.make_train_function(force=True)
    every_step = EMA(0.999)
    functions = {
        "bare train step": model.train_function,
        "EMA, every step": with_ema(model, every_step),
        "EMA, every 10th step": with_ema(model, EMA(0.999, every_n_steps=10)),
        "Keras SGD(use_ema=True)": keras_ema.train_function,
        "EMA's update alone": lambda batches: (every_step._average.update(), {"loss": every_step._average.counts[0]})[1],
    }
    batches = iter(tf.distribute.get_strategy().experimental_distribute_dataset(dataset.repeat()))
    for function in functions.values():  # traced before timing
        function(batches)
    seconds = {name: [] for name in functions}
    for _ in range(args.rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(5):
                logs = function(batches)
            float(logs["loss"])  # the steps (or updates) are done
            seconds[name].append((time.perf_counter() - start) / 5)
    weights = sum(int(np.prod(v.shape)) for v in model.weights)
    print(
        f"EMA cost, MobileNetV3Small (weights=None, {weights:,} weights), batches of 32 96x96x3 images; "
        f"median of {args.rounds} blocks of 5 steps:"
    )
    print_ratios({name: float(np.median(values)) for name, values in seconds.items()}, "bare train step", "step")


if __name__ == "__main__":
    main()
