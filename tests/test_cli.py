import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import changed, snapshot

import keras_finetune
from keras_finetune import cli, demo
from keras_finetune.callbacks import ProgressiveUnfreezing
from keras_finetune.freezing import batchnorm_layers, freeze, trainable_summary


def test_version_and_help_from_the_installed_console_script():
    script = Path(sys.executable).with_name("keras-finetune")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"keras-finetune {keras_finetune.__version__}"
    help_text = subprocess.run([script, "demo", "--help"], capture_output=True, text=True, check=True)
    assert "--shots" in help_text.stdout and "--seeds" in help_text.stdout


def test_no_command_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    assert "usage: keras-finetune" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--shots", "0"], "received '0'"),
    (["demo", "--seeds", "x"], "received 'x'"),
    (["demo", "--shots", "101"], "received 101"),
])
def test_bad_arguments_exit_with_status_2_and_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_prints_a_table_of_held_out_accuracy(capsys):
    assert cli.main(["demo", "--shots", "2", "--seeds", "2", "--epochs", "3", "--pretrain-epochs", "1"]) == 0
    out = capsys.readouterr().out
    _, labels = demo.load_digits_images()
    held_out = int(np.sum(labels >= 5)) - 2 * 5
    assert f"2 labelled images per class, accuracy on {held_out} held-out images" in out
    for recipe in demo.RECIPES:
        row = re.search(rf"{re.escape(recipe)}\s+([\d.]+) ±\s+([\d.]+) %\s+([\d.]+)", out)
        assert row, f"no row for {recipe!r} in:\n{out}"
        assert 0.0 <= float(row.group(1)) <= 100.0
    assert len(re.findall(r"^seed \d: ", out, flags=re.M)) == 2


def test_demo_recipe_trains_the_head_on_a_base_that_stays_pretrained():
    images, labels = demo.load_digits_images()
    source = labels < 5
    base = demo.pretrain_base(images[source], labels[source], seed=0, epochs=2)
    # pre-training moved the batch statistics away from their initial values
    assert not np.allclose(batchnorm_layers(base)[0].moving_mean, 0.0)
    before = snapshot(base)
    few = np.flatnonzero(~source)[:10]
    model = demo.train_classifier(freeze(base), images[few], labels[few] - 5, seed=0, epochs=3)
    assert changed(before, base) == set()
    # only the head trains: Dense(4*4*64 -> 128) and Dense(128 -> 5)
    assert trainable_summary(model)["trainable_params"] == (1024 * 128 + 128) + (128 * 5 + 5)


def test_demo_unfreezing_recipe_trains_a_copy_of_the_base_from_half_way():
    images, labels = demo.load_digits_images()
    source = labels < 5
    pretrained = demo.pretrain_base(images[source], labels[source], seed=0, epochs=2)
    before = snapshot(pretrained)
    copy = demo.copy_base(pretrained)
    copied = snapshot(copy)
    assert copied.keys() == before.keys() and all(np.array_equal(before[p], copied[p]) for p in before)
    schedule, rates = demo.unfreezing_schedule(4)
    assert (schedule, rates) == ({0: 0, 2: "all"}, {0: 1e-3, 2: 3e-4})
    few = np.flatnonzero(~source)[:10]
    unfreezing = ProgressiveUnfreezing(copy, schedule, rates)
    demo.train_classifier(copy, images[few], labels[few] - 5, seed=0, epochs=4, callbacks=[unfreezing])
    moved = changed(before, copy)
    assert moved == {f"conv{i}/kernel" for i in range(3)}  # convs train, BatchNorm stays put
    assert changed(before, pretrained) == set()  # the original is untouched


def test_demo_distillation_recipe_trains_a_smaller_student_and_leaves_the_teacher(images, int_labels):
    teacher = demo.train_classifier(demo.build_base(0), images, int_labels, seed=0, epochs=1)
    before = snapshot(teacher)
    student_base = demo.build_base(1, demo.STUDENT_FILTERS)
    student = demo.distil_student(student_base, teacher, images, int_labels, seed=0, epochs=2)
    assert changed(before, teacher) == set()
    assert student.layers[1] is student_base
    assert 5 * student.count_params() < teacher.count_params()
