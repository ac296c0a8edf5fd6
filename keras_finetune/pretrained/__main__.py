"""`python -m keras_finetune.pretrained --rebuild`: train the shipped `glyphs` base again.

Each epoch draws fresh glyphs (`keras_finetune.glyphs.render`, seeded by the
epoch), so the network never sees an image twice; the held-out images come
from a seed no epoch uses. Writes `glyphs.weights.h5` (the source
classifier's weights, head included) and `glyphs.json` (what it was trained
on and how, its held-out accuracy, the file's SHA-256) into `--out`, by
default the package's own folder. Needs matplotlib for the fonts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import keras
import numpy as np

from keras_finetune import glyphs
from keras_finetune.callbacks.backup import write_json
from keras_finetune.pretrained import _FOLDER, build_base, sha256, source_classifier

SETTINGS = {
    "epochs": 24,
    "images_per_epoch": 60_000,
    "batch_size": 128,
    "learning_rate": 2e-3,  # Adam, cosine decay to 0 over every step
    "dropout": 0.3,
    "seed": 0,
    "held_out_images": 5_000,
    "held_out_seed": 1_000_000,  # epochs draw from seeds seed * 1000 + epoch
}


def held_out_accuracy(model: keras.Model, settings: dict = SETTINGS) -> float:
    """The source classifier's accuracy on the recorded held-out glyphs."""
    images, labels = glyphs.render(glyphs.SOURCE_CHARACTERS, settings["held_out_images"], settings["held_out_seed"])
    predicted = np.argmax(model.predict(images, batch_size=1000, verbose=0), axis=-1)
    return float(np.mean(predicted == labels))


def rebuild(out: str = _FOLDER, settings: dict = SETTINGS, print_fn=print) -> dict:
    """Pretrain the `glyphs` base on the source task and write its weights and record into `out`."""
    start = time.perf_counter()
    keras.utils.set_random_seed(settings["seed"])
    model = source_classifier(build_base("glyphs"), len(glyphs.SOURCE_CHARACTERS), settings["dropout"])
    steps = settings["epochs"] * (settings["images_per_epoch"] // settings["batch_size"])
    model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(settings["learning_rate"], steps)),
        "sparse_categorical_crossentropy", metrics=["accuracy"],
    )
    for epoch in range(settings["epochs"]):
        images, labels = glyphs.render(
            glyphs.SOURCE_CHARACTERS, settings["images_per_epoch"], settings["seed"] * 1000 + epoch
        )
        logs = model.fit(images, labels, batch_size=settings["batch_size"], epochs=1, shuffle=False, verbose=0)
        print_fn(f"epoch {epoch + 1}/{settings['epochs']}: training accuracy {logs.history['accuracy'][0]:.4f}")
    accuracy = held_out_accuracy(model, settings)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "glyphs.weights.h5")
    shipped = source_classifier(build_base("glyphs"), len(glyphs.SOURCE_CHARACTERS), settings["dropout"])
    shipped.set_weights(model.get_weights())
    shipped.save_weights(path)  # uncompiled: the optimizer's moments would triple the file
    record = {
        "name": "glyphs",
        "source_task": (
            f"{len(glyphs.SOURCE_CHARACTERS)} printed glyphs from {len(glyphs.FONTS)} matplotlib fonts, randomly "
            "distorted and counted down to 8x8 as scikit-learn's digits were (keras_finetune.glyphs.render)"
        ),
        "characters": glyphs.SOURCE_CHARACTERS,
        "fonts": list(glyphs.FONTS),
        "input_shape": [8, 8, 1],
        "output_shape": list(model.layers[0].output_shape[1:]),
        "base_weights": model.layers[0].count_params(),
        "training": settings,
        "held_out_accuracy": round(accuracy, 4),
        "sha256": sha256(path),
        "seconds": round(time.perf_counter() - start),
        "built_with": {
            "python": platform.python_version(), "keras": keras.__version__, "backend": keras.backend.backend(),
            "numpy": np.__version__, "cpus": os.cpu_count(),
        },
    }
    write_json(os.path.join(out, "glyphs.json"), record)
    print_fn(f"held-out accuracy {accuracy:.4f} on {settings['held_out_images']} glyphs; wrote {path} in {record['seconds']} s")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_finetune.pretrained", description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="train the glyphs base again from its fixed seed")
    parser.add_argument("--out", default=_FOLDER, help="folder for glyphs.weights.h5 and glyphs.json (default: the package's)")
    args = parser.parse_args(argv)
    if not args.rebuild:
        parser.print_help()
        return 2
    rebuild(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
