"""The bundled transfer task behind `keras-finetune demo`: the playbook as an ablation.

The base is the shipped `glyphs` network (`keras_finetune.pretrained`),
pretrained on 107 printed glyphs; nothing is pretrained or downloaded at demo
time. Two targets, each from a few labelled images per class:

- `digits`: scikit-learn's handwritten digits, all 10 classes (print ->
  handwriting, the classic domain shift); accuracy on every image not used
  for training.
- `greek`: 10 Greek small letters the base never saw, rendered as its source
  glyphs were; accuracy on 2,000 held-out renders.

The rows: the same network from scratch, a linear probe on the frozen base,
the widely copied two-fit recipe (freeze, fit; `trainable = True`, recompile
Adam(1e-5), fit) and the same two fits made fair (BatchNorm kept frozen,
`fine_tune`'s two rates), `fine_tune` with every part, `fine_tune` with one
part removed at a time, and a 7x smaller student from scratch and distilled
from the `fine_tune` model on the augmented and mixed training images (for
the digits, with printed digits rendered as the base's source glyphs as
unlabelled transfer images). Each row's paired difference to `fine_tune` (same
seed, same images) comes with its spread, so a reader can tell an effect
from noise. Settings were chosen on seeds 100-104; the demo reports seeds
0-2 by default (benchmarks/RESULTS.md has seeds 10-19 too).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed

import keras
import numpy as np
import tensorflow as tf

from keras_finetune import glyphs
from keras_finetune.freezing import freeze, unfreeze
from keras_finetune.heads import build_classifier
from keras_finetune.layers import MixUpOrCutMix, image_augmentation
from keras_finetune.losses import SparseCategoricalCrossentropy
from keras_finetune.models import Distiller
from keras_finetune.pretrained import build_base, load_base
from keras_finetune.recipe import fine_tune
from keras_finetune.report import plot_history
from keras_finetune.validation import check_count

__all__ = [
    "TARGETS",
    "ROWS",
    "ABLATIONS",
    "load_digits_images",
    "target_task",
    "student_base",
    "train_classifier",
    "linear_probe",
    "two_fits",
    "fine_tune_recipe",
    "transfer_images",
    "student_batches",
    "distil_student",
    "run_demo",
    "format_table",
    "plot_demo",
]

TARGETS = {
    "digits": "scikit-learn's handwritten digits 0-9",
    "greek": "10 Greek small letters the base never saw",
}
FULL = "fine_tune, every part"
SCRATCH, PROBE, COPIED, FAIR = (
    "from scratch", "linear probe (frozen base)", "two fits, as copied", "two fits, made fair",
)
STUDENT, DISTILLED = "student from scratch (7x smaller)", "student distilled from fine_tune"
BATCH_SIZE = 16
# The two students take four times the teacher's steps (batches of 8, twice the epochs): distillation
# keeps learning from new augmented and mixed images as long as it runs (tuning seeds, 3 shots:
# 81.3 % -> 86.1 % at batches of 8 instead of 16; 86.6 -> 87.9 % at twice the epochs), and the student
# from scratch gains a little too (81.6 -> 82.9 %), so both get the same steps.
STUDENT_BATCH_SIZE = 8
STUDENT_EPOCHS_FACTOR = 2
# Distillation needs inputs, not labels: each of the student's batches also holds this many of the
# target's classes rendered as the base's source glyphs (printed digits for the handwritten ones),
# labelled by the teacher alone. Tuning seeds, 3 shots, twice the epochs: 87.9 % without them,
# 91.6 % with them, against 88.4 % for the student trained on the same renders with their true labels.
TRANSFER_PER_BATCH = 24
TRANSFER_IMAGES = 4000
TRANSFER_SEED = 4_000_000  # plus the demo's seed
LABEL_SMOOTHING = 0.1
# Dropout before one softmax layer on the averaged 2x2 feature map (128 features); a hidden
# layer of 128 did worse on the tuning seeds.
HEAD = {"hidden_units": (), "dropout": 0.2, "pooling": "avg"}
# The head alone learns at 1e-2 (what a linear probe needs here), the whole network at 1e-3 after.
HEAD_RATE, BASE_RATE = 1e-2, 1e-3
AUGMENTATION = glyphs.AUGMENTATION  # shifts of up to one pixel
MIXING = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "switch_prob": 0.5, "prob": 0.5}
RECIPE = {
    "frozen_epochs": 0.5, "unfreeze": "all", "learning_rate": HEAD_RATE, "unfreeze_lr_factor": BASE_RATE / HEAD_RATE,
    "warmup_epochs": 2, "augmentation": AUGMENTATION,
    "mixing": MIXING,
    "label_smoothing": LABEL_SMOOTHING, "swa": 0.75, "head": HEAD,
}
# fine_tune's arguments with one part removed.
ABLATIONS = {
    "  without progressive unfreezing": {"frozen_epochs": 0, "learning_rate": BASE_RATE},
    "  without cosine + warm-up": {"schedule": None, "warmup_epochs": 0},
    "  without augmentation": {"augmentation": False},
    "  without MixUp/CutMix": {"mixing": False},
    "  without label smoothing": {"label_smoothing": 0.0},
    "  without dropout head": {"head": {**HEAD, "dropout": 0.0}},
    "  without SWA": {"swa": None},
}
ROWS = (SCRATCH, PROBE, COPIED, FAIR, FULL, *ABLATIONS, STUDENT, DISTILLED)
STUDENT_FILTERS = (16, 32, 32, 32)
DISTILLATION = {"alpha": 0.0, "temperature": 2.0}
# The report's held-out curves: the first seed's full run evaluates every held-out image after each
# epoch. In the run's own batches of 16 (111 steps an epoch) that took 27-42 s against the run's 3 s;
# in batches of 512 it is four steps an epoch.
VALIDATION_BATCH_SIZE = 512
# Worker processes at most: each holds its own TensorFlow (about 1 GB).
MAX_JOBS = 4
_GREEK_HELD_OUT = (2000, 2_000_000)  # images, seed


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as float32 images in [0, 1], shape (N, 8, 8, 1)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "The demo uses scikit-learn's bundled digits: "
            'pip install "keras-finetune[demo]" (or scikit-learn).'
        ) from None
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    return images, digits.target.astype("int32")


def _few_shot(labels: np.ndarray, shots: int, rng) -> np.ndarray:
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in np.unique(labels)]
    )


def _check_target(target) -> None:
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {', '.join(TARGETS)}. Received: target={target!r}")


def target_task(target: str, shots: int, seed: int) -> tuple[tuple, tuple]:
    """`((images, labels), (held-out images, labels))` of a target: `shots` labelled images per class
    drawn with `seed`, and the images accuracy is measured on."""
    _check_target(target)
    rng = np.random.default_rng(seed)
    if target == "digits":
        images, labels = load_digits_images()
        train = _few_shot(labels, shots, rng)
        held_out = np.setdiff1d(np.arange(len(labels)), train)
        return (images[train], labels[train]), (images[held_out], labels[held_out])
    pool = glyphs.render(glyphs.UNSEEN_CHARACTERS, 40 * len(glyphs.UNSEEN_CHARACTERS) + 20 * shots, 3_000_000 + seed)
    train = _few_shot(pool[1], shots, rng)
    return (pool[0][train], pool[1][train]), _greek_held_out()


@functools.lru_cache(maxsize=1)
def _greek_held_out() -> tuple[np.ndarray, np.ndarray]:
    """The Greek target's 2,000 held-out renders: the same for every seed, rendered once."""
    return glyphs.render(glyphs.UNSEEN_CHARACTERS, *_GREEK_HELD_OUT)


def student_base(seed: int) -> keras.Model:
    """The glyphs architecture with fewer filters (`STUDENT_FILTERS`), fresh weights: the student."""
    return _fresh_base(seed, STUDENT_FILTERS)


def _fresh_base(seed: int, filters=None) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_base(filters=filters)


def _shuffled(images, labels, seed: int, batch_size: int) -> tf.data.Dataset:
    """Endless batches, reshuffled each pass: one iterator for a whole `fit` (a new one per
    two-step epoch, as `fit` on arrays makes, costs more than the epoch)."""
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images), seed=seed)
    return data.repeat().batch(batch_size)


def _steps(images, batch_size: int) -> int:
    return -(-len(images) // batch_size)


def train_classifier(
    base, images, labels, seed: int, epochs: int, learning_rate: float = BASE_RATE, head: dict | None = None,
    batch_size: int = BATCH_SIZE,
) -> keras.Model:
    """A head on `base` (`HEAD`, or `build_classifier(**head)`), label smoothing 0.1, Adam."""
    keras.utils.set_random_seed(seed)
    model = build_classifier(base, int(labels.max()) + 1, **(head or HEAD))
    model.compile(keras.optimizers.Adam(learning_rate), SparseCategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING))
    model.fit(
        _shuffled(images, labels, seed, batch_size), epochs=epochs, steps_per_epoch=_steps(images, batch_size),
        shuffle=False, verbose=0,
    )
    return model


def linear_probe(base, images, labels, seed: int, epochs: int) -> keras.Model:
    """The frozen base under one softmax layer, no dropout: how good its features are as they are."""
    return train_classifier(freeze(base), images, labels, seed, epochs, HEAD_RATE, head={**HEAD, "dropout": 0.0})


def two_fits(base, images, labels, seed: int, epochs: int, fair: bool = False) -> keras.Model:
    """The widely copied recipe: fit the head on the frozen base for half the epochs at Adam's
    default 1e-3, then `base.trainable = True`, recompile Adam(1e-5) (the first optimizer's state
    is lost) and fit again.

    As copied, `trainable = True` puts the base's BatchNorm layers back in
    training mode on batches of 16. `fair` unfreezes with `unfreeze` instead
    (BatchNorm stays frozen) and uses `fine_tune`'s two rates, `HEAD_RATE`
    then `BASE_RATE`.
    """
    half = epochs // 2
    model = train_classifier(freeze(base), images, labels, seed, half, HEAD_RATE if fair else 1e-3)
    if fair:
        unfreeze(base)
    else:
        base.trainable = True
    model.compile(
        keras.optimizers.Adam(BASE_RATE if fair else 1e-5),
        SparseCategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
    )
    model.fit(
        _shuffled(images, labels, seed + 1, BATCH_SIZE), epochs=epochs - half, steps_per_epoch=_steps(images, BATCH_SIZE),
        shuffle=False, verbose=0,
    )
    return model


def fine_tune_recipe(base, images, labels, seed: int, epochs: int, validation_data=None, **changes):
    """`fine_tune` with every part on (`RECIPE`), or with `changes` (one of `ABLATIONS`); returns its History."""
    keras.utils.set_random_seed(seed)  # the head's initial weights
    return fine_tune(
        base, (images, labels), validation_data, num_classes=int(labels.max()) + 1, epochs=epochs,
        batch_size=BATCH_SIZE, seed=seed, verbose=0, **{**RECIPE, **changes},
    )


def transfer_images(target: str, seed: int) -> np.ndarray | None:
    """The distilled student's unlabelled transfer images for `target`, or None.

    `TRANSFER_IMAGES` renders of the target's classes from the base's source
    task, where that task has them: printed digits for the handwritten
    ones. The Greek letters have none (the base never saw them), and a
    render of them would be the target's own data.
    """
    _check_target(target)
    if target != "digits":
        return None
    return glyphs.render("0123456789", TRANSFER_IMAGES, TRANSFER_SEED + seed)[0]


def student_batches(images, labels, seed: int, transfer=None) -> tf.data.Dataset:
    """Endless unlabelled batches for the distilled student: `STUDENT_BATCH_SIZE` training images
    augmented and mixed as `fine_tune` does it, then (with `transfer`) `TRANSFER_PER_BATCH` of the
    `transfer` images, shifted the same way and not mixed."""
    classes = int(labels.max()) + 1
    augment = image_augmentation(**{**AUGMENTATION, "seed": seed})
    mix = MixUpOrCutMix(**{**MIXING, "num_classes": classes, "seed": seed})
    data = _shuffled(images, labels, seed, STUDENT_BATCH_SIZE)
    data = data.map(lambda x, y: mix(augment(x, training=True), tf.one_hot(y, classes))[0])
    if transfer is None:
        return data
    renders = tf.data.Dataset.from_tensor_slices(transfer).shuffle(len(transfer), seed=seed).repeat()
    renders = renders.batch(TRANSFER_PER_BATCH).map(lambda x: augment(x, training=True))
    return tf.data.Dataset.zip(data, renders).map(lambda own, rendered: tf.concat([own, rendered], 0))


def distil_student(base, teacher, images, labels, seed: int, epochs: int, transfer=None) -> keras.Model:
    """A dropout head on `base`, trained by a `Distiller` to match `teacher` on `student_batches`
    (teacher and student see the same images; with `DISTILLATION`'s alpha 0 the teacher alone
    teaches, so no image needs a label)."""
    keras.utils.set_random_seed(seed)
    student = build_classifier(base, int(labels.max()) + 1, **HEAD)
    distiller = Distiller(student, teacher)
    distiller.compile(keras.optimizers.Adam(BASE_RATE), **DISTILLATION)
    distiller.fit(
        student_batches(images, labels, seed, transfer), epochs=epochs,
        steps_per_epoch=_steps(images, STUDENT_BATCH_SIZE), shuffle=False, verbose=0,
    )
    return student


def _accuracy(model, images, labels) -> float:
    # A direct call: `predict` would trace a new function for every model.
    predictions = np.argmax(keras.ops.convert_to_numpy(model(images, training=False)), axis=-1)
    return float(np.mean(predictions == labels))


def _runs(pretrained, data, seed: int, epochs: int, validation) -> dict:
    """Each row's function of no arguments, returning its model (the full recipe: its History)."""
    copy = lambda: _copy(pretrained)  # noqa: E731 (each row its own copy)
    runs = {
        SCRATCH: lambda: train_classifier(_fresh_base(seed + 1000), *data, seed, epochs),
        PROBE: lambda: linear_probe(copy(), *data, seed, epochs),
        COPIED: lambda: two_fits(copy(), *data, seed, epochs),
        FAIR: lambda: two_fits(copy(), *data, seed, epochs, fair=True),
        FULL: lambda: fine_tune_recipe(copy(), *data, seed, epochs, validation),
    }
    for row, changes in ABLATIONS.items():
        runs[row] = lambda changes=changes: fine_tune_recipe(copy(), *data, seed, epochs, **changes)
    runs[STUDENT] = lambda: train_classifier(
        student_base(seed + 2000), *data, seed, STUDENT_EPOCHS_FACTOR * epochs, batch_size=STUDENT_BATCH_SIZE
    )
    return runs


def _copy(base: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(base)
    copy.set_weights(base.get_weights())
    return copy


def run_demo(
    target: str = "digits",
    shots: int = 3,
    seeds: int = 3,
    first_seed: int = 0,
    epochs: int = 60,
    rows=ROWS,
    report: str | None = "keras-finetune-demo.png",
    print_fn=print,
    jobs: int | None = 1,
) -> dict:
    """Run each row for each seed, print the table and save the report.

    Seed `first_seed`'s full `fine_tune` run also evaluates the held-out
    images after each epoch, for the report's curves (`report`: a PNG path,
    or `None` for none). `jobs` worker processes share the runs (`None`:
    one per CPU core, at most `MAX_JOBS`; `keras-finetune demo` does that):
    a run keeps one core busy, most of it tracing. `jobs=1`, the default,
    runs them in this process. A script that asks for workers must call
    `run_demo` under `if __name__ == "__main__":`, as with any spawned
    process. Each run seeds itself, so the table does not depend on the
    order the runs take.

    Returns:
        A dict from row to a list of `(accuracy, seconds)`, one per seed.
    """
    check_count(shots, "shots", 1, 100)
    check_count(seeds, "seeds", 1)
    check_count(epochs, "epochs", 2)
    check_count(first_seed, "first_seed", 0)
    jobs = _cores_for(MAX_JOBS) if jobs is None else check_count(jobs, "jobs", 1)
    _check_target(target)
    unknown = [row for row in rows if row not in ROWS]
    if unknown or (FULL not in rows and (DISTILLED in rows or report)):
        raise ValueError(
            f"`rows` must be rows of ROWS, with {FULL!r} for the distilled student and the report. "
            f"Received: rows={unknown or list(rows)}"
        )
    tasks = _tasks(rows, range(first_seed, first_seed + seeds))
    run = functools.partial(_run_rows, target, shots, epochs, first_seed if report else None)
    results = {row: [None] * seeds for row in rows}
    progress = keras.utils.Progbar(seeds * len(rows), unit_name="run")
    history = None
    for seed, runs, held_out, curves in _map(run, tasks, min(jobs, len(tasks))):
        for row, outcome in runs.items():
            results[row][seed - first_seed] = outcome
        history = curves or history
        progress.add(len(runs))
    title = (
        f"{TARGETS[target]}, {shots} labelled image{'s' if shots > 1 else ''} per class, glyphs base; "
        f"accuracy on {held_out} held-out images, seeds {first_seed}-{first_seed + seeds - 1}"
    )
    print_fn(format_table(results, title))
    if report:
        plot_demo(history, results, report, title)
        print_fn(f"Report (seed {first_seed}'s fine_tune run and the ablation): {os.path.abspath(report)}")
    return results


def _tasks(rows, seeds) -> list[tuple[int, tuple]]:
    """`(seed, rows)` for each task: the full recipe with the student distilled from it (the longest
    task, first), then each other row alone."""
    together = tuple(row for row in (FULL, DISTILLED) if row in rows)
    first = [(seed, together) for seed in seeds] if together else []
    return first + [(seed, (row,)) for seed in seeds for row in rows if row not in together]


def _run_rows(target: str, shots: int, epochs: int, validation_seed, task) -> tuple:
    """Runs a task's rows for its seed: `(seed, {row: (accuracy, seconds)}, held-out images, the full
    run's history dict where it evaluated the held-out images after each epoch, else None)`."""
    seed, rows = task
    data, held_out = target_task(target, shots, seed)
    validation = None
    if seed == validation_seed and FULL in rows:
        validation = tf.data.Dataset.from_tensor_slices(held_out).batch(VALIDATION_BATCH_SIZE)
    runs = _runs(_pretrained(), data, seed, epochs, validation)
    outcomes, curves, teacher = {}, None, None
    for row in rows:
        start = time.perf_counter()
        if row == DISTILLED:
            model = distil_student(
                student_base(seed + 2000), teacher, *data, seed, STUDENT_EPOCHS_FACTOR * epochs,
                transfer_images(target, seed),
            )
        else:
            model = runs[row]()
        seconds = time.perf_counter() - start
        if isinstance(model, keras.callbacks.History):  # fine_tune's rows
            if row == FULL:
                curves = model.history if validation is not None else None
                teacher = model.model
            model = model.model
        outcomes[row] = (_accuracy(model, *held_out), seconds)
    return seed, outcomes, len(held_out[1]), curves


@functools.lru_cache(maxsize=1)
def _pretrained() -> keras.Model:
    """The shipped base, loaded once per process; each row trains a copy."""
    return load_base("glyphs")


def _map(function, tasks, jobs: int):
    """`function` over `tasks`: here when `jobs` is 1, else in that many spawned workers, as they finish."""
    if jobs == 1:
        yield from map(function, tasks)
        return
    import keras_finetune_cli  # the launcher, outside the package: it imports TensorFlow without its start-up lines

    before = set(multiprocessing.active_children())
    start = (f"{__name__}:_start_worker",)
    # Not multiprocessing.Pool: it replaces a worker that dies (killed for memory, or a script that
    # spawns again on import) and waits for its task forever; this pool raises BrokenProcessPool.
    with ProcessPoolExecutor(jobs, multiprocessing.get_context("spawn"), keras_finetune_cli.start_worker, start) as pool:
        futures = [pool.submit(_relaying_warnings, function, task) for task in tasks]
        workers = set(multiprocessing.active_children()) - before
        try:
            for future in as_completed(futures):
                result, caught = future.result()
                for message, category, filename, lineno in caught:  # once each here, not once per worker
                    warnings.warn_explicit(message, category, filename, lineno, registry=_RELAYED)
                yield result
        except BaseException:  # Ctrl-C (the workers ignore it), a failed run: end the other runs now
            for worker in workers:
                worker.terminate()
            raise


# What the workers' warnings were shown under: the default filter shows each once per process.
_RELAYED: dict = {}


def _relaying_warnings(function, task):
    """`function(task)` in a worker, and the warnings it raised, for the parent to show."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(task)
    return result, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def _start_worker() -> None:
    # One thread each: the workers share the cores. Ctrl-C is the parent's to handle (it ends them).
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # AutoGraph's notes on traced functions
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cores_for(most: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, most))


def format_table(results: dict, title: str) -> str:
    """Mean ± std accuracy, the paired difference to the full recipe ± its std, median seconds; one row each."""
    width = max(len(row) for row in results)
    lines = [title, f"{'recipe':<{width}}  {'accuracy':>15}  {'vs fine_tune':>15}  {'seconds':>7}"]
    full = np.array([a for a, _ in results.get(FULL, [])]) * 100
    for row, runs in results.items():
        accuracy = 100 * np.array([a for a, _ in runs])
        difference = "" if row == FULL or not len(full) else _signed(accuracy - full)
        lines.append(
            f"{row:<{width}}  {accuracy.mean():6.1f} ± {accuracy.std():4.1f} %  {difference:>15}  "
            f"{np.median([s for _, s in runs]):7.1f}"
        )
    return "\n".join(lines)


def _signed(differences: np.ndarray) -> str:
    return f"{differences.mean():+6.1f} ± {differences.std():4.1f}"


def plot_demo(history, results: dict, path: str, title: str) -> str:
    """A PNG of the full recipe's run (loss, accuracy, learning rate per epoch) over a bar chart of every row."""
    return plot_history(history, path, title, below=lambda axis: _bars(axis, results))


def _bars(axis, results: dict) -> None:
    rows = list(results)
    accuracy = np.array([[100 * a for a, _ in results[row]] for row in rows])
    colours = ["tab:orange" if row == FULL else "tab:blue" if row.startswith("  ") else "tab:grey" for row in rows]
    axis.barh(range(len(rows)), accuracy.mean(axis=1), xerr=accuracy.std(axis=1), color=colours)
    axis.set_yticks(range(len(rows)), [row.strip() for row in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("held-out accuracy (%), mean ± std over seeds")
    axis.set_xlim(max(0.0, accuracy.min() - 10), 100)
