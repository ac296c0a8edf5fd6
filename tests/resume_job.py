"""One resumable training run, for test_resume.py: killed, interrupted or whole, in a process of its own.

    python tests/resume_job.py PART BACKUP_DIR WEIGHTS_FILE [--kill-at N] [--raise-at N]

PART is the resumable part under test: `unfreezing` (ProgressiveUnfreezing with
CosineAnnealing), `steps` (ProgressiveUnfreezing with StepLR), `one_cycle`
(OneCycle restarted per phase, its momentum cycled), `swa` (SWA with its
backup_dir), `ema` (EMA with its backup_dir, an update every 4 steps) or
`fine_tune` (its backup_dir). Every run has a dropout
head, a shuffled and augmented pipeline whose epoch e depends on (seed, e)
alone (`epoch_order`, `reseed`), `EpochSeeds` and `AtomicBackup`, as a user
composes them. `--kill-at N` sends this process SIGKILL after its N-th batch,
`--raise-at N` raises there; a run that reaches the end writes the weights.
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_finetune import fine_tune  # noqa: E402
from keras_finetune.callbacks import (  # noqa: E402
    EMA, SWA, AtomicBackup, CosineAnnealing, EpochSeeds, OneCycle, ProgressiveUnfreezing, StepLR,
)
from keras_finetune.callbacks.backup import resumed_epoch  # noqa: E402
from keras_finetune.callbacks.epoch_seeds import epoch_order, reseed  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.layers import image_augmentation  # noqa: E402
from keras_finetune.layers.data_layer import pipeline_seed_states  # noqa: E402

EPOCHS, BATCH, SEED = 6, 8, 0
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (48, 8, 8, 1)).astype("float32")
LABELS = (IMAGES[:, :4].mean(axis=(1, 2, 3)) > IMAGES[:, 4:].mean(axis=(1, 2, 3))).astype("int32") + 2 * (IMAGES[:, :, :4].mean(axis=(1, 2, 3)) > 127)
LABELS = np.minimum(LABELS, 2).astype("int32")


def base() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv0")(x)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    model = keras.Model(inputs, x, name="base")
    model.get_layer("bn0").moving_mean.assign(np.full(8, 0.1, "float32"))  # learned statistics, as pretrained
    return model


def epoch_batches(augmented: bool):
    """`epoch -> that epoch's batches`: its order and its augmentation draws depend on (SEED, epoch) alone."""
    augment = image_augmentation(flip="horizontal", rotation=None, zoom=0.1, translation=0.1, hue=None, saturation=None, seed=SEED)
    states = pipeline_seed_states(augment)

    @tf.autograph.experimental.do_not_convert
    def batches(epoch):
        reseed(states, SEED, epoch)
        indices = tf.data.Dataset.from_tensor_slices(epoch_order(len(IMAGES), SEED, epoch)).batch(BATCH)
        images = (lambda x: augment(x, training=True)) if augmented else (lambda x: x)
        return indices.map(lambda index: (images(tf.gather(IMAGES, index)), tf.gather(LABELS, index)))

    return batches


class Stop(keras.callbacks.Callback):
    """SIGKILL or an exception after the N-th batch of this process."""

    def __init__(self, at: int, kill: bool):
        super().__init__()
        self.at, self.kill, self.seen = at, kill, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"interrupted after batch {self.seen}")


def run_callbacks(part: str, model_base: keras.Model, backup: str) -> list:
    unfreezing = ProgressiveUnfreezing(model_base, {0: 0, 2: "all"}, {0: 1e-2, 2: 1e-3})
    parts = {
        "unfreezing": [unfreezing, CosineAnnealing(t_max=EPOCHS, warmup_epochs=1)],
        "steps": [unfreezing, StepLR(2, gamma=0.5)],
        "one_cycle": [unfreezing, OneCycle(1e-2, restart_per_phase=True)],
        "swa": [unfreezing, SWA(3, swa_lr=5e-4, bn_data=IMAGES, backup_dir=backup)],
        "ema": [unfreezing, EMA(0.9, every_n_steps=4, bn_data=IMAGES, backup_dir=backup)],
    }
    return [EpochSeeds(SEED), *parts[part], AtomicBackup(backup)]  # the backup last, once every log is written


def train(part: str, backup: str, stop: list) -> keras.Model:
    model_base = base()
    if part == "fine_tune":
        return fine_tune(
            model_base, epoch_batches(augmented=False), num_classes=3, head={"hidden_units": (8,), "dropout": 0.5}, epochs=EPOCHS,
            frozen_epochs=2, learning_rate=1e-2, batch_size=BATCH, seed=SEED, backup_dir=backup, callbacks=stop, verbose=0,
        ).model
    model = build_classifier(model_base, 3, hidden_units=(8,), dropout=0.5)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    start = resumed_epoch(backup)
    data = tf.data.Dataset.range(start, EPOCHS).flat_map(epoch_batches(augmented=True))
    model.fit(data, epochs=EPOCHS, steps_per_epoch=len(IMAGES) // BATCH, verbose=0,
              callbacks=run_callbacks(part, model_base, backup) + stop)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["unfreezing", "steps", "one_cycle", "swa", "ema", "fine_tune"])
    parser.add_argument("backup")
    parser.add_argument("weights")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--raise-at", type=int)
    args = parser.parse_args()
    stop = [Stop(args.kill_at, True)] if args.kill_at else [Stop(args.raise_at, False)] if args.raise_at else []
    try:
        model = train(args.part, args.backup, stop)
    except RuntimeError as error:
        print(error)
        return 3
    np.savez(args.weights, *[np.asarray(v.numpy()) for v in model.weights])
    return 0


if __name__ == "__main__":
    sys.exit(main())
