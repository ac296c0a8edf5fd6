"""A PNG report of a training run: loss, accuracy and learning rate per epoch, phases marked."""

from __future__ import annotations

__all__ = ["boundaries", "figure_of", "plot_history"]

_CURVES = (("loss", "loss"), ("accuracy", "accuracy"))


def pyplot(caller: str):
    """matplotlib's pyplot on the Agg backend, or an ImportError that says what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f'{caller} needs matplotlib: pip install "keras-finetune[plot]".') from None
    return plt


def _logs(history) -> dict:
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError(
            "`history` must be a keras History or its `history` dict, with epoch logs. "
            f"Received: history={history!r}"
        )
    return logs


def boundaries(history) -> list[tuple[int, str]]:
    """Epochs (from 0) where an unfreezing phase or SWA averaging starts, with a label.

    Read from the `phase` and `swa_n` epoch logs that `ProgressiveUnfreezing`
    and `SWA` write; a run without them has none.
    """
    logs = _logs(history)
    marks = []
    phases = logs.get("phase", [])
    marks += [(e, f"phase {int(phases[e])}") for e in range(1, len(phases)) if phases[e] != phases[e - 1]]
    averaged = [e for e, n in enumerate(logs.get("swa_n", [])) if n > 0]
    if averaged:
        marks.append((averaged[0], "SWA"))
    return sorted(marks)


def plot_history(history, path: str, title: str | None = None, below=None) -> str:
    """Save loss, accuracy and learning-rate curves per epoch as a PNG.

    Training and validation curves share a panel; the phase changes and the
    start of SWA averaging are drawn as labelled vertical lines on each.
    Panels whose logs are missing are left out. Needs matplotlib.

    Args:
        history: a `keras.callbacks.History` (what `fit` and `fine_tune`
            return) or its `history` dict.
        path: str. Where to write the PNG.
        title: str. Figure title. Defaults to `None`.
        below: a function of a matplotlib axis that draws a full-width
            panel under the curves (the demo's bar chart). Defaults to `None`.

    Returns:
        `path`.

    Example:

    ```python
    history = fine_tune(base, train_ds, val_ds, num_classes=5)
    plot_history(history, "report.png")
    ```
    """
    figure = figure_of(history, title, below)
    figure.savefig(path, dpi=100)
    pyplot("plot_history").close(figure)
    return path


def figure_of(history, title: str | None = None, below=None):
    """The report's matplotlib figure (see `plot_history`); `below(axis)` draws a full-width panel under it."""
    logs = _logs(history)
    plt = pyplot("plot_history")
    panels = [(key, label) for key, label in _CURVES if key in logs]
    if "learning_rate" in logs:
        panels.append(("learning_rate", "learning rate"))
    if below is None:
        figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    else:
        figure = plt.figure(figsize=(4.5 * len(panels), 8.6))
        grid = figure.add_gridspec(2, len(panels), height_ratios=(3.6, 5.0))
        axes = [[figure.add_subplot(grid[0, i]) for i in range(len(panels))]]
        below(figure.add_subplot(grid[1, :]))
    marks = boundaries(logs)
    for axis, (key, label) in zip(axes[0], panels):
        epochs = range(1, len(logs[key]) + 1)
        axis.plot(epochs, logs[key], label="training" if key != "learning_rate" else label)
        if f"val_{key}" in logs:
            axis.plot(range(1, len(logs[f"val_{key}"]) + 1), logs[f"val_{key}"], label="validation")
        if key == "learning_rate" and min(logs[key]) > 0:
            axis.set_yscale("log")
        for epoch, text in marks:  # the mark sits between the last epoch before and the first after
            axis.axvline(epoch + 0.5, color="grey", linestyle="--", linewidth=1)
            axis.annotate(text, (epoch + 0.5, 1.0), xycoords=("data", "axes fraction"),
                          rotation=90, va="top", ha="right", fontsize=8, color="grey")
        axis.set(xlabel="epoch", ylabel=label)
        axis.legend(loc="best", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
