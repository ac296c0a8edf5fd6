"""Steps per second for one replica against two.

Part 1, one process: `keras.applications.MobileNetV3Small` (`weights=None`,
96x96x3 inputs, 10 classes, global batch 64) trained by `fit` under
`OneDeviceStrategy` and under `MirroredStrategy` over two devices, bare and
with the playbook's callbacks (`ProgressiveUnfreezing` + `SWA`); fits
alternated, median seconds per epoch (the first epoch of each fit traces and
is not timed). The devices are the GPUs when the
machine has two or more, else two logical CPU devices that share the CPU's
cores (so no speed-up is possible there: the figure shows the cost of
splitting and all-reducing).

Part 2, several processes: the same model under `multi_worker_strategy`, one
worker against two local workers (`run_local_workers`, each process its own
TensorFlow runtime), same global batch; each run reports the chief's median
seconds per epoch, runs alternate.

    python benchmarks/distribute.py [--rounds 3] [--epochs 4]
"""

import argparse
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import EpochTimer  # noqa: E402

from keras_finetune.callbacks import SWA, ProgressiveUnfreezing  # noqa: E402
from keras_finetune.distribute import multi_worker_strategy, run_local_workers  # noqa: E402

# Timing only: the averaged weights' BatchNorm statistics do not matter here.
warnings.filterwarnings("ignore", message="SWA put the averaged weights")

GLOBAL_BATCH = 64
IMAGES = 1024


def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(IMAGES, 96, 96, 3)).astype("float32")
    y = rng.integers(0, 10, IMAGES)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).cache().prefetch(2)


def build(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV3Small(input_shape=(96, 96, 3), weights=None, classes=10)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def playbook(model):
    # Everything trains, as in the bare run: the callbacks' own cost is what differs.
    return [ProgressiveUnfreezing(model, {0: "all"}, {0: 0.01}, freeze_batchnorm=False), SWA(start_epoch=0)]


def epoch_seconds(model, dataset, callbacks, epochs):
    timer = EpochTimer()
    model.fit(dataset, epochs=epochs, verbose=0, shuffle=False, callbacks=[*callbacks, timer])
    return timer.seconds


def one_process(rounds, epochs):
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus if len(gpus) >= 2 else tf.config.list_logical_devices("CPU"))[:2]]
    dataset = data()
    strategies = {"1 replica": tf.distribute.OneDeviceStrategy(devices[0]), "2 replicas": tf.distribute.MirroredStrategy(devices)}
    runs = {}
    for name, strategy in strategies.items():
        runs[name] = (build(strategy), [])
        model = build(strategy)
        runs[f"{name} + PU + SWA"] = (model, playbook(model))
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, callbacks) in runs.items():
            seconds[name] += epoch_seconds(model, dataset, callbacks, epochs)[1:]  # the first epoch traces
    steps = IMAGES // GLOBAL_BATCH
    print(
        f"One process, devices {devices}, {steps} steps of {GLOBAL_BATCH} images per epoch, "
        f"{rounds} fits of {epochs - 1} timed epochs each, medians:"
    )
    report(seconds, "1 replica")


def report(seconds, reference):
    steps = IMAGES // GLOBAL_BATCH
    base = float(np.median(seconds[reference]))
    for name, values in seconds.items():
        median = float(np.median(values))
        print(f"  {name:22s} {steps / median:6.2f} steps/s  {median:6.3f} s/epoch  time ratio {median / base:.3f}")


def worker(epochs):
    strategy = multi_worker_strategy()
    model = build(strategy)
    times = epoch_seconds(model, data(), [], epochs)
    print(json.dumps({"seconds": times[1:]}))  # the first epoch traces


def several_processes(rounds, epochs):
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--epochs", str(epochs)]
    seconds = {"1 worker": [], "2 workers": []}
    for _ in range(rounds):
        for workers, name in enumerate(seconds, start=1):
            output = run_local_workers(command, num_workers=workers, timeout=600)[0]
            seconds[name] += json.loads(output.strip().splitlines()[-1])["seconds"]
    print(
        f"\nmulti_worker_strategy, {IMAGES // GLOBAL_BATCH} steps of {GLOBAL_BATCH} images per epoch, "
        f"{rounds} runs of {epochs - 1} timed epochs each (the chief's), medians:"
    )
    report(seconds, "1 worker")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fits per configuration, alternated")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit (the first is not timed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.epochs)
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    one_process(args.rounds, args.epochs)
    several_processes(args.rounds, args.epochs)


if __name__ == "__main__":
    main()
