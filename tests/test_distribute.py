import contextlib
import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_base
from keras.src.backend.tensorflow import trainer

from keras_finetune import distribute
from keras_finetune.callbacks import SWA, CosineAnnealing, StepLR
from keras_finetune.distribute import get_strategy, multi_worker_strategy, run_local_workers
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix
from keras_finetune.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy

JOB = pathlib.Path(__file__).resolve().parent / "multi_worker_job.py"

# get_strategy


def test_on_a_cpu_machine_the_default_strategy_is_chosen_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="keras_finetune.distribute"):
        strategy = get_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert "default strategy: one replica, on the CPU" in caplog.text


def test_named_devices_give_a_strategy_over_them(caplog):
    with caplog.at_level(logging.INFO, logger="keras_finetune.distribute"):
        strategy = get_strategy(["/cpu:0"])
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert "OneDeviceStrategy with 1 replica(s): /job:localhost/replica:0/task:0/device:CPU:0" in caplog.text


class Recorder:
    """Stands in for a TensorFlow constructor or call; remembers its arguments."""

    def __init__(self, result=None):
        self.calls, self.result = [], result

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        return self.result if self.result is not None else self


def test_several_gpus_are_mirrored(monkeypatch, mirrored):
    gpus = [tf.config.LogicalDevice(f"/job:localhost/replica:0/task:0/device:GPU:{i}", "GPU") for i in (0, 1)]
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    constructor = Recorder(result=mirrored)
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", constructor)
    assert get_strategy() is mirrored
    assert constructor.calls == [([gpu.name for gpu in gpus],)]


def test_a_tpu_host_gets_a_tpu_strategy(monkeypatch, mirrored):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["TPU:0"] if kind == "TPU" else [])
    steps = {name: Recorder() for name in ("resolver", "connect", "initialize")}
    tpu = Recorder(result=mirrored)
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", lambda tpu: steps["resolver"](tpu))
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", steps["connect"])
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", steps["initialize"])
    monkeypatch.setattr(tf.distribute, "TPUStrategy", tpu)
    assert get_strategy() is tpu.result
    assert steps["resolver"].calls == [("local",)]
    assert steps["connect"].calls == steps["initialize"].calls == tpu.calls == [(steps["resolver"],)]


@pytest.mark.parametrize(
    "devices, error, message",
    [
        ("/cpu:0", TypeError, "Received: devices='/cpu:0'"),
        ([], TypeError, r"Received: devices=\[\]"),
        ([0, 1], TypeError, r"Received: devices=\[0, 1\]"),
        (["/gpu:7"], ValueError, "does not have: '/gpu:7'"),
    ],
)
def test_bad_devices_are_refused(devices, error, message):
    with pytest.raises(error, match=message):
        get_strategy(devices)


# multi_worker_strategy: the keras#20585 fix


def test_the_installed_keras_has_both_defects_and_the_fix_replaces_them():
    assert distribute._fix_keras() == ("TensorFlowTrainer._maybe_symbolic_build", "reduce_per_replica")
    fixed = trainer.reduce_per_replica
    assert distribute._fix_keras() == ("TensorFlowTrainer._maybe_symbolic_build", "reduce_per_replica")
    assert trainer.reduce_per_replica is fixed  # applied once
    assert not hasattr(fixed.__wrapped__, "__wrapped__")


def test_the_fixed_reduction_leaves_other_strategies_to_keras(mirrored):
    distribute._fix_keras()
    values = mirrored.run(lambda: {"loss": tf.constant(2.0) + tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, "float32")})
    for reduction, expected in (("mean", 2.5), ("sum", 5.0), ("first", 2.0)):
        assert float(trainer.reduce_per_replica(values, mirrored, reduction)["loss"]) == expected


def fixed_build(self, iterator=None, data_batch=None):
    return data_batch  # no strategy.reduce here: Keras fixed it


def fixed_reduce(values, strategy, reduction):
    return values


def test_nothing_is_replaced_when_keras_has_fixed_the_defects(monkeypatch):
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build", fixed_build)
    monkeypatch.setattr(trainer, "reduce_per_replica", fixed_reduce)
    assert distribute._fix_keras() == ()
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is fixed_build
    assert trainer.reduce_per_replica is fixed_reduce


def test_a_keras_without_the_internals_fails_loudly(monkeypatch):
    monkeypatch.delattr(trainer, "reduce_per_replica")
    with pytest.raises(RuntimeError, match=rf"does not recognise Keras {keras.__version__}.*reduce_per_replica"):
        multi_worker_strategy()


@pytest.mark.parametrize("version", ["4.0.0", "2.15.0"])
def test_a_keras_other_than_3_fails_loudly(monkeypatch, version):
    monkeypatch.setattr(keras, "__version__", version)
    with pytest.raises(RuntimeError, match=rf"does not recognise Keras {version}: the fix targets .* Keras 3"):
        multi_worker_strategy()


def test_another_backend_is_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="Received: backend='jax'"):
        multi_worker_strategy()


def test_a_bad_communication_is_refused():
    with pytest.raises(ValueError, match="Received: communication='grpc'"):
        multi_worker_strategy(communication="grpc")


def load_job():
    spec = importlib.util.spec_from_file_location("multi_worker_job", JOB)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def test_two_workers_end_identical_and_equal_to_one_process(tmp_path):
    outputs = run_local_workers([sys.executable, str(JOB), str(tmp_path)], num_workers=2, timeout=300)
    assert ["worker 0 of 2 done" in outputs[0], "worker 1 of 2 done" in outputs[1]] == [True, True]
    (tmp_path / "single").mkdir()
    reference = load_job().train_all(None, str(tmp_path / "single"))
    for run, (weights, logs) in reference.items():
        workers = [np.load(tmp_path / f"{run}_{index}.npz") for index in (0, 1)]
        for index, expected in enumerate(weights):
            np.testing.assert_array_equal(workers[0][f"w{index}"], workers[1][f"w{index}"], err_msg=run)
            np.testing.assert_allclose(workers[0][f"w{index}"], expected, rtol=1e-4, atol=1e-5, err_msg=run)
        assert {key[4:] for key in workers[0].files if key.startswith("log_")} == set(logs)
        for name, values in logs.items():
            np.testing.assert_allclose(workers[0][f"log_{name}"], values, rtol=1e-5, err_msg=f"{run} {name}")
    # An interrupted run, resumed from each worker's own backup, ends as the uninterrupted one.
    resumed, uninterrupted = np.load(tmp_path / "resumed_0.npz"), np.load(tmp_path / "unfreezing_swa_0.npz")
    for index in range(len(reference["resumed"][0])):
        np.testing.assert_allclose(resumed[f"w{index}"], uninterrupted[f"w{index}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(resumed["log_swa_n"], [2])  # only epoch 2 ran again


# run_local_workers

REPORT = (
    "import json, os, sys, time; config = json.loads(os.environ['TF_CONFIG']); index = config['task']['index']; "
    "open(os.path.join(sys.argv[1], f'pid{index}'), 'w').write(str(os.getpid())); print(json.dumps(config)); "
)


def assert_stopped(folder, count):
    for index in range(count):
        pid = int((folder / f"pid{index}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_each_worker_gets_its_index_and_the_whole_cluster(tmp_path):
    outputs = run_local_workers([sys.executable, "-c", REPORT, str(tmp_path)], num_workers=3)
    configs = [json.loads(output) for output in outputs]
    assert [config["task"] for config in configs] == [{"type": "worker", "index": i} for i in range(3)]
    workers = configs[0]["cluster"]["worker"]
    assert all(config["cluster"] == {"worker": workers} for config in configs)
    assert len({address.split(":")[1] for address in workers}) == 3
    assert all(address.startswith("127.0.0.1:") for address in workers)


def test_a_failing_worker_stops_the_others(tmp_path):
    script = REPORT + "sys.exit(3) if index == 1 else time.sleep(600)"
    with pytest.raises(RuntimeError, match=r"(?s)Worker 1 of 2 exited with status 3.*\"index\": 1"):
        run_local_workers([sys.executable, "-c", script, str(tmp_path)], num_workers=2, timeout=300)
    assert_stopped(tmp_path, 2)


def test_workers_still_running_at_the_time_out_are_stopped(tmp_path):
    script = REPORT + "sys.stdout.flush(); time.sleep(600)"
    with pytest.raises(RuntimeError, match=r"(?s)Worker 0 of 2 was still running after the time-out.*\"index\": 0"):
        run_local_workers([sys.executable, "-c", script, str(tmp_path)], num_workers=2, timeout=3)
    assert_stopped(tmp_path, 2)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (("python train.py",), TypeError, "Received: command='python train.py'"),
        (([],), TypeError, r"Received: command=\[\]"),
        ((["python"], 0), ValueError, "Received: num_workers=0"),
        ((["python"], 2, 0), ValueError, "Received: timeout=0"),
        ((["python"], 2, True), TypeError, "Received: timeout=True"),
    ],
)
def test_bad_launch_arguments_are_refused(arguments, error, message):
    with pytest.raises(error, match=message):
        run_local_workers(*arguments)


# Every part under MirroredStrategy equals one device on the same global batch.


def images_and_labels():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 8, 8, 1)).astype("float32"), np.arange(32, dtype="int32") % 3


def synchronized_base():
    """make_base with BatchNormalization over the global batch, as one device computes it."""
    keras.utils.set_random_seed(0)
    base = make_base()
    config = base.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["synchronized"] = True
    return keras.Model.from_config(config)


def train(strategy, compile_and_data, callbacks=(), epochs=4):
    with strategy.scope() if strategy else contextlib.nullcontext():
        keras.utils.set_random_seed(0)
        model = build_classifier(synchronized_base(), 3, hidden_units=(5,), dropout=0.0)
        data, loss = compile_and_data()
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss, metrics=["accuracy"])
    history = model.fit(data, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks))
    return history.history, [w.numpy() for w in model.weights], model


def sparse_smoothed():
    x, y = images_and_labels()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8), SparseCategoricalCrossentropy(label_smoothing=0.1)


def one_hot_smoothed_others():
    x, y = images_and_labels()
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(3, dtype="float32")[y])).batch(8)
    return data, CategoricalCrossentropy(label_smoothing=0.2, mode="others")


def mixed_pipeline():
    x, y = images_and_labels()
    mixing = MixUpOrCutMix(num_classes=3, label_smoothing=0.1, seed=4)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(mixing), keras.losses.CategoricalCrossentropy()


RUNS = {
    "heads + sparse smoothing": (sparse_smoothed, lambda: []),
    "heads + one-hot smoothing": (one_hot_smoothed_others, lambda: []),
    "StepLR": (sparse_smoothed, lambda: [StepLR(2, gamma=0.5)]),
    "CosineAnnealing + warm-up": (sparse_smoothed, lambda: [CosineAnnealing(4, eta_min=1e-3, warmup_epochs=1)]),
    "MixUp/CutMix pipeline": (mixed_pipeline, lambda: []),
    "SWA + BatchNorm update": (sparse_smoothed, lambda: [SWA(start_epoch=1, swa_lr=0.01, bn_data=images_and_labels()[0])]),
}


@pytest.mark.parametrize("run", RUNS)
def test_mirrored_strategy_equals_one_device(run, mirrored):
    compile_and_data, callbacks = RUNS[run]
    # Under any strategy Keras builds the model from a first batch pulled
    # through a throw-away iterator, which draws (and prefetches) from a
    # random pipeline before training starts; a one-device strategy does the same.
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0") if compile_and_data is mixed_pipeline else None
    single_logs, single_weights, _ = train(one_device, compile_and_data, callbacks())
    logs, weights, model = train(mirrored, compile_and_data, callbacks())
    assert set(logs) == set(single_logs)
    for name, values in single_logs.items():
        np.testing.assert_allclose(logs[name], values, rtol=1e-5, err_msg=name)
    for variable, got, expected in zip(model.weights, weights, single_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=variable.path)
        replicas = [r.numpy() for r in mirrored.experimental_local_results(variable.value)]
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)


def test_the_example_trains_two_local_workers_to_the_same_weights(tmp_path):
    example = JOB.parent.parent / "examples" / "multi_worker.py"
    out = tmp_path / "model.keras"
    result = subprocess.run(
        [sys.executable, str(example), "--local", "2", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 workers, identical weights" in result.stdout
    accuracies = [float(line.split("accuracy ")[1].split(",")[0]) for line in result.stdout.splitlines() if "held-out" in line]
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1] >= 0.9
    x = np.zeros((1, 16, 16, 1), "float32")
    assert keras.models.load_model(out).predict(x, verbose=0).shape == (1, 4)
