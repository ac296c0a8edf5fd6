"""Per-epoch clocks shared by the benchmark scripts (importable when a script runs as
`python benchmarks/<name>.py`, which puts this folder on `sys.path`)."""

import threading
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


def turn_taking_fits(fits: dict, epochs: int) -> dict:
    """Seconds of each timed epoch of each `fit(callbacks, epochs)` in `fits`, one `fit` each, epoch by epoch in turn.

    For fits whose callbacks carry state from epoch to epoch (an average, a
    schedule, phases), which `interleaved_epochs`' one-epoch fits would
    restart. Each runs in a thread of its own and waits for its turn before
    each epoch, so only one epoch runs at a time and machine noise hits all
    of them alike. Each runs `epochs` + 1 epochs, the last left untimed: a
    fit's work after it (`on_train_end`) overlaps the others' last epoch.
    """
    names = list(fits)
    state = {"turn": 0, "arrived": 0, "failed": None}
    condition = threading.Condition()

    class TakeTurn(keras.callbacks.Callback):  # first in the list
        def __init__(self, index):
            super().__init__()
            self.index = index

        def on_train_begin(self, logs=None):
            with condition:  # no epoch starts before every fit is set up
                state["arrived"] += 1
                condition.notify_all()

        def on_epoch_begin(self, epoch, logs=None):
            with condition:
                condition.wait_for(lambda: (state["turn"] == self.index and state["arrived"] == len(names)) or state["failed"])
                if state["failed"]:
                    raise RuntimeError(f"another fit failed: {state['failed']!r}")

    class PassTurn(keras.callbacks.Callback):  # last in the list
        def __init__(self, index):
            super().__init__()
            self.index = index

        def on_epoch_end(self, epoch, logs=None):
            with condition:
                state["turn"] = (self.index + 1) % len(names)
                condition.notify_all()

    timers = {name: EpochTimer() for name in names}

    def run(index, name):
        try:
            fits[name]([TakeTurn(index), timers[name], PassTurn(index)], epochs + 1)
        except BaseException as error:
            with condition:
                state["failed"] = state["failed"] or error
                condition.notify_all()

    threads = [threading.Thread(target=run, args=(index, name)) for index, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if state["failed"]:
        raise state["failed"]
    return {name: timers[name].seconds[:epochs] for name in names}


def print_ratios(seconds: dict, reference: str, unit: str = "epoch") -> None:
    """One line per entry: median seconds per `unit` and the ratio to `reference`."""
    width = max(map(len, seconds))
    for name, median in seconds.items():
        print(f"  {name:{width}s} {median:6.3f} s/{unit}  ratio {median / seconds[reference]:.3f}")
