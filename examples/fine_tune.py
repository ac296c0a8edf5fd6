"""`fine_tune`: the whole playbook in one call, and the report of its run.

Dropout head, the base frozen for a quarter of the epochs then unfrozen at a
tenth of the rate, cosine schedule with a warm-up epoch, augmentation and
MixUp/CutMix in the pipeline, label smoothing, and SWA over the last quarter.

    python examples/fine_tune.py [report.png]      # about 10 seconds on a CPU
"""

import sys

from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune import fine_tune
from keras_finetune.report import plot_history


def main():
    history = fine_tune(
        pretrained_base(),
        synthetic_images(256, seed=1),
        validation_data=synthetic_images(128, seed=3),
        num_classes=4,
        head={"pooling": "flatten"},         # the class is where the square is
        epochs=8,
        # grey images whose class is a position: shifts only, no flips or colour
        augmentation={"flip": None, "rotation": None, "zoom": None, "translation": 0.05,
                      "brightness": None, "contrast": None},
        mixing={"prob": 0.5},
        seed=0,
        verbose=0,
    )
    for key in ("phase", "trainable_params", "learning_rate", "swa_n"):
        print(f"{key} per epoch {[round(v, 6) for v in history.history[key]]}")
    print(f"held-out accuracy {accuracy(history.model, *synthetic_images(256, seed=2)):.3f}")
    if len(sys.argv) > 1:
        print(f"report: {plot_history(history, sys.argv[1])}")


if __name__ == "__main__":
    main()
