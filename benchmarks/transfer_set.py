"""The demo's distilled student: what its transfer images are worth, against the same images with their labels.

On the demo task (scikit-learn's handwritten digits, 3 labelled images per
class), for each seed: the `fine_tune` teacher (the demo's full recipe); the
7x smaller student from scratch (the demo's row); the student distilled
without the rendered digits; the demo's distilled student, whose batches
also hold `demo.TRANSFER_PER_BATCH` printed digits rendered as the base's
source glyphs; and, as the reference for "is it the distillation or the
extra images", the same student trained on the same training images and
renders with their true labels (cross-entropy, label smoothing 0.1, the
training images mixed as for the others). Every student takes the demo's
steps (`STUDENT_EPOCHS_FACTOR` times the epochs, batches of
`STUDENT_BATCH_SIZE`). Accuracy on the held-out images, the paired
difference to the demo's distilled student, and the share of the gap from
the student from scratch to its teacher that each closes.

    python benchmarks/transfer_set.py [--seeds 0,1,2,10,...,19]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_finetune import demo, glyphs  # noqa: E402
from keras_finetune.heads import build_classifier  # noqa: E402
from keras_finetune.layers import MixUpOrCutMix, image_augmentation  # noqa: E402
from keras_finetune.pretrained import load_base  # noqa: E402

SEEDS = "0,1,2,10,11,12,13,14,15,16,17,18,19"
TEACHER, SCRATCH, PLAIN, DEMO, LABELLED = (
    "fine_tune (the teacher)",
    "student from scratch",
    "distilled, no renders",
    "distilled with renders (demo)",
    "renders with true labels, no teacher",
)


def labelled_student(images, labels, seed: int, epochs: int, renders, render_labels) -> keras.Model:
    """The reference: the student trained on the training images (shifted, mixed) and the renders (shifted) with their labels."""
    keras.utils.set_random_seed(seed)
    student = build_classifier(demo.student_base(seed + 2000), 10, **demo.HEAD)
    student.compile(
        keras.optimizers.Adam(demo.BASE_RATE), keras.losses.CategoricalCrossentropy(label_smoothing=demo.LABEL_SMOOTHING)
    )
    augment = image_augmentation(**{**demo.AUGMENTATION, "seed": seed})
    mix = MixUpOrCutMix(**{**demo.MIXING, "num_classes": 10, "seed": seed})
    own = demo._shuffled(images, labels, seed, demo.STUDENT_BATCH_SIZE)
    own = own.map(lambda x, y: mix(augment(x, training=True), tf.one_hot(y, 10)))
    rendered = tf.data.Dataset.from_tensor_slices((renders, render_labels)).shuffle(len(renders), seed=seed).repeat()
    rendered = rendered.batch(demo.TRANSFER_PER_BATCH).map(lambda x, y: (augment(x, training=True), tf.one_hot(y, 10)))
    data = tf.data.Dataset.zip(own, rendered).map(lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)))
    student.fit(data, epochs=epochs, steps_per_epoch=demo._steps(images, demo.STUDENT_BATCH_SIZE), verbose=0)
    return student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=SEEDS)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    epochs, student_epochs = args.epochs, demo.STUDENT_EPOCHS_FACTOR * args.epochs
    pretrained = load_base("glyphs")
    accuracy = {row: [] for row in (TEACHER, SCRATCH, PLAIN, DEMO, LABELLED)}
    for seed in seeds:
        data, held_out = demo.target_task("digits", 3, seed)
        renders = demo.transfer_images("digits", seed)
        same, render_labels = glyphs.render("0123456789", demo.TRANSFER_IMAGES, demo.TRANSFER_SEED + seed)
        assert np.array_equal(same, renders)  # the labels of the demo's own renders
        teacher = demo.fine_tune_recipe(demo._copy(pretrained), *data, seed, epochs).model
        models = {
            TEACHER: teacher,
            SCRATCH: demo.train_classifier(
                demo.student_base(seed + 2000), *data, seed, student_epochs, batch_size=demo.STUDENT_BATCH_SIZE
            ),
            PLAIN: demo.distil_student(demo.student_base(seed + 2000), teacher, *data, seed, student_epochs),
            DEMO: demo.distil_student(demo.student_base(seed + 2000), teacher, *data, seed, student_epochs, renders),
            LABELLED: labelled_student(*data, seed, student_epochs, renders, render_labels),
        }
        for row, model in models.items():
            accuracy[row].append(100 * demo._accuracy(model, *held_out))
        print(f"seed {seed:3d}: " + "  ".join(f"{a[-1]:5.1f}" for a in accuracy.values()), flush=True)
    accuracy = {row: np.array(values) for row, values in accuracy.items()}
    gap = (accuracy[TEACHER] - accuracy[SCRATCH]).mean()
    print(f"\n3-shot digits, seeds {args.seeds}; held-out accuracy, %")
    print(f"{'':38}{'accuracy':>13}  {'vs demo':>13}  closes")
    for row, values in accuracy.items():
        difference = values - accuracy[DEMO]
        versus = "" if row == DEMO else f"{difference.mean():+6.1f} ± {difference.std():4.1f}"
        closes = "" if row in (TEACHER, SCRATCH) else f"{(values - accuracy[SCRATCH]).mean() / gap:6.0%}"
        print(f"{row:38}{values.mean():6.1f} ± {values.std():4.1f}  {versus:>13}  {closes}")


if __name__ == "__main__":
    main()
