"""A `BackupAndRestore` that a kill at any moment leaves resumable at the right epoch.

Keras's `BackupAndRestore` writes the weights over `latest.weights.h5` and
then the epoch into `training_metadata.json`. A process killed between the
two (or while the weights are half written) leaves the weights of epoch
`e + 1` beside the count of epoch `e`: the resumed run trains epoch `e + 1`
a second time and ends elsewhere, without a word. Measured here on
MobileNetV3Small, where saving is a large part of a short epoch: a SIGKILL a
fraction of a second after a backup ended 3e-4 away from the uninterrupted
weights. Here each epoch's weights go to a file of their own, and the epoch
file, replaced in one atomic rename once they are complete, names them.
"""

from __future__ import annotations

import json
import os

import keras

__all__ = ["AtomicBackup", "resumed_epoch", "write_json"]

_METADATA = "training_metadata.json"


def write_json(path: str, value) -> None:
    """Write `value` as JSON to `path` through a temporary file and a rename: never half a file under `path`."""
    partial = f"{path}.partial"
    with open(partial, "w") as file:
        json.dump(value, file, indent=1)
    os.replace(partial, path)


def _metadata(backup_dir: str | None) -> dict | None:
    path = None if backup_dir is None else os.path.join(backup_dir, _METADATA)
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as file:
            metadata = json.load(file)
        int(metadata["epoch"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"The backup in {backup_dir!r} is unreadable ({error}); delete it to start over") from None
    return metadata


def resumed_epoch(backup_dir: str | None) -> int:
    """The epoch a backup in `backup_dir` resumes at (0 without one)."""
    metadata = _metadata(backup_dir)
    return 0 if metadata is None else int(metadata["epoch"])


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` (at each epoch end) whose backup is whole whenever the process dies.

    Epoch `e`'s weights (optimizer included) are written to
    `epoch-<e>.weights.h5`; then `training_metadata.json`, which names that
    file and the epoch to resume at, is replaced in one rename; then the
    older weights are deleted. A restart reads the epoch file and loads the
    weights it names, so it resumes where a complete backup says. The folder
    is deleted when `fit` completes, as Keras's is.

    Args:
        backup_dir: str. A folder of its own for the backup.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir)

    def _save_model(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        write_json(os.path.join(self.backup_dir, _METADATA), {"epoch": self._current_epoch, "weights": name})
        for other in os.listdir(self.backup_dir):
            if other.startswith("epoch-") and other.endswith(".weights.h5") and other != name:
                os.remove(os.path.join(self.backup_dir, other))

    def on_train_begin(self, logs=None) -> None:
        metadata = _metadata(self.backup_dir)
        if metadata is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:  # its variables must exist to be loaded
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self.model._initial_epoch = int(metadata["epoch"])  # how Keras's own callback tells fit where to start
