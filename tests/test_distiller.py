import importlib.util
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import changed, make_base, mixed_float16, snapshot

from keras_finetune.callbacks import ProgressiveUnfreezing
from keras_finetune.models import Distiller

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SPARSE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def dense_net(hidden=None, activation=None, seed=0, name=None, batchnorm=True):
    """A small dense classifier over 6 features and 3 classes."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="relu"))
    if hidden and batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(3, activation=activation))
    return keras.Sequential(layers, name=name)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    return x, (np.arange(32) % 3).astype("int32")


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def kl_per_sample(teacher_logits, student_logits, temperature):
    p = softmax(teacher_logits / temperature)
    q = softmax(student_logits / temperature)
    return temperature**2 * np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def cross_entropy(labels, logits):
    return -np.log(softmax(logits)[np.arange(len(labels)), labels])


def distiller_for(student, teacher, **compile_kwargs):
    distiller = Distiller(student=student, teacher=teacher)
    compile_kwargs.setdefault("optimizer", keras.optimizers.SGD(0.1))
    compile_kwargs.setdefault("student_loss_fn", SPARSE)
    distiller.compile(**compile_kwargs)
    return distiller


def logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False)).astype("float64")


# The loss formula.


@pytest.mark.parametrize("distillation_loss_fn", [None, keras.losses.KLDivergence()])
@pytest.mark.parametrize("alpha, temperature", [(0.1, 3.0), (0.5, 1.0), (0.0, 10.0)])
def test_logged_losses_equal_the_formula(data, alpha, temperature, distillation_loss_fn):
    x, y = data
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    distiller = distiller_for(
        student, teacher, alpha=alpha, temperature=temperature,
        distillation_loss_fn=distillation_loss_fn,
    )
    logs = distiller.test_on_batch(x, y, return_dict=True)

    student_loss = cross_entropy(y, logits(student, x)).mean()
    distillation = kl_per_sample(logits(teacher, x), logits(student, x), temperature).mean()
    np.testing.assert_allclose(logs["student_loss"], student_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], distillation, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        logs["loss"], alpha * student_loss + (1 - alpha) * distillation, rtol=1e-4, atol=1e-6
    )


def test_one_sgd_step_follows_the_gradient_by_hand(data):
    """Linear student s = xW + b: dL/ds = [α(softmax(s) - onehot) + (1-α)T(q_s - q_t)] / B."""
    x, y = data
    alpha, temperature, rate = 0.3, 4.0, 0.5
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    kernel, bias = (w.astype("float64") for w in student.get_weights())
    s, t = logits(student, x), logits(teacher, x)
    grad_s = (
        alpha * (softmax(s) - np.eye(3)[y])
        + (1 - alpha) * temperature * (softmax(s / temperature) - softmax(t / temperature))
    ) / len(x)

    distiller = distiller_for(
        student, teacher, optimizer=keras.optimizers.SGD(rate), alpha=alpha, temperature=temperature
    )
    distiller.train_on_batch(x, y)

    np.testing.assert_allclose(student.get_weights()[0], kernel - rate * x.T @ grad_s, atol=1e-6)
    np.testing.assert_allclose(student.get_weights()[1], bias - rate * grad_s.sum(0), atol=1e-6)


def test_models_ending_in_softmax_give_the_logit_models_losses(data):
    x, y = data
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    soft_teacher = dense_net(8, activation="softmax", seed=1)
    soft_student = dense_net(activation="softmax", seed=2)
    soft_teacher.set_weights(teacher.get_weights())
    soft_student.set_weights(student.get_weights())

    expected = distiller_for(student, teacher).test_on_batch(x, y, return_dict=True)
    got = distiller_for(
        soft_student, soft_teacher,
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
    ).test_on_batch(x, y, return_dict=True)
    for name in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)


def test_sample_weight_weights_both_terms(data):
    x, y = data
    weights = np.linspace(0.0, 2.0, len(x)).astype("float32")
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    distiller = distiller_for(student, teacher, alpha=0.4, temperature=2.0)
    logs = distiller.test_on_batch(x, y, sample_weight=weights, return_dict=True)

    student_loss = np.mean(weights * cross_entropy(y, logits(student, x)))
    distillation = np.mean(weights * kl_per_sample(logits(teacher, x), logits(student, x), 2.0))
    np.testing.assert_allclose(logs["student_loss"], student_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], distillation, rtol=1e-5)


def test_soft_labels_from_mixing(data):
    x, y = data
    rng = np.random.default_rng(1)
    soft = rng.dirichlet(np.ones(3), size=len(x)).astype("float32")
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    distiller = distiller_for(
        student, teacher, student_loss_fn=keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    logs = distiller.test_on_batch(x, soft, return_dict=True)
    expected = -np.sum(soft * np.log(softmax(logits(student, x))), axis=-1).mean()
    np.testing.assert_allclose(logs["student_loss"], expected, rtol=1e-5)


def test_metrics_see_true_labels_and_the_student(data):
    x, y = data
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    distiller = distiller_for(student, teacher, metrics=["accuracy"])
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "student_loss", "distillation_loss", "accuracy"}
    expected = np.mean(np.argmax(logits(student, x), axis=-1) == y)
    np.testing.assert_allclose(logs["accuracy"], expected)
    np.testing.assert_allclose(distiller.predict(x, verbose=0), logits(student, x), rtol=1e-6)


def test_unlabelled_data_distils_with_alpha_zero(data):
    x, _ = data
    teacher, student = dense_net(8, seed=1), dense_net(seed=2)
    distiller = distiller_for(student, teacher, student_loss_fn=None, alpha=0.0)
    before = snapshot(student)
    history = distiller.fit(x, epochs=2, batch_size=8, verbose=0)
    assert history.history["student_loss"] == [0.0, 0.0]
    assert history.history["distillation_loss"][1] < history.history["distillation_loss"][0]
    assert changed(before, student)


def test_regularization_losses_of_the_student_are_added(data):
    x, y = data
    teacher = dense_net(8, seed=1)
    keras.utils.set_random_seed(2)
    student = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.1))]
    )
    logs = distiller_for(student, teacher).test_on_batch(x, y, return_dict=True)
    penalty = 0.1 * np.sum(student.get_weights()[0] ** 2)
    np.testing.assert_allclose(
        logs["loss"], 0.1 * logs["student_loss"] + 0.9 * logs["distillation_loss"] + penalty,
        rtol=1e-5,
    )


# What trains.


def test_teacher_never_changes_and_only_the_student_trains(data):
    x, y = data
    keras.utils.set_random_seed(1)
    teacher = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )
    teacher.trainable = True  # the Distiller freezes it
    student = dense_net(4, seed=2)
    teacher_before, student_before = snapshot(teacher), snapshot(student)
    distiller = distiller_for(student, teacher, optimizer="adam")
    distiller.fit(x, y, epochs=3, batch_size=8, verbose=0)

    assert changed(teacher_before, teacher) == set()  # BatchNorm statistics included
    assert {v.path for v in student.trainable_weights} <= changed(student_before, student)
    teacher_paths = {v.path for v in teacher.weights}
    assert not teacher_paths & {v.path for v in distiller.trainable_variables}
    assert distiller.optimizer.iterations.numpy() == 12
    # Adam keeps two slots per variable: the student's 6 variables, nothing of the teacher.
    assert len(distiller.optimizer.variables) == 2 + 2 * len(student.trainable_variables)


def test_progressive_unfreezing_of_the_students_base(images, int_labels):
    keras.utils.set_random_seed(0)
    base = make_base()
    inputs = keras.Input((8, 8, 1))
    student = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(base(inputs))))
    keras.utils.set_random_seed(1)
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    teacher_before = snapshot(teacher)
    epoch_ends = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epoch_ends.append(snapshot(base)))
    distiller = distiller_for(student, teacher, optimizer="adam")
    start = snapshot(base)
    history = distiller.fit(
        images, int_labels, epochs=2, batch_size=8, verbose=0,
        callbacks=[ProgressiveUnfreezing(base, {0: 0, 1: "all"}), record],
    )
    assert all(np.array_equal(start[path], epoch_ends[0][path]) for path in start)
    convolutions = {v.path for v in base.weights if "conv" in v.path}
    assert changed(start, base) == convolutions  # BatchNorm stays frozen
    assert history.history["trainable_params"][0] < history.history["trainable_params"][1]
    assert changed(teacher_before, teacher) == set()


# Distribution and mixed precision.


def test_mirrored_strategy_equals_one_device(mirrored, data):
    x, y = data

    def run(strategy):
        with strategy.scope():
            # No BatchNorm in the student: replicas normalise with their own batch's statistics.
            teacher, student = dense_net(8, seed=1), dense_net(4, seed=2, batchnorm=False)
            distiller = distiller_for(student, teacher, metrics=["accuracy"], alpha=0.3)
        history = distiller.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        return history.history, [w.numpy() for w in student.weights]

    single_logs, single_weights = run(tf.distribute.get_strategy())
    mirrored_logs, mirrored_weights = run(mirrored)
    assert set(mirrored_logs) == set(single_logs)
    for name in single_logs:
        np.testing.assert_allclose(mirrored_logs[name], single_logs[name], rtol=1e-5, err_msg=name)
    for got, expected in zip(mirrored_weights, single_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_mixed_float16_updates_have_the_right_size(data):
    x, y = data

    def update():
        teacher, student = dense_net(8, seed=1), dense_net(4, seed=2)
        before = [w.numpy().astype("float32") for w in student.trainable_weights]
        distiller_for(student, teacher).train_on_batch(x, y)
        return [w.numpy().astype("float32") - b for w, b in zip(student.trainable_weights, before)]

    reference = update()
    with mixed_float16():
        mixed = update()
    for got, expected in zip(mixed, reference):
        assert np.linalg.norm(expected) > 0
        ratio = np.linalg.norm(got) / np.linalg.norm(expected)
        assert 0.97 < ratio < 1.03, ratio
        np.testing.assert_allclose(got, expected, atol=4e-3 * np.abs(expected).max())  # a few float16 ulps


# Saving.


def test_keras_file_round_trip(tmp_path, data):
    x, y = data
    teacher, student = dense_net(8, seed=1), dense_net(4, seed=2)
    distiller = distiller_for(
        student, teacher, optimizer="adam", metrics=["accuracy"], alpha=0.25, temperature=5.0,
        distillation_loss_fn=keras.losses.KLDivergence(),
    )
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")

    assert isinstance(loaded, Distiller)
    assert (loaded.alpha, loaded.temperature) == (0.25, 5.0)
    assert isinstance(loaded.distillation_loss_fn, keras.losses.KLDivergence)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))
    np.testing.assert_array_equal(logits(loaded.teacher, x), logits(teacher, x))
    assert not loaded.teacher.trainable
    assert loaded.optimizer.iterations.numpy() == 4
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(expected, rel=1e-6)


def test_config_round_trip():
    distiller = Distiller(dense_net(seed=2, name="s"), dense_net(8, seed=1, name="t"), name="kd")
    clone = Distiller.from_config(distiller.get_config())
    assert clone.name == "kd"
    assert (clone.student.name, clone.teacher.name) == ("s", "t")
    assert len(clone.teacher.weights) == len(distiller.teacher.weights)


def test_student_saves_alone_as_a_plain_model(tmp_path, data):
    x, y = data
    teacher, student = dense_net(8, seed=1), dense_net(4, seed=2)
    distiller = distiller_for(student, teacher)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    distiller.student.save(tmp_path / "student.keras")
    loaded = keras.models.load_model(tmp_path / "student.keras")
    assert type(loaded) is keras.Sequential
    np.testing.assert_allclose(logits(loaded, x), logits(student, x), rtol=1e-6)


# Cached teacher outputs.


@pytest.fixture
def dataset(data):
    x, y = data
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_cached_outputs_train_like_a_live_teacher(data, dataset):
    x, y = data

    def run(cached):
        teacher, student = dense_net(8, seed=1), dense_net(4, seed=2)
        distiller = distiller_for(student, teacher, alpha=0.3)
        train = distiller.cache_teacher_outputs(dataset) if cached else dataset
        history = distiller.fit(train, epochs=2, verbose=0)
        return history.history, student.get_weights()

    cached_logs, cached_weights = run(True)
    live_logs, live_weights = run(False)
    for name in live_logs:
        np.testing.assert_allclose(cached_logs[name], live_logs[name], rtol=1e-6)
    for got, expected in zip(cached_weights, live_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


class CountCalls(keras.layers.Layer):
    """Identity that counts the samples it sees (a variable, so traced calls count too)."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, inputs):
        self.seen.assign_add(keras.ops.cast(keras.ops.shape(inputs)[0], "float32"))
        return inputs


@pytest.mark.tensorflow_only("counts teacher calls with a Python side effect inside a traced function")
def test_fit_on_cached_outputs_skips_the_teacher(dataset):
    counter = CountCalls()
    keras.utils.set_random_seed(1)
    teacher = keras.Sequential([keras.Input((6,)), counter, keras.layers.Dense(3)])
    distiller = distiller_for(dense_net(seed=2), teacher)
    cached = distiller.cache_teacher_outputs(dataset)
    assert counter.seen.numpy() == 32
    distiller.fit(cached, epochs=3, verbose=0)
    # One more batch of 8: fit checks that the first batch still gives the cached outputs.
    assert counter.seen.numpy() == 40
    distiller.fit(dataset, epochs=1, verbose=0)
    assert counter.seen.numpy() == 72


def test_cached_dataset_keeps_pairs_when_shuffled_and_carries_weights(data):
    x, y = data
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    teacher = dense_net(8, seed=1)
    distiller = distiller_for(dense_net(seed=2), teacher)
    source = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    cached = distiller.cache_teacher_outputs(source, shuffle=True, seed=3)
    orders = []
    for _ in range(2):
        order = []
        for batch_x, batch_y, extra in cached:
            np.testing.assert_allclose(extra["teacher_outputs"], logits(teacher, batch_x), rtol=1e-5)
            rows = [int(np.flatnonzero((x == row).all(axis=1))[0]) for row in batch_x.numpy()]
            np.testing.assert_array_equal(batch_y, y[rows])
            np.testing.assert_array_equal(extra["sample_weight"], weights[rows])
            order += rows
        orders.append(order)
    assert sorted(orders[0]) == list(range(len(x))) and orders[0] != orders[1]

    logs = distiller.evaluate(cached, verbose=0, return_dict=True)
    live = distiller.evaluate(source, verbose=0, return_dict=True)
    assert logs == pytest.approx(live, rel=1e-5)


def test_cached_outputs_without_labels(data):
    x, _ = data
    distiller = distiller_for(dense_net(seed=2), dense_net(8, seed=1), student_loss_fn=None, alpha=0.0)
    cached = distiller.cache_teacher_outputs(tf.data.Dataset.from_tensor_slices(x).batch(8))
    assert len(cached.element_spec) == 2
    history = distiller.fit(cached, epochs=2, verbose=0)
    assert history.history["distillation_loss"][1] < history.history["distillation_loss"][0]


def test_fit_refuses_cached_outputs_with_augmented_inputs(dataset):
    distiller = distiller_for(dense_net(seed=2), dense_net(8, seed=1))
    cached = distiller.cache_teacher_outputs(dataset)
    noisy = cached.map(lambda x, y, extra: (x + tf.random.normal(tf.shape(x)), y, extra))
    with pytest.raises(ValueError, match="do not match the inputs"):
        distiller.fit(noisy, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="do not match the inputs"):
        distiller.fit(dataset, validation_data=noisy, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="do not match the inputs"):
        distiller.evaluate(noisy, verbose=0)
    reversed_features = cached.map(lambda x, y, extra: (x[:, ::-1], y, extra))
    with pytest.raises(ValueError, match="do not match the inputs"):
        distiller.fit(reversed_features, epochs=1, verbose=0)


def test_cache_bad_input(dataset):
    distiller = distiller_for(dense_net(seed=2), dense_net(8, seed=1))
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        distiller.cache_teacher_outputs(np.zeros((4, 6)))
    with pytest.raises(ValueError, match="already carries"):
        distiller.cache_teacher_outputs(distiller.cache_teacher_outputs(dataset))
    with pytest.raises(ValueError, match="yields nothing"):
        distiller.cache_teacher_outputs(dataset.take(0))


# Subclassing and the keras.io example.


def load_example(name, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as running the script does: it imports synthetic.py
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feature_distillation_example_adds_the_hint_term(tmp_path, monkeypatch):
    example = load_example("feature_distillation", monkeypatch)
    x, y = example.synthetic_images(16, seed=0)
    teacher, student = example.convnet(8, "teacher"), example.convnet(4, "student")
    distiller = example.HintDistiller(student, teacher, "features", "features", beta=0.5)
    distiller.compile("sgd", student_loss_fn=SPARSE, alpha=0.2, temperature=2.0)
    logs = distiller.test_on_batch(x, y, return_dict=True)

    def features(model):
        tap = keras.Model(model.inputs, model.get_layer("features").output)
        return keras.ops.convert_to_numpy(tap(x)).astype("float64")

    kernel, bias = distiller.projection.get_weights()
    hint = np.mean((features(student) @ kernel + bias - features(teacher)) ** 2, axis=-1)
    soft = kl_per_sample(logits(teacher, x), logits(student, x), 2.0)
    np.testing.assert_allclose(logs["distillation_loss"], np.mean(soft + 0.5 * hint), rtol=1e-5)

    teacher_before = snapshot(teacher)
    projection_before = snapshot(distiller.projection)
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert changed(teacher_before, teacher) == set()
    assert changed(projection_before, distiller.projection)

    distiller.save(tmp_path / "hint.keras")
    loaded = keras.models.load_model(tmp_path / "hint.keras")
    assert (type(loaded).__name__, loaded.beta) == ("HintDistiller", 0.5)
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(expected, rel=1e-6)


def test_keras_io_example_runs_unchanged():
    """The calls of keras.io's "Knowledge Distillation" example, on small synthetic data."""
    from keras import layers

    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 10, 256)
    x_train = rng.normal(0, 0.3, (256, 28, 28, 1)).astype("float32")
    x_train[np.arange(256), 2 * y_train + 4, 4:24, 0] += 2.0  # a bright row per digit
    x_test, y_test = x_train[:64], y_train[:64]

    teacher = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1), padding="same"),
            layers.Conv2D(64, (3, 3), strides=(2, 2), padding="same"),
            layers.Flatten(),
            layers.Dense(10),
        ],
        name="teacher",
    )
    student = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(8, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1), padding="same"),
            layers.Conv2D(16, (3, 3), strides=(2, 2), padding="same"),
            layers.Flatten(),
            layers.Dense(10),
        ],
        name="student",
    )
    teacher.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    teacher.fit(x_train, y_train, epochs=3, verbose=0)
    teacher_weights = teacher.get_weights()

    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=10,
    )
    distiller.fit(x_train, y_train, epochs=3, verbose=0)
    results = distiller.evaluate(x_test, y_test, verbose=0)

    loss, student_loss, distillation_loss, accuracy = results
    assert accuracy > 0.5  # ten classes: chance is 0.1
    np.testing.assert_allclose(loss, 0.1 * student_loss + 0.9 * distillation_loss, rtol=1e-5)
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)


# Bad input.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": True}, "alpha=True"),
        ({"temperature": 0}, "temperature=0"),
        ({"temperature": -2.0}, "temperature=-2.0"),
        ({"student_loss_fn": None}, "student_loss_fn=None with alpha=0.1"),
        ({"loss": "mse"}, "loss='mse'"),
        ({"student_loss_fn": 3}, "student_loss_fn=3"),
        ({"student_loss_fn": keras.losses.SparseCategoricalCrossentropy(reduction="sum")},
         "reduction='sum'"),
    ],
)
def test_compile_rejects(kwargs, match):
    distiller = Distiller(dense_net(seed=2), dense_net(8, seed=1))
    kwargs = {"optimizer": "sgd", "student_loss_fn": SPARSE, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        distiller.compile(**kwargs)


def test_constructor_rejects_mismatched_models():
    teacher = dense_net(8, seed=1)
    with pytest.raises(ValueError, match="same model as both"):
        Distiller(teacher, teacher)
    wide = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="teacher output size 3, student output size 5"):
        Distiller(wide, teacher)
    with pytest.raises(TypeError, match="student"):
        Distiller(keras.layers.Dense(3), teacher)


def test_fit_before_compile_and_labels_missing(data):
    x, y = data
    distiller = Distiller(dense_net(seed=2), dense_net(8, seed=1))
    with pytest.raises(ValueError, match="compile"):
        distiller.fit(x, y, verbose=0)
    distiller.compile("sgd", student_loss_fn=SPARSE)
    with pytest.raises(ValueError, match="without labels, which needs alpha=0"):
        distiller.fit(x, verbose=0)
