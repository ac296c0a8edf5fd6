"""The JAX backend on an accelerator, where TensorFlow is not installed: checks and throughput.

A GPU machine often has JAX and its CUDA libraries but neither Keras nor
TensorFlow, and no package registry: bring keras and its pure-Python
dependencies as wheels (benchmarks/RESULTS.md gives the command used), put
this repository on `PYTHONPATH`, and run

    KERAS_BACKEND=jax python benchmarks/gpu.py [--sizes gpu|cpu|quick] [--rounds 5] [--parts checks,fit,mixing,fine_tune,compiled,crop]

Nothing here imports TensorFlow. The parts:

1. Checks: the parts of `tests/backend_job.py` that need no `tf.data`
   pipeline (`WITHOUT_TENSORFLOW`: unfreezing, SWA, EMA, one-cycle, the
   epoch schedules, BatchNorm statistics, the Distiller, MixingModel) train
   the same small model from the same weights on the default device and, in
   a second process, on the CPU (`JAX_PLATFORMS=cpu`), each with TensorFlow
   made unimportable (`tests/without_tensorflow.py`); every weight and log
   must agree (`check_equal`, rtol 2e-4). Both run float32 matrix products
   at "highest" precision, so that the GPU's TF32 does not enter.
2. Fit: `keras.applications.MobileNetV3Small` (`weights=None`) under
   `build_classifier`'s head, on arrays: images/s of a bare `fit` against
   the same `fit` with what `fine_tune` adds to it (`ProgressiveUnfreezing`
   with the base frozen for the first epoch, `CosineAnnealing` with
   warm-up, `SWA` averaging every later epoch; BatchNorm stays frozen, as
   `fine_tune` keeps it), with `EMA` at every step, and with `OneCycle`
   setting the rate and `beta_1` before every step.
3. Mixing: `MixingModel(classifier, MixUpOrCutMix(...))` on arrays, mixing
   on the device, against the same classifier fed batches mixed in numpy by
   a `keras.utils.PyDataset` (the `tf.data`-free input a JAX user writes).
4. fine_tune: `fine_tune` itself on `ArrayBatches` (the path arrays take
   without TensorFlow: `image_augmentation` and `MixUpOrCutMix` in the
   step, on the device; the base frozen for one epoch, then unfrozen at a
   tenth of the rate, cosine with warm-up, SWA from epoch 1) against a bare
   `fit` of the same model, layers (`MixingModel`) and batches. Its
   callbacks' epoch-begin work falls outside the timed epoch.
5. Compiled: `MixingModel(classifier, augmentation=image_augmentation())`
   as compiled (on JAX its step is, though Keras's rotation, zoom and
   translation layers say `supports_jit=False`) against the same with
   `jit_compile=False`, the step Keras's `"auto"` gives a model holding
   those layers; the seconds to the end of the first epoch too.
6. Crop: a small network with `RandomResizedCrop` in front, trained, against
   the same network with `keras.layers.Resizing` there (one bilinear resize
   of the whole image, the crop's floor).

The fits run `--rounds` + 2 epochs each, timed from the third (the first
two trace), one epoch of each in turn (`timing.turn_taking_fits`); mixing and crop run interleaved (`timing.interleaved_epochs`),
`--rounds` epochs each after an untimed one. Printed: median images/s and the ratio to the reference.
`--sizes cpu` runs them on sizes a 2-core CPU fits in minutes, `--sizes quick` on tiny ones (a smoke
test).

The fit, mixing, fine_tune, compiled and crop parts also run under `KERAS_BACKEND=torch` or `tensorflow`, for figures of
each backend on the same workload; the checks compare JAX's devices.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
# The checks run a second JAX process on the same GPU while this one holds it: JAX's default
# preallocation of 75 % of the GPU's memory in each would starve the second.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_finetune import fine_tune  # noqa: E402
from keras_finetune.array_batches import ArrayBatches  # noqa: E402
from keras_finetune.callbacks import EMA, SWA, CosineAnnealing, OneCycle, ProgressiveUnfreezing  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.layers import MixUpOrCutMix, RandomResizedCrop, image_augmentation  # noqa: E402
from keras_finetune.models import MixingModel  # noqa: E402

from timing import interleaved_epochs, turn_taking_fits  # noqa: E402

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
import backend_job  # noqa: E402

CLASSES = 10
# --sizes: (side, images, batch, crop's input side, crop's output side)
SIZES = {"gpu": (224, 2048, 128, 256, 224), "cpu": (96, 512, 32, 112, 96), "quick": (32, 64, 16, 40, 32)}


def device() -> str:
    name = keras.backend.backend()
    if name == "jax":
        import jax

        first = jax.devices()[0]
        where = f"{first.device_kind} ({first.platform}, {len(jax.devices())} device(s))"
        version = jax.__version__
    elif name == "torch":
        import torch

        where = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        version = torch.__version__
    else:
        import tensorflow as tf

        where = ", ".join(d.name for d in tf.config.list_logical_devices())
        version = tf.__version__
    return f"{where}, {name} {version}, keras {keras.__version__}"


def checks() -> None:
    """backend_job's pipeline-free parts on the default device and on the CPU, compared."""
    parts = list(backend_job.WITHOUT_TENSORFLOW)
    with tempfile.TemporaryDirectory() as directory:
        start = Path(directory) / "start.npz"
        backend_job.write_start_weights(start)
        results, seconds = {}, {}
        for label, extra in (("default device", {}), ("cpu", {"JAX_PLATFORMS": "cpu"})):
            out = Path(directory) / label.replace(" ", "_")
            out.mkdir()
            environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_DEFAULT_MATMUL_PRECISION": "highest", **extra}
            began = time.perf_counter()
            # Through without_tensorflow.py: the parts must not need it, wherever this runs.
            command = [sys.executable, str(TESTS / "without_tensorflow.py"), str(TESTS / "backend_job.py"), ",".join(parts), str(start), str(out)]
            subprocess.run(command, env=environment, check=True)
            seconds[label] = time.perf_counter() - began
            results[label] = {}
            for part in parts:
                with np.load(out / f"{part}.npz") as stored:
                    results[label][part] = {key: stored[key] for key in stored.files}
        failed = []
        for part in parts:
            try:
                backend_job.check_equal(part, str(start), {label: results[label][part] for label in results}, reference="cpu")
            except AssertionError as error:
                failed.append(part)
                print(f"  {part}: differs\n{error}")
        print(f"  {len(parts) - len(failed)} of {len(parts)} parts equal on the default device and the CPU "
              f"({', '.join(parts)}); {seconds['default device']:.0f} s and {seconds['cpu']:.0f} s")
        if failed:
            raise SystemExit(f"parts that differ: {failed}")


def images(count: int, size: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (count, size, size, 3)).astype("float32"), rng.integers(0, CLASSES, count).astype("int32")


def mobilenet(size: int) -> tuple:
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV3Small(input_shape=(size, size, 3), include_top=False, weights=None)
    return build_classifier(base, CLASSES), base


def print_rates(seconds: dict, count: int, reference: str) -> None:
    """Images/s of each entry's median epoch of `count` images, and its ratio to `reference`'s."""
    rates = {name: count / median for name, median in seconds.items()}
    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"  {name:{width}s} {rate:9.1f} img/s  ratio to {reference} {rate / rates[reference]:.3f}")


def fit_parts(size: int, count: int, batch: int, rounds: int) -> None:
    """A bare fit, the same fit with fine_tune's callbacks, with EMA every step and with OneCycle, taking turns."""
    x, y = images(count, size)
    epochs = rounds + 2

    def fit_with(callbacks_for):
        """A fit of a fresh classifier with `callbacks_for(base)`, for `turn_taking_fits`."""
        classifier, base = mobilenet(size)
        classifier.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        extra = callbacks_for(base)

        def fit(callbacks, epochs):
            # `extra` between the turn's callbacks: their epoch-end work is timed with the epoch.
            callbacks = [callbacks[0], *extra, *callbacks[1:]]
            classifier.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=callbacks)

        return fit

    def recipe(base) -> list:
        """fine_tune's parts: frozen, then unfrozen at a tenth of the rate, cosine with warm-up, SWA."""
        return [
            ProgressiveUnfreezing(base, {0: 0, 1: "all"}, {0: 1e-3, 1: 1e-4}),
            # SWA from the unfrozen epoch on: its update compiles in an epoch left out of the timing, as the unfreezing's trace.
            CosineAnnealing(t_max=epochs, warmup_epochs=1), SWA(start_epoch=1),
        ]

    fits = {
        "bare fit": fit_with(lambda base: []),
        "fit with fine_tune's callbacks": fit_with(recipe),
        "fit with EMA every step": fit_with(lambda base: [EMA(0.999)]),
        "fit with OneCycle": fit_with(lambda base: [OneCycle(1e-3)]),
    }
    # Left out: the first two epochs (the first traces; the second unfreezes, traces again and compiles SWA's update).
    seconds = {name: timed[2:] for name, timed in turn_taking_fits(fits, epochs).items()}
    print_rates({name: float(np.median(timed)) for name, timed in seconds.items()}, count, "bare fit")


class NumpyMixed(keras.utils.PyDataset):
    """Batches mixed in numpy, timm's batch mode: MixUp or CutMix per batch, one λ per sample."""

    def __init__(self, x, y, batch: int, seed: int = 0):
        super().__init__()
        self.x, self.y, self.batch = x, np.eye(CLASSES, dtype="float32")[y], batch
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.x) // self.batch

    def __getitem__(self, index):
        x = self.x[index * self.batch:(index + 1) * self.batch]
        y = self.y[index * self.batch:(index + 1) * self.batch]
        partners = self.rng.permutation(len(x))
        if self.rng.random() < 0.5:  # MixUp
            lam = self.rng.beta(0.2, 0.2, len(x)).astype("float32")
            return (lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partners],
                    lam[:, None] * y + (1 - lam[:, None]) * y[partners])
        height, width = x.shape[1:3]  # CutMix
        lam = self.rng.beta(1.0, 1.0, len(x))
        cut_h, cut_w = (np.sqrt(1 - lam) * height).astype(int), (np.sqrt(1 - lam) * width).astype(int)
        centre_y, centre_x = self.rng.integers(0, height, len(x)), self.rng.integers(0, width, len(x))
        y1, x1 = np.clip(centre_y - cut_h // 2, 0, height), np.clip(centre_x - cut_w // 2, 0, width)
        y2, x2 = np.clip(centre_y - cut_h // 2 + cut_h, 0, height), np.clip(centre_x - cut_w // 2 + cut_w, 0, width)
        rows, cols = np.arange(height), np.arange(width)
        inside = ((rows[None, :, None] >= y1[:, None, None]) & (rows[None, :, None] < y2[:, None, None])
                  & (cols[None, None, :] >= x1[:, None, None]) & (cols[None, None, :] < x2[:, None, None]))
        kept = (1 - inside.mean(axis=(1, 2))).astype("float32")
        return np.where(inside[..., None], x[partners], x), kept[:, None] * y + (1 - kept[:, None]) * y[partners]


def mixing(size: int, count: int, batch: int, rounds: int) -> None:
    """MixingModel mixing on the device against batches mixed in numpy."""
    x, y = images(count, size)
    on_device, _ = mobilenet(size)
    trainer = MixingModel(on_device, MixUpOrCutMix(num_classes=CLASSES, seed=0))
    trainer.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    in_numpy, _ = mobilenet(size)
    in_numpy.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    batches = NumpyMixed(x, y, batch)
    seconds = interleaved_epochs({
        "batches mixed in numpy": lambda callbacks: in_numpy.fit(batches, verbose=0, callbacks=callbacks),
        "MixingModel, mixed on device": lambda callbacks: trainer.fit(x, y, batch_size=batch, verbose=0, callbacks=callbacks),
    }, rounds)
    print_rates(seconds, len(batches) * batch, "batches mixed in numpy")


def recipe(size: int, count: int, batch: int, rounds: int) -> None:
    """fine_tune on ArrayBatches against a bare fit of MixingModel with the same layers on the same batches, taking turns."""
    x, y = images(count, size)
    epochs = rounds + 2

    def layers():
        return image_augmentation(seed=0), MixUpOrCutMix(num_classes=CLASSES, seed=0)

    def bare(callbacks, epochs):
        classifier, _ = mobilenet(size)
        augment, mix = layers()
        trainer = MixingModel(classifier, mix, augmentation=augment)
        trainer.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
        trainer.fit(ArrayBatches(x, y, batch, CLASSES, seed=0), epochs=epochs, verbose=0, callbacks=callbacks)

    def recipe(callbacks, epochs):
        classifier, base = mobilenet(size)
        augment, mix = layers()
        fine_tune(classifier, ArrayBatches(x, y, batch, CLASSES, seed=0), base_model=base, epochs=epochs,
                  frozen_epochs=1, swa=1, augmentation=augment, mixing=mix, seed=0, callbacks=callbacks, verbose=0)

    # Left out: the first two epochs (the first traces; the second unfreezes, traces again and compiles SWA's update).
    seconds = {name: timed[2:] for name, timed in turn_taking_fits({"bare fit": bare, "fine_tune": recipe}, epochs).items()}
    print_rates({name: float(np.median(timed)) for name, timed in seconds.items()}, count, "bare fit")


def compiled(size: int, count: int, batch: int, rounds: int) -> None:
    """MixingModel with image_augmentation, its step compiled, against the same step left uncompiled."""
    x, y = images(count, size)

    def trainer(jit_compile):
        classifier, _ = mobilenet(size)
        model = MixingModel(classifier, augmentation=image_augmentation(seed=0))
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", jit_compile=jit_compile)
        return lambda callbacks: model.fit(x, y, batch_size=batch, verbose=0, callbacks=callbacks)

    fits = {"uncompiled (Keras's auto)": trainer(False), "MixingModel as compiled": trainer("auto")}
    for name, fit in fits.items():  # what interleaved_epochs leaves out, timed
        began = time.perf_counter()
        fit([])
        print(f"  {name}: first epoch, tracing included, {time.perf_counter() - began:.1f} s")
    print_rates(interleaved_epochs(fits, rounds), count, "uncompiled (Keras's auto)")


def crop(size: int, out: int, count: int, batch: int, rounds: int) -> None:
    """A small network behind RandomResizedCrop against the same behind a plain resize."""
    x, y = images(count, size)

    def network(front):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((size, size, 3)), front, keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(CLASSES),
        ])
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return lambda callbacks: model.fit(x, y, batch_size=batch, verbose=0, callbacks=callbacks)

    seconds = interleaved_epochs({
        "Resizing (floor)": network(keras.layers.Resizing(out, out)),
        "RandomResizedCrop": network(RandomResizedCrop(out, out, seed=0)),
    }, rounds)
    print_rates(seconds, count, "Resizing (floor)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="gpu",
                        help="images, their side, batch and crop: gpu (the default), cpu (fits a 2-core CPU), quick (a smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default="checks,fit,mixing,fine_tune,compiled,crop",
                        help="comma-separated: checks, fit, mixing, fine_tune, compiled, crop")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - {"checks", "fit", "mixing", "fine_tune", "compiled", "crop"})
    if unknown:
        raise SystemExit(f"--parts takes checks, fit, mixing, fine_tune, compiled and crop. Received: {unknown}")
    if "checks" in parts and keras.backend.backend() != "jax":
        raise SystemExit(f"The checks compare JAX's default device with its CPU. Received: KERAS_BACKEND={keras.backend.backend()}")
    size, count, batch, crop_size, crop_out = SIZES[args.sizes]
    began = time.perf_counter()

    def section(title: str) -> None:
        print(f"{title} [{time.perf_counter() - began:.0f} s in]")

    print(device())
    if "checks" in parts:
        section("Checks: the pipeline-free parts, default device against CPU")
        checks()
    if "fit" in parts:
        section(f"Fit: MobileNetV3Small, {count} images {size}x{size}x3, batches of {batch}, {args.rounds} rounds")
        fit_parts(size, count, batch, args.rounds)
    if "mixing" in parts:
        section("Mixing: the same model and data, MixUpOrCutMix (MixUp α 0.2 or CutMix α 1, per batch)")
        mixing(size, count, batch, args.rounds)
    if "fine_tune" in parts:
        section("fine_tune: the same model and data, augmentation and MixUpOrCutMix in the step, against a bare fit of them")
        recipe(size, count, batch, args.rounds)
    if "compiled" in parts:
        section("Compiled: MixingModel with image_augmentation, its step compiled or not")
        compiled(size, count, batch, args.rounds)
    if "crop" in parts:
        section(f"Crop: {count} images {crop_size}x{crop_size}x3 to {crop_out}x{crop_out}, a conv and a dense layer behind")
        crop(crop_size, crop_out, count, batch, args.rounds)
    section("Done")
    print("TensorFlow imported:", "tensorflow" in sys.modules)


if __name__ == "__main__":
    main()
