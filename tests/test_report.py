import sys

import numpy as np
import pytest

from keras_finetune.report import boundaries, figure_of, plot_history

LOGS = {
    "loss": [1.0, 0.8, 0.7, 0.6, 0.5],
    "val_loss": [1.1, 0.9, 0.8, 0.7, 0.65],
    "accuracy": [0.3, 0.5, 0.6, 0.7, 0.8],
    "val_accuracy": [0.25, 0.45, 0.5, 0.6, 0.7],
    "phase": [0, 0, 1, 1, 2],
    "learning_rate": [1e-3, 1e-3, 1e-4, 1e-4, 1e-5],
    "swa_n": [0, 0, 0, 1, 2],
}


def test_boundaries_are_read_from_the_phase_and_swa_logs():
    assert boundaries(LOGS) == [(2, "phase 1"), (3, "SWA"), (4, "phase 2")]
    assert boundaries({"loss": [1.0, 0.5]}) == []


def test_the_figure_draws_every_curve_and_a_line_per_boundary():
    pytest.importorskip("matplotlib")
    figure = figure_of(LOGS, title="run")
    loss, accuracy, rate = figure.axes
    for axis, key in ((loss, "loss"), (accuracy, "accuracy")):
        curves = [line for line in axis.lines if line.get_linestyle() == "-"]
        np.testing.assert_allclose(curves[0].get_ydata(), LOGS[key])
        np.testing.assert_allclose(curves[1].get_ydata(), LOGS[f"val_{key}"])
        np.testing.assert_allclose(curves[0].get_xdata(), [1, 2, 3, 4, 5])
        marks = sorted(line.get_xdata()[0] for line in axis.lines if line.get_linestyle() == "--")
        assert marks == [2.5, 3.5, 4.5]  # between epochs 2|3 (phase 1), 3|4 (SWA), 4|5 (phase 2)
    assert rate.get_yscale() == "log"
    assert [t.get_text() for t in rate.texts] == ["phase 1", "SWA", "phase 2"]
    assert figure._suptitle.get_text() == "run"


def test_the_png_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_history({"loss": [1.0, 0.5]}, str(tmp_path / "report.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread
    assert imread(path).shape[:2] == (360, 450)  # one panel: loss only


def test_below_draws_a_full_width_panel_under_the_curves(tmp_path):
    pytest.importorskip("matplotlib")
    drawn = []
    path = plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]}, str(tmp_path / "report.png"),
                        below=lambda axis: drawn.append(axis.barh([0, 1], [60.0, 90.0])))
    assert len(drawn) == 1 and len(drawn[0]) == 2  # called once, on an axis of its own
    from matplotlib.image import imread
    assert imread(path).shape[:2] == (860, 900)  # two panels, 3.6 + 5.0 inches tall at 100 dpi


def test_without_matplotlib_it_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'plot_history needs matplotlib: pip install "keras-finetune\[plot\]"'):
        plot_history(LOGS, str(tmp_path / "r.png"))


@pytest.mark.parametrize("history", [{}, None, [1, 2]])
def test_a_history_without_logs_is_refused(history, tmp_path):
    with pytest.raises(ValueError, match="Received: history="):
        plot_history(history, str(tmp_path / "r.png"))
