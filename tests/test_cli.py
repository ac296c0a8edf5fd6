import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import changed, snapshot

import keras_finetune
from keras_finetune import cli, demo
from keras_finetune.freezing import batchnorm_layers, trainable_summary


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


def test_demo_prints_a_table_of_held_out_accuracy_and_saves_the_report(capsys, tmp_path):
    report = tmp_path / "demo.png"
    argv = ["demo", "--shots", "2", "--seeds", "2", "--epochs", "4", "--pretrain-epochs", "1", "--report", str(report)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    _, labels = demo.load_digits_images()
    held_out = int(np.sum(labels >= 5)) - 2 * 5
    assert f"2 labelled images per class, accuracy on {held_out} held-out images" in out
    for recipe in demo.RECIPES:
        row = re.search(rf"{re.escape(recipe)}\s+([\d.]+) ±\s+([\d.]+) %\s+([\d.]+)", out)
        assert row, f"no row for {recipe!r} in:\n{out}"
        assert 0.0 <= float(row.group(1)) <= 100.0 and float(row.group(3)) > 0.0
    assert "12/12" in out  # the progress bar counted every run
    assert f"Report (loss, accuracy and learning rate of seed 0's fine_tune run): {report}" in out
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_fine_tune_recipe_keeps_the_base_frozen_for_half_the_epochs_and_its_batchnorm_throughout():
    images, labels = demo.load_digits_images()
    source = labels < 5
    pretrained = demo.pretrain_base(images[source], labels[source], seed=0, epochs=2)
    before = snapshot(pretrained)
    copy = demo.copy_base(pretrained)
    few = np.flatnonzero(~source)[:10]
    history = demo.fine_tune_recipe(copy, images[few], labels[few] - 5, seed=0, epochs=4)
    assert history.history["phase"] == [0, 0, 1, 1]
    assert history.history["swa_n"] == [0, 0, 0, 1]
    np.testing.assert_allclose(history.history["learning_rate"][2], 1e-3 * demo.UNFREEZE_LR_FACTOR * (1 + np.cos(np.pi / 4)) / 2, rtol=1e-6)
    assert changed(before, copy) == {f"conv{i}/kernel" for i in range(3)}  # BatchNorm stays put
    assert changed(before, pretrained) == set()  # the original is untouched


def test_demo_copied_two_fit_recipe_puts_batchnorm_back_in_training():
    images, labels = demo.load_digits_images()
    source = labels < 5
    pretrained = demo.pretrain_base(images[source], labels[source], seed=0, epochs=2)
    few = np.flatnonzero(~source)[:10]
    for keep, moved in ((False, True), (True, False)):
        base = demo.copy_base(pretrained)
        before = snapshot(base)
        demo.two_fits(base, images[few], labels[few] - 5, seed=0, epochs=4, keep_batchnorm_frozen=keep)
        assert ("bn0/moving_mean" in changed(before, base)) is moved
        assert "conv0/kernel" in changed(before, base)


def test_demo_linear_probe_trains_one_dense_layer_on_a_base_that_stays_pretrained():
    images, labels = demo.load_digits_images()
    source = labels < 5
    base = demo.pretrain_base(images[source], labels[source], seed=0, epochs=2)
    # pre-training moved the batch statistics away from their initial values
    assert not np.allclose(batchnorm_layers(base)[0].moving_mean, 0.0)
    before = snapshot(base)
    few = np.flatnonzero(~source)[:10]
    model = demo.linear_probe(base, images[few], labels[few] - 5, seed=0, epochs=3)
    assert changed(before, base) == set()
    assert trainable_summary(model)["trainable_params"] == 4 * 4 * 64 * 5 + 5


def test_demo_distillation_recipe_trains_a_smaller_student_and_leaves_the_teacher(images, int_labels):
    teacher = demo.train_classifier(demo.build_base(0), images, int_labels, seed=0, epochs=1)
    before = snapshot(teacher)
    student_base = demo.build_base(1, demo.STUDENT_FILTERS)
    student = demo.distil_student(student_base, teacher, images, int_labels, seed=0, epochs=2)
    assert changed(before, teacher) == set()
    assert student.layers[1] is student_base
    assert 5 * student.count_params() < teacher.count_params()
