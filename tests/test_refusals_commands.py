"""Bad arguments given to the commands' Python functions and to the CLI: named before anything loads."""

import math

import pytest
from conftest import write_image_folder

from keras_finetune import cli, commands
from keras_finetune.demo import run_demo
from keras_finetune.distribute import get_strategy


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"), per_class=2, size=8)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda f, o: commands.train(f, epochs=0, out=o), ValueError, "epochs=0"),
        (lambda f, o: commands.train(f, batch_size=0, out=o), ValueError, "batch_size=0"),
        (lambda f, o: commands.train(f, val_split=1.5, out=o), ValueError, "val_split=1.5"),
        (lambda f, o: commands.train(f, learning_rate=math.inf, out=o), ValueError, "learning_rate=inf"),
        (lambda f, o: commands.train(f, label_smoothing=1.0, out=o), ValueError, "label_smoothing=1.0"),
        (lambda f, o: commands.train(f, mixing="no", out=o), TypeError, "mixing='no'"),
        (lambda f, o: commands.train(f, seed=0.5, out=o), TypeError, "seed=0.5"),
        (lambda f, o: commands.train(f, early_stopping=0, out=o), ValueError, "early_stopping=0"),
        # distill's epochs=-1 used to be reported as `t_max`, from inside its schedule.
        (lambda f, o: commands.distill("t.keras", "MobileNetV3Small", f, epochs=-1, out=o), ValueError, "epochs=-1"),
        (lambda f, o: commands.distill("t.keras", "MobileNetV3Small", f, temperature=math.inf, out=o), ValueError, "temperature=inf"),
        (lambda f, o: commands.distill("t.keras", "MobileNetV3Small", f, alpha=2, out=o), ValueError, "alpha=2"),
        (lambda f, o: commands.predict("m.keras", [f], top_k=0), ValueError, "top_k=0"),
        (lambda f, o: commands.evaluate("m.keras", f, batch_size=0), ValueError, "batch_size=0"),
        (lambda f, o: run_demo(seeds=0), ValueError, "seeds=0"),  # it raised UnboundLocalError
        (lambda f, o: run_demo(first_seed=-1), ValueError, "first_seed=-1"),
        (lambda f, o: run_demo(target="latin"), ValueError, "target='latin'"),
        (lambda f, o: run_demo(shots=101), ValueError, r"in \[1, 100\]. Received: shots=101"),
        (lambda f, o: get_strategy(devices=5), TypeError, "devices=5"),
    ],
)
def test_bad_arguments_are_named_before_anything_loads(call, error, message, folder, tmp_path):
    with pytest.raises(error, match=message):
        call(folder, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_the_cli_refuses_a_rate_that_is_not_a_finite_positive_number(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", "x", "--learning-rate", value])
    assert exit_info.value.code == 2
    assert f"expected a positive number, received {value!r}" in capsys.readouterr().err
