import os
import re
import warnings
from concurrent.futures.process import BrokenProcessPool

import keras_finetune_cli
import numpy as np
import pytest
from conftest import changed, snapshot

from keras_finetune import cli, demo, glyphs
from keras_finetune.freezing import trainable_summary
from keras_finetune.pretrained import load_base


@pytest.fixture(scope="module")
def digits():
    return demo.target_task("digits", shots=2, seed=0)


def test_digits_target_takes_shots_per_class_and_holds_out_every_other_image():
    (images, labels), (held_images, held_labels) = demo.target_task("digits", shots=3, seed=5)
    all_images, _ = demo.load_digits_images()
    assert np.bincount(labels).tolist() == [3] * 10
    assert len(labels) + len(held_labels) == len(all_images) == 1797
    assert images.shape[1:] == held_images.shape[1:] == (8, 8, 1)
    flat = {image.tobytes() for image in held_images}
    assert sum(image.tobytes() in flat for image in images) <= 1  # scikit-learn's digits hold a few duplicates
    again, _ = demo.target_task("digits", shots=3, seed=5)
    np.testing.assert_array_equal(again[0], images)


def test_greek_target_is_10_unseen_letters_with_a_fixed_held_out_set():
    (images, labels), (held_images, held_labels) = demo.target_task("greek", shots=2, seed=0)
    _, (held_again, _) = demo.target_task("greek", shots=2, seed=1)
    assert np.bincount(labels).tolist() == [2] * 10 and len(glyphs.UNSEEN_CHARACTERS) == 10
    assert held_images.shape == (2000, 8, 8, 1) and set(held_labels) == set(range(10))
    np.testing.assert_array_equal(held_again, held_images)  # every seed is scored on the same images


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="`target` must be one of digits, greek. Received: target='mnist'"):
        demo.target_task("mnist", 3, 0)


def test_fine_tune_recipe_keeps_the_base_frozen_for_half_and_its_batchnorm_throughout(digits):
    pretrained = load_base()
    before = snapshot(pretrained)
    copy = demo._copy(pretrained)
    history = demo.fine_tune_recipe(copy, *digits[0], seed=0, epochs=4)
    assert history.history["phase"] == [0, 0, 1, 1]
    assert history.history["swa_n"] == [0, 0, 0, 1]
    # the head alone at 1e-2, warming up over two epochs; then everything at 1e-3, where the cosine starts
    np.testing.assert_allclose(history.history["learning_rate"][:3], [1e-2 / 3, 2e-2 / 3, 1e-3], rtol=1e-5)
    assert changed(before, copy) == {f"conv{i}/kernel" for i in range(4)}  # BatchNorm stays put
    assert changed(before, pretrained) == set()  # the original is untouched


@pytest.mark.parametrize("row, check", [
    ("  without progressive unfreezing", lambda logs: logs["phase"] == [0, 0, 0, 0] and logs["learning_rate"][2] == pytest.approx(1e-3)),
    ("  without SWA", lambda logs: "swa_n" not in logs),
    ("  without cosine + warm-up", lambda logs: logs["learning_rate"] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])),
])
def test_an_ablation_removes_its_part_and_only_that(digits, row, check):
    history = demo.fine_tune_recipe(demo._copy(load_base()), *digits[0], seed=0, epochs=4, **demo.ABLATIONS[row])
    assert check(history.history)
    assert history.history["trainable_params"][-1] == history.model.count_params() - 4 * (32 + 64 + 128 + 128)  # BatchNorm frozen


def test_copied_two_fit_recipe_puts_batchnorm_back_in_training_and_the_fair_one_does_not(digits):
    for fair, moved in ((False, True), (True, False)):
        base = demo._copy(load_base())
        before = snapshot(base)
        demo.two_fits(base, *digits[0], seed=0, epochs=4, fair=fair)
        assert ("bn0/moving_mean" in changed(before, base)) is moved
        assert "conv0/kernel" in changed(before, base)


def test_linear_probe_trains_one_dense_layer_on_a_base_that_stays_pretrained(digits):
    base = load_base()
    before = snapshot(base)
    model = demo.linear_probe(base, *digits[0], seed=0, epochs=3)
    assert changed(before, base) == set()
    assert trainable_summary(model)["trainable_params"] == 128 * 10 + 10


@pytest.mark.parametrize("transfer", [None, "digits"])
def test_distillation_trains_a_7x_smaller_student_and_leaves_the_teacher(digits, transfer):
    teacher = demo.train_classifier(demo._copy(load_base()), *digits[0], seed=0, epochs=1)
    before = snapshot(teacher)
    base = demo.student_base(1)
    student_before = snapshot(base)
    renders = None if transfer is None else demo.transfer_images(transfer, 0)[:64]
    student = demo.distil_student(base, teacher, *digits[0], seed=0, epochs=2, transfer=renders)
    assert changed(before, teacher) == set()
    assert student.layers[1] is base
    assert "conv0/kernel" in changed(student_before, base)
    assert 7 * student.count_params() < teacher.count_params()


def test_student_batches_hold_the_mixed_training_images_then_the_shifted_renders():
    images, labels = np.zeros((6, 8, 8, 1), "float32"), np.array([0, 1, 2] * 2, "int32")
    renders = np.ones((30, 8, 8, 1), "float32")
    alone = next(iter(demo.student_batches(images, labels, seed=0)))
    assert alone.shape == (demo.STUDENT_BATCH_SIZE, 8, 8, 1)  # images only: the teacher gives the targets
    batch = next(iter(demo.student_batches(images, labels, seed=0, transfer=renders))).numpy()
    assert batch.shape == (demo.STUDENT_BATCH_SIZE + demo.TRANSFER_PER_BATCH, 8, 8, 1)
    assert not batch[: demo.STUDENT_BATCH_SIZE].any()  # the training images (black), shifted and mixed
    # the renders (white) come after them, each shifted by at most a pixel: at least 7 of 8 rows stay white
    assert (batch[demo.STUDENT_BATCH_SIZE :].mean(axis=(1, 2, 3)) >= 49 / 64).all()


def test_transfer_images_are_printed_digits_for_the_digits_and_none_for_the_unseen_letters():
    renders = demo.transfer_images("digits", 3)
    assert renders.shape == (demo.TRANSFER_IMAGES, 8, 8, 1) and renders.dtype == np.float32
    assert 0.0 <= renders.min() and renders.max() <= 1.0
    np.testing.assert_array_equal(renders, glyphs.render("0123456789", demo.TRANSFER_IMAGES, demo.TRANSFER_SEED + 3)[0])
    assert not np.array_equal(renders, demo.transfer_images("digits", 4))  # each seed its own renders
    assert demo.transfer_images("greek", 3) is None
    with pytest.raises(ValueError, match="Received: target='mnist'"):
        demo.transfer_images("mnist", 3)


def test_format_table_gives_each_row_its_paired_difference_to_the_full_recipe():
    results = {demo.SCRATCH: [(0.5, 1.0), (0.7, 3.0)], demo.FULL: [(0.9, 2.0), (0.8, 2.0)]}
    table = demo.format_table(results, "title")
    assert table.splitlines()[0] == "title"
    # scratch: 60.0 ± 10.0 %, differences -40 and -10 points: -25.0 ± 15.0; median 2.0 s
    assert re.search(r"from scratch\s+60\.0 ± 10\.0 %\s+-25\.0 ± 15\.0\s+2\.0", table)
    assert re.search(r"fine_tune, every part\s+85\.0 ±  5\.0 %\s+2\.0", table)


def test_demo_command_prints_every_row_with_its_difference_and_saves_the_report(capfd, tmp_path):
    report = tmp_path / "demo.png"
    argv = ["demo", "--shots", "1", "--seeds", "1", "--epochs", "4", "--report", str(report), "--jobs", "2"]
    assert cli.main(argv) == 0
    out, err = capfd.readouterr()
    assert "scikit-learn's handwritten digits 0-9, 1 labelled image per class, glyphs base; " in out
    assert "accuracy on 1787 held-out images, seeds 0-0" in out
    printed = {}
    for row in demo.ROWS:
        pattern = rf"{re.escape(row)}\s+([\d.]+) ±\s+([\d.]+) %\s+" + ("" if row == demo.FULL else r"[-+][\d.]+ ±\s+[\d.]+\s+") + r"([\d.]+)"
        match = re.search(pattern, out)
        assert match, f"no row for {row!r} in:\n{out}"
        assert 0.0 <= float(match.group(1)) <= 100.0 and float(match.group(3)) > 0.0
        printed[row] = match.group(1)
    assert f"{len(demo.ROWS)}/{len(demo.ROWS)}" in out  # the progress bar counted every run
    assert f"Report (seed 0's fine_tune run and the ablation): {report}" in out
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the two workers start TensorFlow without its start-up lines, as the command itself does
    assert not [line for line in err.splitlines() if keras_finetune_cli._NOISE.match(line)]
    # and their runs give what the same runs give in this process
    here = demo.run_demo(shots=1, seeds=1, epochs=4, rows=(demo.SCRATCH, demo.PROBE), report=None, print_fn=lambda _: None)
    assert {row: f"{100 * runs[0][0]:.1f}" for row, runs in here.items()} == {row: printed[row] for row in here}


def test_run_demo_puts_each_workers_runs_in_their_seeds_place():
    rows = (demo.PROBE,)
    spread = demo.run_demo(seeds=3, first_seed=4, epochs=2, rows=rows, report=None, print_fn=lambda _: None, jobs=2)
    here = demo.run_demo(seeds=3, first_seed=4, epochs=2, rows=rows, report=None, print_fn=lambda _: None)
    assert [a for a, _ in spread[demo.PROBE]] == [a for a, _ in here[demo.PROBE]]
    assert len(set(a for a, _ in here[demo.PROBE])) == 3  # three seeds, three different results


def test_the_workers_warnings_are_shown_once_each_as_the_demo_in_one_process_shows_them():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        assert list(demo._map(warnings.warn, ["swa=0.75 of 2 epochs", "other", "swa=0.75 of 2 epochs"] * 2, jobs=2)) == [None] * 6
    assert sorted(str(w.message) for w in shown) == ["other", "swa=0.75 of 2 epochs"]
    assert {w.category for w in shown} == {UserWarning}


def test_a_worker_that_dies_ends_the_demo_instead_of_leaving_it_waiting():
    with pytest.raises(BrokenProcessPool):
        list(demo._map(os._exit, [3], jobs=2))


@pytest.mark.parametrize("kwargs, message", [
    ({"rows": ("fastai",), "report": None}, r"Received: rows=\['fastai'\]"),
    ({"rows": (demo.DISTILLED,), "report": None}, "for the distilled student and the report"),
    ({"rows": (demo.SCRATCH,)}, "for the distilled student and the report"),
    ({"shots": 0}, r"`shots` must be an int in \[1, 100\]. Received: shots=0"),
    ({"seeds": 2.0}, "`seeds` must be an int >= 1. Received: seeds=2.0"),
    ({"epochs": 1}, "`epochs` must be an int >= 2. Received: epochs=1"),
    ({"jobs": 0}, "`jobs` must be an int >= 1. Received: jobs=0"),
])
def test_run_demo_refuses_bad_arguments_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        demo.run_demo(**kwargs)
