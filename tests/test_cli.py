import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import with_statistics, write_image_folder

import keras_finetune
from keras_finetune import cli
from keras_finetune.image_folders import load_image_folder


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


# train and distill on an image folder

def tiny_base(path, size=32, trained=True):
    """A small .keras feature extractor; `trained`: its BatchNorm has learned statistics, as a pretrained base's."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, x, name="tiny")
    (with_statistics(model) if trained else model).save(path)
    return str(path)


def run(argv):
    """cli.main's exit status and printed output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(argv)
    return status, out.getvalue()


def held_out_accuracy(model, folder, size):
    _, held_out, _ = load_image_folder(folder, size, validation_split=0.2, seed=0)
    images, labels = (np.concatenate(parts) for parts in zip(*((x.numpy(), y.numpy()) for x, y in held_out)))
    return np.mean(np.argmax(model.predict(images, verbose=0), axis=-1) == labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    folder = write_image_folder(root / "data", classes=("cat", "dog", "owl"), per_class=10, size=32)
    status, out = run([
        "train", "--data", folder, "--backbone", tiny_base(root / "base.keras"), "--epochs", "12",
        "--frozen-epochs", "0.5", "--batch-size", "8", "--learning-rate", "3e-2", "--out", str(root / "out"),
    ])
    return status, out, folder, root / "out"


def test_train_writes_a_model_that_reloads_and_predicts_as_it_reported(trained):
    status, out, folder, out_dir = trained
    assert status == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["classes.json", "epochs.csv", "model.keras", "report.png", "run.json"]
    assert json.loads((out_dir / "classes.json").read_text()) == ["cat", "dog", "owl"]
    model = keras.models.load_model(out_dir / "model.keras")
    accuracy = held_out_accuracy(model, folder, 32)
    assert f"Held-out accuracy of the fine-tuned model: {accuracy:.1%}" in out
    assert accuracy > 1 / 3  # three classes of distinct brightness; chance is 1/3
    assert (out_dir / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_train_logs_each_epoch_with_its_phase_and_rate(trained):
    out_dir = trained[3]
    rows = list(csv.DictReader(open(out_dir / "epochs.csv")))
    assert [int(r["phase"]) for r in rows] == [0] * 6 + [1] * 6  # --frozen-epochs 0.5 of 12
    assert [int(r["swa_n"]) for r in rows] == [0] * 9 + [1, 2, 3]  # SWA from 0.75 of 12
    head = (8 * 128 + 128) + (128 * 3 + 3)  # the tiny base pools to 8 features
    assert int(rows[0]["trainable_params"]) == head
    assert int(rows[6]["trainable_params"]) == head + 3 * 3 * 3 * 8 + 8  # the conv, not the BatchNorm
    np.testing.assert_allclose(float(rows[0]["learning_rate"]), 3e-2 / 2, rtol=1e-6)  # warm-up epoch
    np.testing.assert_allclose(float(rows[6]["learning_rate"]), 3e-3 * (1 + np.cos(np.pi * 5 / 12)) / 2, rtol=1e-6)
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)


def test_train_with_unfreeze_none_trains_the_head_alone(trained, tmp_path):
    folder = trained[2]
    base = tiny_base(tmp_path / "base.keras")
    status, _ = run(["train", "--data", folder, "--backbone", base, "--epochs", "3", "--unfreeze", "none",
                     "--no-swa", "--out", str(tmp_path / "out"), "--batch-size", "8"])
    assert status == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "epochs.csv")))
    assert [int(r["trainable_params"]) for r in rows] == [(8 * 128 + 128) + (128 * 3 + 3)] * 3
    saved = keras.models.load_model(tmp_path / "out" / "model.keras")
    original = keras.models.load_model(base)
    np.testing.assert_array_equal(saved.get_layer("tiny").get_layer("conv").kernel.numpy(),
                                  original.get_layer("conv").kernel.numpy())


def test_distill_trains_a_student_that_reloads_and_predicts_as_it_reported(trained, tmp_path):
    _, _, folder, out_dir = trained
    status, out = run([
        "distill", "--teacher", str(out_dir / "model.keras"), "--student", "MobileNetV3Small",
        "--data", folder, "--epochs", "2", "--batch-size", "8", "--out", str(tmp_path / "student"),
    ])
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["classes.json", "epochs.csv", "report.png", "run.json", "student.keras"]
    record = json.loads((tmp_path / "student" / "run.json").read_text())  # what --resume would continue with
    assert record["command"] == "distill" and record["student"] == "MobileNetV3Small" and record["epochs"] == 2
    assert record["teacher"] == str(out_dir / "model.keras") and record["data"] == os.path.abspath(folder)
    student = keras.models.load_model(tmp_path / "student" / "student.keras")
    assert student.input_shape == (None, 32, 32, 3) and student.output_shape == (None, 3)
    accuracy = held_out_accuracy(student, folder, 32)
    assert f"Held-out accuracy of the student: {accuracy:.1%}" in out
    rows = list(csv.DictReader(open(tmp_path / "student" / "epochs.csv")))
    assert len(rows) == 2 and {"distillation_loss", "student_loss", "val_accuracy"} <= rows[0].keys()


def bad_inputs(root, trained_model):
    good = write_image_folder(root / "good", classes=("cat", "dog"), per_class=5, size=32)
    one = write_image_folder(root / "one", classes=("cat",), size=32)
    broken = write_image_folder(root / "broken", classes=("cat", "dog"), per_class=5, size=32)
    (root / "broken" / "dog" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    three = write_image_folder(root / "three", classes=("a", "b", "c"), size=32)
    owls = write_image_folder(root / "owls", classes=("cat", "dog", "owl"), size=32)
    base = tiny_base(root / "base.keras")
    train = ["train", "--epochs", "1", "--out", str(root / "out")]
    distill = ["distill", "--student", "MobileNetV3Small", "--epochs", "1", "--out", str(root / "out")]
    return [
        (train + ["--data", str(root / "nowhere")], f"--data must be a folder of class subfolders. Received: '{root / 'nowhere'}' (no such folder)"),
        (train + ["--data", one], "--data needs one subfolder of images per class, at least two."),
        (train + ["--data", broken, "--backbone", base], f"TensorFlow cannot decode the image {root / 'broken' / 'dog' / 'x.png'}"),
        (train + ["--data", good, "--backbone", "ResNet51"], "--backbone must be one of the shipped glyphs, keras.applications'"),
        (train + ["--data", good, "--backbone", "MobileNetV3Small", "--weights", "none", "--image-size", "16"],
         "MobileNetV3Small refuses --image-size 16: Input size must be at least 32x32"),
        (train + ["--data", good, "--val", three, "--backbone", base], "--val must hold subfolders of the classes ['cat', 'dog']"),
        (train + ["--data", good, "--backbone", base, "--unfreeze", "conv9"],
         "--unfreeze must name a layer of tiny (close names: conv). Received: 'conv9'"),
        (train + ["--data", good, "--backbone", base, "--unfreeze", "9"], "--unfreeze counts layers from the top of tiny, which has 5. Received: 9"),
        (train + ["--resume"], f"--resume needs the run.json of the interrupted run in --out. Received: {str(root / 'out')!r}"),
        (train + ["--backbone", base], "--data is required, unless --resume"),
        (distill + ["--data", good, "--teacher", str(root / "none.keras")], "--teacher must be a .keras file."),
        (["distill", "--student", "glyphs", "--data", owls, "--teacher", trained_model, "--out", str(root / "out")],
         "--student must take the teacher's 3-channel images. Received: input shape (None, 32, 32, 1)"),
        (distill + ["--data", good, "--teacher", trained_model], "--teacher must output one score per class of --data (2: cat, dog)"),
    ]


def test_bad_input_gives_one_line_and_status_2(trained, tmp_path, capsys):
    for argv, message in bad_inputs(tmp_path, str(trained[3] / "model.keras")):
        capsys.readouterr()
        status = cli.main(argv)
        err = capsys.readouterr().err
        assert status == 2, argv
        assert err.startswith(f"keras-finetune {argv[0]}: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # every check runs before --out is made


def test_evaluate_and_predict_bad_input_gives_one_line_and_status_2(trained, tmp_path, capsys):
    model = str(trained[3] / "model.keras")
    other = write_image_folder(tmp_path / "other", classes=("cat", "emu"), size=32)
    broken = write_image_folder(tmp_path / "broken", classes=("cat",), per_class=2, size=32)
    (tmp_path / "broken" / "cat" / "x.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model.keras").write_bytes((trained[3] / "model.keras").read_bytes())
    (tmp_path / "any_size").mkdir()
    any_size = tmp_path / "any_size" / "model.keras"
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))).save(any_size)
    (tmp_path / "any_size" / "classes.json").write_text('["cat", "dog", "owl"]')
    cases = [
        (["evaluate", "--model", str(tmp_path / "none.keras"), "--data", other], "--model must be a .keras file."),
        (["evaluate", "--model", model, "--data", other], "--data must hold subfolders of the classes ['cat', 'dog', 'owl']."),
        (["evaluate", "--model", model, "--data", broken], f"TensorFlow cannot decode the image {tmp_path / 'broken' / 'cat' / 'x.jpg'}"),
        (["evaluate", "--model", str(lonely / "model.keras"), "--data", other], "--model needs its class names in classes.json"),
        (["predict", "--model", model, str(tmp_path / "broken" / "cat")], f"TensorFlow cannot decode the image {tmp_path / 'broken' / 'cat' / 'x.jpg'}"),
        (["predict", "--model", model, str(tmp_path / "nope.png")], "IMAGE must be an image file or a folder."),
        (["predict", "--model", model, "--top-k", "4", other], "--top-k must be at most the model's 3 classes. Received: 4"),
        (["predict", "--model", str(any_size), other], "--model must take square images of one size, as train and distill save them."),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"keras-finetune {argv[0]}: error: ") and message in err, err
        assert err.count("\n") == 1


def test_train_and_distill_refuse_to_start_over_an_interrupted_run_and_to_resume_with_other_arguments(trained, tmp_path, capsys):
    folder = trained[2]
    out = tmp_path / "out"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    (out / "run.json").write_text(json.dumps({"data": os.path.abspath(folder), "epochs": 4}))
    cases = [
        (["train", "--data", folder, "--out", str(out)], f"--out {str(out)!r} holds an interrupted run: continue it with --resume"),
        (["train", "--resume", "--epochs", "6", "--out", str(out)],
         "--resume continues the run as it was started, with --epochs 4. Received: 6"),
        (["train", "--resume", "--data", os.path.relpath(folder), "--epochs", "6", "--out", str(out)],
         "with --epochs 4. Received: 6"),  # the same folder given relatively is no conflict
        (["distill", "--resume", "--out", str(out)],
         f"--out {str(out)!r} holds a train run: continue it with keras-finetune train --resume. Received: distill --resume"),
        (["distill", "--data", folder, "--out", str(tmp_path / "other")], "--teacher, --student are required, unless --resume"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err


def test_train_options_mixed_precision_tensorboard_and_early_stopping(trained, tmp_path):
    folder = trained[2]
    status, out = run([
        "train", "--data", folder, "--backbone", tiny_base(tmp_path / "base.keras"), "--epochs", "12",
        "--learning-rate", "1e-12", "--no-swa", "--no-augmentation", "--no-mixing", "--early-stopping", "1",
        "--mixed-precision", "--tensorboard", "--batch-size", "8", "--out", str(tmp_path / "out"),
    ])
    assert status == 0
    assert "Mixed precision: mixed_bfloat16" in out  # no GPU here
    assert keras.mixed_precision.global_policy().name == "float32"  # put back afterwards
    saved = keras.models.load_model(tmp_path / "out" / "model.keras")
    assert saved.get_layer("head_dense_0").dtype_policy.name == "mixed_bfloat16"
    assert saved.get_layer("head_output").dtype_policy.name == "float32"  # probabilities in float32
    rows = list(csv.DictReader(open(tmp_path / "out" / "epochs.csv")))
    assert len(rows) < 12 and f"Stopped early after epoch {len(rows)}: val_loss did not improve for 1 epochs" in out
    assert list((tmp_path / "out" / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert not (tmp_path / "out" / "backup").exists()  # deleted once the run ended


def test_tensorboard_without_its_package_is_refused_before_training(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    argv = ["train", "--data", trained[2], "--backbone", tiny_base(tmp_path / "b.keras"), "--tensorboard", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    assert "--tensorboard needs the tensorboard package (pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_each_epoch_is_one_line_with_integers_as_integers(trained):
    lines = [line for line in trained[1].splitlines() if line.startswith("epoch ")]
    assert len(lines) == 12 and lines[0].startswith("epoch 1/12  ") and lines[-1].startswith("epoch 12/12  ")
    assert re.search(r"  phase 0  ", lines[0]) and re.search(r"  phase 1  ", lines[-1])
    assert re.search(r"  trainable_params 1,539  ", lines[0]) and re.search(r"  swa_n 3  ", lines[-1])


def test_the_installed_command_exits_with_status_2_without_a_traceback(tmp_path):
    script = Path(sys.executable).with_name("keras-finetune")
    result = subprocess.run([script, "train", "--data", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"keras-finetune train: error: --data must be a folder of class subfolders. Received: '{tmp_path / 'nowhere'}' (no such folder)")
    assert "Traceback" not in result.stderr


def test_an_unwritable_or_held_out_folder_is_one_line_before_anything_loads(trained, tmp_path, capsys):
    folder, base = trained[2], str(trained[3] / "model.keras")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    held = tmp_path / "held"
    held.mkdir()
    (held / ".keras-finetune.lock").write_text(str(os.getppid()))  # a live process other than this one
    cases = [
        (a_file, f"--out must be a folder. Received: {str(a_file)!r} (a file)"),
        (a_file / "out", f"cannot be written: {str(a_file)!r} is read-only or not a folder"),
        (held, f"--out {str(held)!r} is in use by another run (process {os.getppid()})"),
    ]
    for out, message in cases:
        for command in (["train", "--data", folder, "--backbone", base], ["distill", "--data", folder, "--teacher", base, "--student", base]):
            capsys.readouterr()
            assert cli.main([*command, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in held.iterdir()) == [".keras-finetune.lock"]  # nothing written into a held folder


def test_the_lock_of_a_killed_run_is_taken_over_and_released_at_the_end(tmp_path):
    from keras_finetune import commands

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".keras-finetune.lock").write_text(dead.stdout.strip())
    with commands._holding(str(out)):
        assert (out / ".keras-finetune.lock").read_text() == str(os.getpid())
    assert not (out / ".keras-finetune.lock").exists()


def test_a_failed_save_keeps_the_trained_model_in_the_temporary_folder(tmp_path, monkeypatch):
    from keras_finetune import commands

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    out = tmp_path / "out"
    out.mkdir()
    save = keras.Model.save

    def full_disk(self, path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(28, "No space left on device")
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write .*model.keras \(\[Errno 28\] No space left on device\); the trained model is saved in (\S+) instead") as error:
        commands._save(model, None, str(out), "model", "title", print)
    kept = re.search(r"saved in (\S+) instead", str(error.value)).group(1)
    np.testing.assert_array_equal(keras.models.load_model(kept).get_weights()[0], model.get_weights()[0])
    os.remove(kept)
    assert list(out.iterdir()) == []  # no half-written model left under --out


def test_evaluate_with_tta_averages_views_and_uses_the_glyphs_shifts_for_that_base(trained, tmp_path, capsys):
    from keras_finetune import glyphs, tta_predict
    from keras_finetune.image_folders import image_batches, read_image_folder
    from keras_finetune.layers import image_augmentation

    out_dir, folder = trained[3], read_image_folder(trained[2])
    model = keras.models.load_model(out_dir / "model.keras")
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(out_dir / "model.keras"), "--data", trained[2], "--tta", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    crops = tta_predict(model, image_batches(folder.paths, None, 32, 3, 32), n=4, seed=0)
    assert result["accuracy"] == pytest.approx(np.mean(crops.argmax(-1) == folder.labels))
    assert cli.main(["predict", "--model", str(out_dir / "model.keras"), "--tta", "4", "--json", trained[2]]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose([row["top"][0]["probability"] for row in rows], crops.max(-1), rtol=1e-5)
    # A model whose run.json names the glyphs base gets its one-pixel shifts and no flips.
    (tmp_path / "model.keras").write_bytes((out_dir / "model.keras").read_bytes())
    (tmp_path / "classes.json").write_text((out_dir / "classes.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({"backbone": "glyphs"}))
    from keras_finetune.commands import _tta_probabilities

    batches = image_batches(folder.paths, None, 32, 3, 32)
    shifts = tta_predict(model, batches, image_augmentation(**{**glyphs.AUGMENTATION, "seed": 0}), n=4, flip=False)
    np.testing.assert_allclose(_tta_probabilities(model, str(tmp_path / "model.keras"), batches, 4), shifts, rtol=1e-6)
    assert not np.allclose(shifts, crops)
