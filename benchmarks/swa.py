"""SWA: averaging overhead and BatchNorm update cost.

Part 1, overhead: epochs of `keras.applications.MobileNetV3Small`
(`weights=None`, 96x96x3 inputs, 10 classes) with a bare `fit`, with `SWA`
averaging at the end of every epoch, and with `SWA` also writing its state
to a `backup_dir` each epoch; epochs interleaved, median seconds per epoch
(the epoch's end, where SWA averages, is inside the timed span).

Part 2, BatchNorm update: `update_batchnorm` over the same data against one
inference pass over it (a traced `model(x, training=False)` per batch, and
`model.predict`) and against the training-mode forward pass it cannot beat
(a traced `model(x, training=True)`: BatchNorm computes batch moments),
interleaved; median and best of the calls. The first (tracing) call of each
is excluded and printed apart. (On the 2-core machine these timings are
bimodal, e.g. 0.65 s or 1.27 s for the same call: compare medians of many.)

What SWA is worth on the demo's task is a row of the demo's ablation
(`benchmarks/demo.py`).

    python benchmarks/swa.py [--repeats 7]
"""

import argparse
import os
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import interleaved_epochs, print_ratios  # noqa: E402

from keras_finetune.callbacks import SWA, update_batchnorm  # noqa: E402

# The SWA warning about BatchNorm statistics is expected where no bn_data is given.
warnings.filterwarnings("ignore", message="SWA put the averaged weights")


def mobilenet_data(images=512, batch_size=32):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(input_shape=(96, 96, 3), weights=None, classes=10)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(images, 96, 96, 3)).astype("float32")
    y = rng.integers(0, 10, images)
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()


def overhead(repeats: int) -> None:
    model, dataset = mobilenet_data()
    weights = sum(int(np.prod(v.shape)) for v in model.weights)
    backup = tempfile.mkdtemp()

    def run(callbacks, extra=()):
        # SWA first: its epoch-end averaging falls inside the timer's span.
        model.fit(dataset, epochs=1, verbose=0, callbacks=[*extra, *callbacks])

    seconds = interleaved_epochs(
        {
            "bare fit": run,
            "fit + SWA": lambda callbacks: run(callbacks, [SWA(start_epoch=0)]),
            "fit + SWA, backup_dir": lambda callbacks: run(callbacks, [SWA(start_epoch=0, backup_dir=backup)]),
        },
        repeats,
    )
    steps = len(list(dataset))
    print(
        f"Averaging overhead, MobileNetV3Small (weights=None, {weights:,} weights), "
        f"{steps} steps of 32 96x96x3 images per epoch, median of {repeats} epochs:"
    )
    print_ratios(seconds, "bare fit")


def batchnorm_update(repeats: int) -> None:
    model, dataset = mobilenet_data()
    images = dataset.map(lambda x, y: x)
    infer = tf.function(lambda x: model(x, training=False))
    forward = tf.function(lambda x: model(x, training=True))

    timed = {
        "one inference pass (traced call)": lambda: [infer(x) for x in images],
        "model.predict": lambda: model.predict(images, verbose=0),
        "training-mode forward (traced call)": lambda: [forward(x) for x in images],
        "update_batchnorm": lambda: update_batchnorm(model, images),
    }
    first = {}
    for name, function in timed.items():  # the first call of each traces
        start = time.perf_counter()
        function()
        first[name] = time.perf_counter() - start
    seconds = {name: [] for name in timed}
    for _ in range(repeats):
        for name, function in timed.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(values)) for name, values in seconds.items()}
    reference = medians["one inference pass (traced call)"]
    print(f"\nBatchNorm update over {len(list(images))} batches of 32, {repeats} calls each:")
    for name, median in medians.items():
        print(
            f"  {name:36s} median {median:6.3f} s  ratio {median / reference:.2f}  "
            f"best {min(seconds[name]):6.3f} s  (first call {first[name]:.2f} s)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--parts", default="overhead,batchnorm", help="comma-separated parts to run")
    args = parser.parse_args()
    parts = {"overhead": lambda: overhead(args.repeats), "batchnorm": lambda: batchnorm_update(args.repeats)}
    for name in args.parts.split(","):
        parts[name]()


if __name__ == "__main__":
    main()
