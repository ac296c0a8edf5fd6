import contextlib

import keras
import numpy as np
import pytest
from conftest import make_base, snapshot

from keras_finetune.callbacks import ProgressiveUnfreezing
from keras_finetune.heads import build_classifier
from keras_finetune.optimizers import discriminative_optimizer

pytestmark = pytest.mark.skipif(
    not hasattr(keras.optimizers, "MultiOptimizer"), reason="keras.optimizers.MultiOptimizer needs Keras 3.15"
)


def make_model(optimizer="adam", strategy=None):
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        base = make_base()
        model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
        model.compile(
            discriminative_optimizer(model, base, head_lr=1e-2, base_lr=1e-3, optimizer=optimizer),
            "sparse_categorical_crossentropy",
        )
    return base, model


def sub_optimizers(model):
    head = model.optimizer._optimizer_map.default_optimizer
    (base,) = [o for o in model.optimizer.optimizers if o is not head]
    return head, base


def test_first_adam_step_moves_base_and_head_by_their_own_rates(images, int_labels):
    base, model = make_model()
    before = snapshot(model)
    model.fit(images[:8], int_labels[:8], batch_size=8, epochs=1, verbose=0)
    after = snapshot(model)
    # Adam's first step moves every weight with a clear gradient by about the rate.
    step = {path: np.abs(after[path] - before[path]).max() for path in ("conv2/kernel", "head_output/kernel")}
    assert step["conv2/kernel"] == pytest.approx(1e-3, rel=1e-2)
    assert step["head_output/kernel"] == pytest.approx(1e-2, rel=1e-2)


def test_with_progressive_unfreezing_the_base_optimizer_starts_at_the_unfreeze(images, int_labels, mirrored):
    for strategy in (None, mirrored):
        base, model = make_model(strategy=strategy)
        initial = snapshot(base)
        history = model.fit(
            images, int_labels, batch_size=8, epochs=4, shuffle=False, verbose=0,
            callbacks=[ProgressiveUnfreezing(base, {0: 0, 2: "all"}, {0: 1e-2, 2: 1e-3})],
        )
        head, base_optimizer = sub_optimizers(model)
        assert int(model.optimizer.iterations.numpy()) == 16
        assert int(head.iterations.numpy()) == 16
        assert int(base_optimizer.iterations.numpy()) == 8  # frozen steps do not count
        assert float(head.learning_rate.numpy()) == pytest.approx(1e-3)
        assert float(base_optimizer.learning_rate.numpy()) == pytest.approx(1e-4)  # the 1:10 ratio kept
        np.testing.assert_allclose(history.history["learning_rate"], [1e-2, 1e-2, 1e-3, 1e-3], rtol=1e-6)
        moved = {p for p in initial if not np.array_equal(initial[p], snapshot(base)[p])}
        assert moved == {"conv0/kernel", "conv0/bias", "conv1/kernel", "conv1/bias", "conv2/kernel", "conv2/bias"}


def test_a_model_compiled_with_it_saves_and_reloads(images, int_labels, tmp_path):
    base, model = make_model()
    model.fit(images, int_labels, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.optimizer).__name__ == "DiscriminativeOptimizer"
    for original, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)


def test_rejects_bad_arguments():
    keras.utils.set_random_seed(0)
    base = make_base()
    model = build_classifier(base, 3)
    with pytest.raises(ValueError, match="Received: base_lr=0"):
        discriminative_optimizer(model, base, head_lr=1e-3, base_lr=0)
    with pytest.raises(ValueError, match="is not a layer of `model`"):
        discriminative_optimizer(model, make_base("other"), 1e-3, 1e-4)
    with pytest.raises(TypeError, match="Received: model='model'"):
        discriminative_optimizer("model", base, 1e-3, 1e-4)
    inputs = keras.Input((8, 8, 1))
    clash = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv2")(base(inputs)))
    with pytest.raises(ValueError, match="share variable paths"):
        discriminative_optimizer(clash, base, 1e-3, 1e-4)
