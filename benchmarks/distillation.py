"""Distiller: step time against Keras's own, and cached teacher outputs.

Part 1, step time: `keras_finetune.models.Distiller` against
`keras.distillation.Distiller` given a correct `KLDivergence` instance
(`LogitsDistillation(temperature, loss=keras.losses.KLDivergence())`, which
applies the softmax and T²), the same teacher and student, the same data,
epochs interleaved; median seconds per epoch (the first, tracing epoch
excluded). The losses both log on one batch are printed side by side, with
the value Keras's default (`loss="kl_divergence"` as a string) gives.

Part 2, cached teacher outputs: median epoch time with a live teacher
against `cache_teacher_outputs`, for a teacher that costs at least 4x the
student's training step (measured and printed).

What distillation is worth on the demo's task is a row of the demo's ablation
(`benchmarks/demo.py`).

    python benchmarks/distillation.py [--repeats 5]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import interleaved_epochs, print_ratios  # noqa: E402

from keras_finetune.models import Distiller  # noqa: E402

TEMPERATURE, ALPHA = 3.0, 0.1
SPARSE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def convnet(filters, seed, name):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((32, 32, 3))]
    for width in filters:
        layers += [
            keras.layers.Conv2D(width, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
        ]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers, name=name)


def synthetic(count=2048, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, 32, 32, 3)).astype("float32"), rng.integers(0, 10, count)


def ours(student, teacher):
    distiller = Distiller(student, teacher)
    distiller.compile(keras.optimizers.Adam(1e-3), student_loss_fn=SPARSE, alpha=ALPHA, temperature=TEMPERATURE)
    return distiller


def keras_own(student, teacher, loss):
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(temperature=TEMPERATURE, loss=loss),
        student_loss_weight=ALPHA,
    )
    distiller.compile(keras.optimizers.Adam(1e-3), loss=SPARSE)
    return distiller


def step_time(repeats: int) -> None:
    x, y = synthetic()
    teacher = convnet((64, 128, 128), 1, "teacher")
    students = {"keras_finetune": convnet((16, 32, 32), 2, "student_a"),
                "keras.distillation": convnet((16, 32, 32), 2, "student_b")}
    models = {
        "keras_finetune": ours(students["keras_finetune"], teacher),
        "keras.distillation": keras_own(students["keras.distillation"], teacher, keras.losses.KLDivergence()),
    }
    batch = x[:64], y[:64]
    wrong = keras_own(convnet((16, 32, 32), 2, "student_c"), teacher, "kl_divergence")
    print(f"Losses on one batch (T={TEMPERATURE}, alpha={ALPHA}), before training:")
    logs = models["keras_finetune"].test_on_batch(*batch, return_dict=True)
    print(f"  keras_finetune.models.Distiller     loss {logs['loss']:.4f}, distillation_loss {logs['distillation_loss']:.4f}")
    for name, model in (("keras.distillation + KLDivergence()", models["keras.distillation"]),
                        ('keras.distillation + "kl_divergence"', wrong)):
        logs = model.test_on_batch(*batch, return_dict=True)
        print(f"  {name:35s} loss {logs['total_loss']:.4f}, distillation_loss {logs['distillation_loss']:.4f}")

    seconds = interleaved_epochs(
        {
            name: lambda callbacks, model=model: model.fit(
                x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks
            )
            for name, model in models.items()
        },
        repeats,
    )
    print(f"\nStep time, {len(x) // 64} steps of 64 images (32x32x3) per epoch, median of {repeats} epochs:")
    print_ratios(seconds, "keras.distillation")


def cached_epochs(repeats: int) -> None:
    x, y = synthetic()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    teacher = convnet((192, 384, 384), 1, "teacher")
    student = convnet((16, 32, 32), 2, "student")
    distiller = ours(student, teacher)

    forward = tf.function(lambda images: teacher(images, training=False))
    train_step = tf.function(distiller.train_step)
    cached_batch = next(iter(distiller.cache_teacher_outputs(dataset.take(1))))

    def per_call(function, argument, calls=10):
        function(argument)
        start = time.perf_counter()
        for _ in range(calls):
            function(argument)
        return (time.perf_counter() - start) / calls

    teacher_cost = per_call(forward, x[:64])
    student_cost = per_call(train_step, cached_batch)
    print(f"\nCost per batch of 64: teacher forward {1000 * teacher_cost:.1f} ms, student training "
          f"step {1000 * student_cost:.1f} ms: the teacher costs {teacher_cost / student_cost:.1f}x the student")

    start = time.perf_counter()
    cached = distiller.cache_teacher_outputs(dataset)
    caching = time.perf_counter() - start
    seconds = interleaved_epochs(
        {
            name: lambda callbacks, data=data: distiller.fit(data, epochs=1, verbose=0, callbacks=callbacks)
            for name, data in (("live teacher", dataset), ("cached outputs", cached))
        },
        repeats,
    )
    print(f"Epoch time, median of {repeats} (caching itself took {caching:.2f} s, once):")
    print_ratios(seconds, "live teacher")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    step_time(args.repeats)
    cached_epochs(args.repeats)


if __name__ == "__main__":
    main()
