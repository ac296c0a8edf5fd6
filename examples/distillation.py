"""Knowledge distillation (Hinton et al., arXiv 1503.02531): a small student learns from a fine-tuned teacher.

Loss: alpha * cross-entropy on the labels + (1 - alpha) * T² · KL(teacher ‖ student)
at temperature T, the T² keeping the soft term's gradients at the labels' scale.

    python examples/distillation.py      # about 15 seconds on a CPU
"""

import keras
from synthetic import accuracy, pretrained_base, synthetic_images

from keras_finetune.heads import build_classifier
from keras_finetune.models import Distiller


def student_network():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(4),
        keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax"),
    ], name="student")


def main():
    x, y = synthetic_images(64, seed=1)
    x_test, y_test = synthetic_images(512, seed=2)
    teacher = build_classifier(pretrained_base(epochs=5), 4, pooling="flatten")
    teacher.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    teacher.fit(x, y, epochs=5, batch_size=16, verbose=0)

    distiller = Distiller(student=student_network(), teacher=teacher)
    distiller.compile(
        keras.optimizers.Adam(1e-2),
        metrics=["accuracy"],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(),
        alpha=0.1,
        temperature=3.0,
    )
    history = distiller.fit(x, y, epochs=20, batch_size=16, verbose=0)
    student = distiller.student
    print(f"distillation loss {history.history['distillation_loss'][0]:.3f} -> {history.history['distillation_loss'][-1]:.3f}")
    print(f"teacher: {teacher.count_params():,} weights, held-out accuracy {accuracy(teacher, x_test, y_test):.3f}")
    print(f"student: {student.count_params():,} weights, held-out accuracy {accuracy(student, x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
