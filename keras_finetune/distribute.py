"""Strategies for one machine and for several, with Keras 3's multi-worker `fit` fixed.

`get_strategy` picks the strategy a machine calls for. `multi_worker_strategy`
returns a `tf.distribute.MultiWorkerMirroredStrategy` that Keras 3's
`fit`/`evaluate`/`predict` work with: Keras 3 (up to 3.15 at least, keras#20585)
fails in `fit` on more than one worker because its TensorFlow trainer

1. builds the model from a first batch reduced across workers with
   `strategy.reduce("MEAN", batch)`, which a multi-worker strategy refuses for
   a per-replica batch (and which would turn integer labels into averages);
2. reduces each scalar log (loss, metrics) with
   `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar.

The fix replaces those two reductions, only when the strategy runs on several
workers: the build takes the first local replica's batch (shapes and dtypes
are all it needs), and scalar logs are averaged over replicas. Every other
case runs Keras's own code. The fix is applied once, on the first call of
`multi_worker_strategy`; it checks Keras's source for the two defects, so it
is skipped when Keras has fixed them, and it raises a RuntimeError when the
installed Keras no longer has the internals it replaces.

Running on several machines: start the same script once per machine, each with
a `TF_CONFIG` environment variable that lists every worker's `host:port` and
gives this process's index, e.g. on the second of two machines::

    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                "task": {"type": "worker", "index": 1}}' python train.py

Worker 0 is the chief: its files are the ones to keep. Every worker calls
`fit` with the same arguments; a dataset is sharded across workers
automatically, and `batch_size` (or the dataset's batch) is the global batch.
Keras 3's `ModelCheckpoint`, `BackupAndRestore` and `SWA(backup_dir=...)` do
not coordinate workers: give each worker its own directory (suffixed with its
index, say), never one path that two processes write at once. Create the
strategy before any other TensorFlow work in the process.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_finetune.validation import check_count, check_positive

__all__ = ["get_strategy", "multi_worker_strategy", "run_local_workers"]

_logger = logging.getLogger(__name__)

_COMMUNICATIONS = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}

# The two defective lines of keras/src/backend/tensorflow/trainer.py (keras#20585).
_BATCH_REDUCE = re.compile(r"distribute_strategy\.reduce\(\s*[\"']MEAN[\"']")
_SCALAR_REDUCE = re.compile(r"strategy\.reduce\(\s*[\"']MEAN[\"']\s*,\s*v\s*,\s*axis=0\s*\)")
_MARK = "_keras_finetune_fix"  # set on the functions that replace Keras's


def get_strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The strategy this machine calls for, with its choice logged.

    `TPUStrategy` when this host has TPU chips (a TPU VM), `MirroredStrategy` over every GPU when there are
    several, and TensorFlow's default strategy (one device) otherwise. Build
    and compile the model inside `strategy.scope()`; `fit` then spreads each
    batch over the replicas.

    Args:
        devices: list of str or None. Devices to mirror over, e.g.
            `["/gpu:0", "/gpu:1"]`; one device gives `OneDeviceStrategy`.
            Defaults to None: choose from the machine.

    Returns:
        A `tf.distribute.Strategy`.

    Example:

    ```python
    strategy = keras_finetune.distribute.get_strategy()
    with strategy.scope():
        model = keras_finetune.build_classifier(base, num_classes=5)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(dataset, epochs=5)
    ```
    """
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if devices is not None:
        strategy = _strategy_over(devices)
    elif tf.config.list_physical_devices("TPU"):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy(gpus)
    else:
        strategy = tf.distribute.get_strategy()
        _logger.info("keras_finetune chose the default strategy: one replica, on %s", gpus[0] if gpus else "the CPU")
        return strategy
    _logger.info(
        "keras_finetune chose %s with %d replica(s): %s",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        ", ".join(strategy.extended.worker_devices),
    )
    return strategy


def _strategy_over(devices) -> tf.distribute.Strategy:
    if not isinstance(devices, (list, tuple)) or not devices or not all(isinstance(device, str) for device in devices):
        raise TypeError(f"`devices` must be a non-empty list of device names such as '/gpu:0'. Received: devices={devices!r}")
    names = [device.name for device in tf.config.list_logical_devices()]
    known = {_device_key(name) for name in names}
    for device in devices:
        if _device_key(device) not in known:
            raise ValueError(f"`devices` names a device this machine does not have: {device!r}. It has {names}")
    if len(devices) == 1:
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(list(devices))


def _device_key(name: str) -> tuple[str, int]:
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), spec.device_index or 0


def multi_worker_strategy(
    communication: str = "auto",
    cluster_resolver: tf.distribute.cluster_resolver.ClusterResolver | None = None,
) -> tf.distribute.MultiWorkerMirroredStrategy:
    """A `MultiWorkerMirroredStrategy` that Keras 3's `fit` works with.

    Call it once per process, at the start, on every worker (see the module
    docstring for `TF_CONFIG`). It applies a fix for keras#20585 to Keras's
    TensorFlow trainer the first time it runs; the fix acts only under a
    strategy that spans several workers and is skipped when the installed
    Keras no longer has the defects. Checked against Keras 3.10 and 3.15.

    Args:
        communication: str. How workers all-reduce: `"auto"`, `"ring"` (gRPC,
            works everywhere) or `"nccl"` (GPUs). Defaults to `"auto"`.
        cluster_resolver: a `tf.distribute.cluster_resolver.ClusterResolver`
            or None. Defaults to None: read the cluster from `TF_CONFIG`.

    Returns:
        A `tf.distribute.MultiWorkerMirroredStrategy`.

    Raises:
        RuntimeError: Keras runs on another backend than TensorFlow, is not
            Keras 3, or lacks the internals the fix replaces.

    Example:

    ```python
    strategy = keras_finetune.distribute.multi_worker_strategy()
    with strategy.scope():
        model = keras_finetune.build_classifier(base, num_classes=5)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(dataset, epochs=5)  # dataset batched with the global batch size
    ```
    """
    if communication not in _COMMUNICATIONS:
        raise ValueError(f"`communication` must be one of {sorted(_COMMUNICATIONS)}. Received: communication={communication!r}")
    _fix_keras()
    options = tf.distribute.experimental.CommunicationOptions(implementation=_COMMUNICATIONS[communication])
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver, communication_options=options)


def run_local_workers(command: Sequence[str], num_workers: int = 2, timeout: float = 600.0) -> list[str]:
    """Run `command` as a cluster of `num_workers` processes on this machine.

    Each process gets a `TF_CONFIG` naming every worker on 127.0.0.1 (on free
    ports picked now) and its own index, so a script written for several
    machines can be tried on one. Every process (with any process it
    started) is stopped before this returns or raises: when one fails the
    others would wait for it forever. POSIX systems (Linux, macOS) only.

    Args:
        command: list of str. The program and its arguments, e.g.
            `[sys.executable, "train.py"]`.
        num_workers: int. Processes to start. Defaults to `2`.
        timeout: float. Seconds to wait for all of them. Defaults to `600`.

    Returns:
        Each worker's output (stdout and stderr together), in index order.

    Raises:
        RuntimeError: a worker exited with an error, or the time ran out; the
            message holds the end of that worker's output.

    Example:

    ```python
    outputs = keras_finetune.distribute.run_local_workers([sys.executable, "train.py"], 2)
    print(outputs[0])  # the chief's output
    ```
    """
    if isinstance(command, str) or not command or not all(isinstance(part, str) for part in command):
        raise TypeError(f"`command` must be a non-empty list of str. Received: command={command!r}")
    check_count(num_workers, "num_workers", 1)
    check_positive(timeout, "timeout")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(num_workers)]}
    with tempfile.TemporaryDirectory() as folder:
        logs = [
            open(os.path.join(folder, f"worker{index}.log"), "w+", encoding="utf-8", errors="replace")
            for index in range(num_workers)
        ]
        workers = []
        try:
            for index, log in enumerate(logs):
                config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
                environment = {**os.environ, "TF_CONFIG": config}
                workers.append(
                    subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )
            failure = _wait(workers, time.monotonic() + timeout)
        finally:
            for worker in workers:
                _stop(worker)
            outputs = []
            for log in logs:
                log.seek(0)
                outputs.append(log.read())
                log.close()
    if failure is not None:
        index, reason = failure
        raise RuntimeError(f"Worker {index} of {num_workers} {reason}. Its output ends with:\n{outputs[index][-3000:]}")
    return outputs


def _free_ports(count: int) -> list[int]:
    """Ports free now (held open together so they differ; another process may take one before a worker binds it)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for held in sockets:
            held.bind(("127.0.0.1", 0))
        return [held.getsockname()[1] for held in sockets]
    finally:
        for held in sockets:
            held.close()


def _wait(workers, deadline: float):
    """None when every worker exited with 0, else (index, what went wrong) for the first failure."""
    while time.monotonic() < deadline:
        codes = [worker.poll() for worker in workers]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                return index, f"exited with status {code}"
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.1)
    running = next(index for index, worker in enumerate(workers) if worker.poll() is None)
    return running, "was still running after the time-out; every worker was stopped"


def _stop(worker: subprocess.Popen) -> None:
    """Kill the worker's whole process group if it is still running, and reap it."""
    if worker.poll() is None:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait()


def _keras_internals():
    """Keras's TensorFlow trainer module and the sources of the two functions the fix replaces."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "multi_worker_strategy needs Keras's TensorFlow backend (KERAS_BACKEND=tensorflow). "
            f"Received: backend={keras.backend.backend()!r}"
        )
    try:
        if not keras.__version__.startswith("3."):
            raise ImportError("the fix targets the TensorFlow trainer of Keras 3")
        from keras.src.backend.tensorflow import trainer

        sources = (
            inspect.getsource(trainer.TensorFlowTrainer._maybe_symbolic_build),
            inspect.getsource(trainer.reduce_per_replica),
        )
        trainer._collective_all_reduce_multi_worker  # noqa: B018 (the fix's test for several workers)
    except (ImportError, AttributeError, OSError, TypeError) as error:
        raise RuntimeError(
            "keras_finetune's fix for Keras multi-worker training (keras#20585) does not recognise "
            f"Keras {keras.__version__}: {error}. Upgrade keras_finetune, or pin keras<=3.15 until it supports "
            "this Keras."
        ) from error
    return trainer, sources


def _fix_keras() -> tuple[str, ...]:
    """Applies the keras#20585 fix where Keras has the defects; returns the names of the functions fixed.

    Applying it again changes nothing: a fixed function is marked, and
    `inspect.getsource` reads through the wrapper to Keras's own source.
    """
    trainer, (build_source, reduce_source) = _keras_internals()
    multi_worker = trainer._collective_all_reduce_multi_worker
    build = trainer.TensorFlowTrainer._maybe_symbolic_build
    if _BATCH_REDUCE.search(build_source) and not hasattr(build, _MARK):
        trainer.TensorFlowTrainer._maybe_symbolic_build = _build_from_a_local_batch(build, multi_worker)
        _logger.info("keras_finetune fixed TensorFlowTrainer._maybe_symbolic_build (keras#20585) in Keras %s", keras.__version__)
    if _SCALAR_REDUCE.search(reduce_source) and not hasattr(trainer.reduce_per_replica, _MARK):
        trainer.reduce_per_replica = _mean_of_scalars(trainer.reduce_per_replica, multi_worker)
        _logger.info("keras_finetune fixed reduce_per_replica (keras#20585) in Keras %s", keras.__version__)
    fixed = {
        "TensorFlowTrainer._maybe_symbolic_build": trainer.TensorFlowTrainer._maybe_symbolic_build,
        "reduce_per_replica": trainer.reduce_per_replica,
    }
    return tuple(name for name, function in fixed.items() if hasattr(function, _MARK))


def _build_from_a_local_batch(original, multi_worker):
    @functools.wraps(original)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not multi_worker(strategy):
            return original(self, iterator=iterator, data_batch=data_batch)
        for *_, batches in iterator:
            batch = next(batches)
            break
        # The build needs shapes and dtypes only: one replica's batch has them.
        local = tf.nest.map_structure(lambda value: strategy.experimental_local_results(value)[0], batch)
        return original(self, data_batch=local)

    setattr(_maybe_symbolic_build, _MARK, True)
    return _maybe_symbolic_build


def _mean_of_scalars(original, multi_worker):
    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not multi_worker(strategy):
            return original(values, strategy, reduction)

        def reduce(value):
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    setattr(reduce_per_replica, _MARK, True)
    return reduce_per_replica
