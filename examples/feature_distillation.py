"""Feature (hint) distillation: a `Distiller` subclass in a few lines.

FitNets (Romero et al., arXiv 1412.6550): besides the teacher's softened
outputs, the student learns to reproduce an intermediate teacher feature map
through a small trainable projection. `Distiller` leaves three methods to
override: `teacher_forward`, `student_forward` and `distillation_loss`.

Run it as it is (synthetic data, about 20 seconds on a CPU):

    python examples/feature_distillation.py
"""

import keras
from keras import ops
from synthetic import synthetic_images

from keras_finetune.models import Distiller


@keras.saving.register_keras_serializable(package="keras_finetune_examples")
class HintDistiller(Distiller):
    """Distiller plus `beta` times the mean squared error between a projected
    student feature map (`student_layer`) and a teacher one (`teacher_layer`)."""

    def __init__(self, student, teacher, student_layer, teacher_layer, beta=1.0, **kwargs):
        super().__init__(student, teacher, **kwargs)
        self.student_layer, self.teacher_layer, self.beta = student_layer, teacher_layer, beta
        student_features = student.get_layer(student_layer).output
        teacher_features = teacher.get_layer(teacher_layer).output
        # Both taps share the models' layers: one forward pass gives outputs and features.
        self.student_taps = keras.Model(student.inputs, [student.outputs[0], student_features])
        self.teacher_taps = keras.Model(teacher.inputs, [teacher.outputs[0], teacher_features])
        self.projection = keras.layers.Dense(teacher_features.shape[-1], name="hint_projection")
        self.projection.build(student_features.shape)  # before fit traces the train step

    def teacher_forward(self, x):
        return self.teacher_taps(x, training=False)

    def student_forward(self, x, training=False):
        outputs, features = self.student_taps(x, training=training)
        return outputs, [outputs, self.projection(features)]

    def distillation_loss(self, teacher_outputs, student_outputs):
        soft = super().distillation_loss(teacher_outputs[0], student_outputs[0])
        difference = ops.cast(student_outputs[1], "float32") - ops.cast(teacher_outputs[1], "float32")
        hint = ops.mean(ops.square(difference), axis=tuple(range(1, len(difference.shape))))
        return soft + self.beta * hint

    def get_config(self):
        return {
            **super().get_config(),
            "student_layer": self.student_layer,
            "teacher_layer": self.teacher_layer,
            "beta": self.beta,
        }


def convnet(filters, name):
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(filters, 3, activation="relu", padding="same", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(filters, 3, activation="relu", padding="same", name="conv2"),
            keras.layers.MaxPooling2D(name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(4 * filters, activation="relu", name="features"),
            keras.layers.Dense(4, name="logits"),
        ],
        name=name,
    )


def main():
    keras.utils.set_random_seed(0)
    x_train, y_train = synthetic_images(512, seed=0)
    x_test, y_test = synthetic_images(256, seed=1)
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    teacher = convnet(32, "teacher")
    teacher.compile("adam", sparse, metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)

    distiller = HintDistiller(convnet(8, "student"), teacher, "features", "features", beta=1.0)
    distiller.compile(
        keras.optimizers.Adam(3e-3), metrics=["accuracy"], student_loss_fn=sparse, temperature=4.0
    )
    history = distiller.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    teacher_accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
    student = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print(f"teacher accuracy {teacher_accuracy:.3f}")
    print(f"distillation loss (soft + hint) {history.history['distillation_loss'][0]:.3f} "
          f"-> {history.history['distillation_loss'][-1]:.3f}")
    print(f"student accuracy {student['accuracy']:.3f}")


if __name__ == "__main__":
    main()
