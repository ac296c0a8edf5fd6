"""Every example script runs as a user runs it and prints the figure it is about.

(`examples/multi_worker.py --local 2` is run by tests/test_distribute.py.)
"""

import ast
import math
import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, monkeypatch, capsys, *args):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as running the script does: it imports synthetic.py
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / f"{name}.py"), *args])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    return capsys.readouterr().out


def figure(out, label):
    """The number after `label` in the printed output."""
    return float(re.search(rf"{re.escape(label)} ([-\d.e+]+)", out).group(1))


def listed(out, label):
    """The Python list printed after `label`."""
    return ast.literal_eval(re.search(rf"{re.escape(label)} (\[.*\])", out).group(1))


def test_freezing_phases(monkeypatch, capsys):
    out = run_example("freezing_phases", monkeypatch, capsys)
    counts = listed(out, "trainable params per epoch")
    assert counts[0] == counts[1] < counts[2] == counts[3] < counts[4] == counts[5]
    assert listed(out, "conv0 changed by epoch end") == [False] * 4 + [True] * 2
    assert figure(out, "held-out accuracy") >= 0.9


def test_step_lr(monkeypatch, capsys):
    out = run_example("step_lr", monkeypatch, capsys)
    assert listed(out, "learning rate per epoch") == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    assert figure(out, "held-out accuracy") >= 0.9


def test_cosine_warmup(monkeypatch, capsys):
    out = run_example("cosine_warmup", monkeypatch, capsys)
    expected = [1e-3 / 3, 2e-3 / 3] + [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 6)) / 2 for t in range(6)]
    assert listed(out, "learning rate per epoch") == pytest.approx(expected, rel=1e-4)
    assert figure(out, "held-out accuracy") >= 0.9


def test_reduce_on_plateau(monkeypatch, capsys):
    rates = listed(run_example("reduce_on_plateau", monkeypatch, capsys), "learning rate per epoch")
    assert set(rates[:3]) <= {1e-3, 5e-4}
    assert rates[3:5] == pytest.approx([2e-4, 1e-4])  # the phase's rate, then that rate halved


def test_lr_range_test(monkeypatch, capsys, tmp_path):
    out = run_example("lr_range_test", monkeypatch, capsys, str(tmp_path / "lr.png"))
    assert 1e-4 < figure(out, "suggested learning rate") < 0.1
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
    assert figure(out, "held-out accuracy") >= 0.9


def test_dropout_head(monkeypatch, capsys):
    out = run_example("dropout_head", monkeypatch, capsys)
    assert "base -> head_flatten -> head_dropout_0 -> head_dense_0 -> head_dropout_1 -> head_output" in out
    assert figure(out, "dropout (0.5, 0.3): training accuracy 1.000, held-out accuracy") >= 0.9


def test_label_smoothing(monkeypatch, capsys):
    out = run_example("label_smoothing", monkeypatch, capsys)
    assert "'uniform' targets for class 2 of 4, ε=0.1: [0.025, 0.025, 0.925, 0.025]" in out
    assert "'others' targets for class 2 of 4, ε=0.1: [0.0333, 0.0333, 0.9, 0.0333]" in out
    assert figure(out, "label smoothing 0.0: mean top probability") > 0.97
    assert 0.85 < figure(out, "label smoothing 0.1: mean top probability") < 0.95  # 0.925 at best


def test_augmentation(monkeypatch, capsys):
    out = run_example("augmentation", monkeypatch, capsys)
    assert figure(out, "mean absolute pixel change") > 0.1
    assert "at inference 0.000" in out
    assert figure(out, "held-out accuracy") >= 0.9


def test_mixup_cutmix(monkeypatch, capsys):
    out = run_example("mixup_cutmix", monkeypatch, capsys)
    assert "label rows sum to 1.0000..1.0000" in out
    assert figure(out, "held-out accuracy") >= 0.9


def test_swa(monkeypatch, capsys):
    out = run_example("swa", monkeypatch, capsys)
    assert listed(out, "weights averaged per epoch") == [0, 0, 0, 0, 1, 2, 3, 4]
    assert "head kernel equals numpy's mean of epochs 4-7: True" in out
    assert figure(out, "held-out accuracy of the average") >= 0.9


def test_distillation(monkeypatch, capsys):
    out = run_example("distillation", monkeypatch, capsys)
    losses = re.search(r"distillation loss ([\d.]+) -> ([\d.]+)", out)
    assert float(losses.group(2)) < float(losses.group(1)) / 5
    teacher = re.search(r"teacher: ([\d,]+) weights", out).group(1)
    student = re.search(r"student: ([\d,]+) weights", out).group(1)
    assert 100 * int(student.replace(",", "")) < int(teacher.replace(",", ""))
    assert figure(out, "weights, held-out accuracy") >= 0.9  # the teacher
    assert float(re.search(r"student: .* held-out accuracy ([\d.]+)", out).group(1)) >= 0.9


def test_feature_distillation(monkeypatch, capsys):
    out = run_example("feature_distillation", monkeypatch, capsys)
    assert figure(out, "student accuracy") >= 0.9


def test_fine_tune(monkeypatch, capsys, tmp_path):
    out = run_example("fine_tune", monkeypatch, capsys, str(tmp_path / "report.png"))
    assert listed(out, "phase per epoch") == [0, 0, 1, 1, 1, 1, 1, 1]
    assert listed(out, "swa_n per epoch") == [0, 0, 0, 0, 0, 0, 1, 2]
    assert figure(out, "held-out accuracy") >= 0.9
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_every_example_has_a_test():
    scripts = {p.stem for p in EXAMPLES.glob("*.py")} - {"synthetic", "multi_worker"}
    tested = {name[len("test_"):] for name in globals() if name.startswith("test_") and name != "test_every_example_has_a_test"}
    assert scripts == tested
