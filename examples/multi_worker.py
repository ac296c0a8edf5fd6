"""Fine-tuning on several machines: MultiWorkerMirroredStrategy with Keras 3.

The script is one worker. Start it once per machine, each with a TF_CONFIG
that lists every worker and gives its own index (worker 0 is the chief):

    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                "task": {"type": "worker", "index": 0}}' python examples/multi_worker.py

or try it on one machine, where it starts the workers itself (about 30
seconds on a CPU):

    python examples/multi_worker.py --local 2

Every worker runs the same fit on its share of each global batch and ends
with the same weights. The chief saves the model to --out; the others save to
a temporary folder, since two processes must not write one file.
"""

import argparse
import hashlib
import os
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from synthetic import synthetic_images

from keras_finetune.callbacks import SWA, ProgressiveUnfreezing
from keras_finetune.distribute import multi_worker_strategy, run_local_workers
from keras_finetune.heads import build_classifier
from keras_finetune.losses import SparseCategoricalCrossentropy

GLOBAL_BATCH = 32


def train(out, epochs):
    strategy = multi_worker_strategy()  # before any other TensorFlow work
    index = strategy.cluster_resolver.task_id  # 0 is the chief
    x_train, y_train = synthetic_images(1024, seed=0)
    x_test, y_test = synthetic_images(256, seed=1)
    # The dataset is batched with the global batch; each worker gets its share.
    train_data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(1024, seed=0).batch(GLOBAL_BATCH)
    with strategy.scope():
        keras.utils.set_random_seed(0)  # every worker builds the same model
        base = keras.Sequential(
            [
                keras.Input((16, 16, 1)),
                keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            ],
            name="base",
        )
        model = build_classifier(base, num_classes=4, hidden_units=(32,), dropout=0.2, pooling="flatten")
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), SparseCategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    callbacks = [
        ProgressiveUnfreezing(base, {0: 0, 1: "all"}, {0: 0.05, 1: 0.02}),
        SWA(start_epoch=epochs - 2, swa_lr=0.01),
    ]
    history = model.fit(train_data, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=2 if index == 0 else 0)
    accuracy = model.evaluate(x_test, y_test, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)["accuracy"]
    weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()[:16]
    print(f"worker {index}: trainable params per epoch {history.history['trainable_params']}")
    print(f"worker {index}: held-out accuracy {accuracy:.3f}, weights sha256 {weights}")
    if index == 0:
        model.save(out)
        print(f"worker 0 saved the model to {out}")
    else:
        with tempfile.TemporaryDirectory() as scratch:
            model.save(os.path.join(scratch, "model.keras"))


def launch(workers, out, epochs):
    command = [sys.executable, os.path.abspath(__file__), "--out", out, "--epochs", str(epochs)]
    outputs = run_local_workers(command, num_workers=workers, timeout=600)
    chief = [line for line in outputs[0].splitlines() if line.startswith("Epoch ") or " - accuracy" in line]
    reports = [line for output in outputs for line in output.splitlines() if line.startswith("worker ")]
    print("\n".join(chief + reports))
    hashes = {line.split("sha256 ")[1].split(",")[0] for line in reports if "sha256" in line}
    print(f"{workers} workers, {'identical' if len(hashes) == 1 else 'DIFFERENT'} weights")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", type=int, metavar="N", help="start N workers on this machine")
    parser.add_argument("--out", default="multi_worker.keras", help="where the chief saves the model")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    if args.local:
        launch(args.local, os.path.abspath(args.out), args.epochs)
    else:
        train(args.out, args.epochs)


if __name__ == "__main__":
    main()
