"""Per-epoch clocks shared by the benchmark scripts (importable when a script runs as
`python benchmarks/<name>.py`, which puts this folder on `sys.path`)."""

import time

import keras
import numpy as np


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch, from its begin to its end."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def interleaved_epochs(fits: dict, repeats: int) -> dict:
    """Median seconds per epoch of each `fit(callbacks)` in `fits`.

    Each runs once untimed (it traces), then one epoch each in turn, `repeats`
    times, so that machine noise hits all of them alike.
    """
    for fit in fits.values():
        fit([])
    seconds = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            timer = EpochTimer()
            fit([timer])
            seconds[name] += timer.seconds
    return {name: float(np.median(values)) for name, values in seconds.items()}


def print_ratios(seconds: dict, reference: str, unit: str = "epoch") -> None:
    """One line per entry: median seconds per `unit` and the ratio to `reference`."""
    width = max(map(len, seconds))
    for name, median in seconds.items():
        print(f"  {name:{width}s} {median:6.3f} s/{unit}  ratio {median / seconds[reference]:.3f}")
