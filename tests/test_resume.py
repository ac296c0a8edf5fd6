"""Kill and resume: each resumable part, killed with SIGKILL at a random batch and then interrupted by an
exception at another, ends with the weights of the uninterrupted run (tests/resume_job.py, a process each)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

JOB = Path(__file__).with_name("resume_job.py")
BATCHES = 36  # 6 epochs of 6 batches
BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


def started(part, backup, weights, *stop):
    return subprocess.Popen([sys.executable, str(JOB), part, str(backup), str(weights), *stop],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process):
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def job(part, backup, weights, *stop):
    return finished(started(part, backup, weights, *stop))


def weights_of(path):
    with np.load(path) as stored:
        return [stored[f"arr_{index}"] for index in range(len(stored.files))]


@pytest.mark.parametrize("part", ["unfreezing", "steps", "one_cycle", "swa", "ema", "fine_tune"])
def test_a_run_killed_then_interrupted_ends_with_the_uninterrupted_weights(part, tmp_path):
    # The uninterrupted run beside the killed one: two processes that share nothing, on two cores.
    uninterrupted = started(part, tmp_path / "whole_backup", tmp_path / "whole.npz")
    rng = np.random.default_rng(sum(map(ord, part)))
    kill_at = int(rng.integers(2, BATCHES - 8))
    backup, weights = tmp_path / "backup", tmp_path / "resumed.npz"
    killed = job(part, backup, weights, "--kill-at", str(kill_at))
    whole = finished(uninterrupted)
    assert whole.returncode == 0, whole.stderr
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = (kill_at // 6) * 6  # whole epochs the backup may hold
    interrupted = job(part, backup, weights, "--raise-at", str(int(rng.integers(1, BATCHES - done))))
    assert interrupted.returncode == 3 and "interrupted after batch" in interrupted.stdout, interrupted.stderr
    resumed = job(part, backup, weights)
    assert resumed.returncode == 0, resumed.stderr
    assert not os.path.exists(backup)  # deleted once the run completed
    for mine, theirs in zip(weights_of(weights), weights_of(tmp_path / "whole.npz"), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5)
