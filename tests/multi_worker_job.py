"""The training runs test_distribute.py compares across a cluster and one process.

Run by `run_local_workers` as a worker of a two-process cluster
(`python multi_worker_job.py OUT_DIR`: TF_CONFIG comes from the environment),
and imported by the test for the single-process reference (`train_all(None)`).
Each worker keeps its own BackupAndRestore/SWA backup folder. Each run writes
`<run>_<worker index>.npz` holding the final weights (`w0`,
`w1`, ...) and the epoch logs (`log_<name>`).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_finetune.callbacks import SWA, CosineAnnealing, ProgressiveUnfreezing  # noqa: E402
from keras_finetune.distribute import multi_worker_strategy  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.losses import SparseCategoricalCrossentropy  # noqa: E402
from keras_finetune.models import Distiller  # noqa: E402

GLOBAL_BATCH = 16
EPOCHS = 3


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32") + (x[:, :4].mean(axis=(1, 2, 3)) > 0)
    return x, y.astype("int32")


def dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def base_with_batchnorm():
    # synchronized: each replica normalises with the global batch's statistics,
    # as one process does.
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(synchronized=True)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same")(x)
    return keras.Model(inputs, x, name="base")


def dense_net(width, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(width, activation="relu"), keras.layers.Dense(3)]
    )


def train_plain(x, y):
    model = build_classifier(base_with_batchnorm(), 3, hidden_units=(), dropout=0.0)
    # Not Adam: it would scale the round-off in the exactly-zero gradient of
    # the convolution's bias (BatchNorm cancels it) up to full steps.
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), SparseCategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    return model, model.fit(dataset(x, y), epochs=EPOCHS, shuffle=False, verbose=0)


def train_unfreezing_swa(x, y, backup=None, interrupt=False):
    base = base_with_batchnorm()
    model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), SparseCategoricalCrossentropy(), metrics=["accuracy"])
    callbacks = [
        ProgressiveUnfreezing(base, {0: 0, 1: "all"}, {0: 0.1, 1: 0.02}, freeze_batchnorm=False),
        SWA(start_epoch=1, swa_lr=0.01, bn_data=x, backup_dir=backup),
    ]
    if backup:
        callbacks.insert(0, keras.callbacks.BackupAndRestore(backup))
    if interrupt:
        callbacks.append(Interrupt())
    return model, model.fit(dataset(x, y), epochs=EPOCHS, callbacks=callbacks, shuffle=False, verbose=0)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def train_resumed(x, y, folder):
    """train_unfreezing_swa stopped after epoch 1, then rebuilt and resumed from its backup."""
    backup = os.path.join(folder, f"backup_{_index()}")
    try:
        train_unfreezing_swa(x, y, backup, interrupt=True)
    except RuntimeError:
        pass
    return train_unfreezing_swa(x, y, backup)


def train_distiller(x, y):
    teacher, student = dense_net(16, seed=2), dense_net(4, seed=3)
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.Adam(1e-2), metrics=["accuracy"], student_loss_fn=SparseCategoricalCrossentropy(from_logits=True),
        alpha=0.3, temperature=2.0,
    )
    return student, distiller.fit(dataset(x, y), epochs=EPOCHS, callbacks=[CosineAnnealing(EPOCHS)], shuffle=False, verbose=0)


RUNS = {
    "plain": train_plain,
    "unfreezing_swa": train_unfreezing_swa,
    "distiller": train_distiller,
    "resumed": train_resumed,
}


def _index():
    """This worker's index; 0 without a cluster."""
    return json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)


def train_all(strategy, folder):
    """{run: (final weights, epoch logs)} with every model built under `strategy` (None: the default).

    The plain run's logs also hold what `evaluate` and `predict` return afterwards.
    """
    x, y = data()
    results = {}
    for name, train in RUNS.items():
        with (strategy or tf.distribute.get_strategy()).scope():
            model, history = train(x, y, folder) if train is train_resumed else train(x, y)
        logs = dict(history.history)
        if name == "plain":
            evaluated = model.evaluate(dataset(x, y), verbose=0, return_dict=True)
            logs |= {f"evaluate_{key}": [value] for key, value in evaluated.items()}
            logs["predict"] = model.predict(x, batch_size=GLOBAL_BATCH, verbose=0)
        results[name] = ([w.numpy() for w in model.weights], logs)
    return results


def main(out_dir):
    strategy = multi_worker_strategy()
    index = _index()
    for name, (weights, logs) in train_all(strategy, out_dir).items():
        arrays = {f"w{i}": w for i, w in enumerate(weights)} | {f"log_{k}": np.array(v) for k, v in logs.items()}
        np.savez(os.path.join(out_dir, f"{name}_{index}.npz"), **arrays)
    print(f"worker {index} of {strategy.num_replicas_in_sync} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
