import contextlib
import re

import keras
import numpy as np
import pytest
from conftest import fresh_process, make_base, needs_multi_optimizer, snapshot

from keras_finetune.callbacks import CosineAnnealing, ProgressiveUnfreezing
from keras_finetune.heads import build_classifier
from keras_finetune.optimizers import discriminative_optimizer, layer_decay_optimizer

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py

pytestmark = needs_multi_optimizer


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


def timm_lr_scales(layer_ids: dict, num_layers: int, decay: float) -> dict:
    """timm.optim.param_groups_layer_decay's `lr_scale`, transcribed: `layer_max = num_layers - 1`,
    `layer_scales[i] = decay ** (layer_max - i)`, a parameter the group matcher leaves out gets `layer_max`."""
    layer_max = num_layers - 1
    layer_scales = [decay ** (layer_max - i) for i in range(num_layers)]
    return {name: layer_scales[layer_id if layer_id is not None else layer_max] for name, layer_id in layer_ids.items()}


def routed(optimizer, variable):
    return optimizer._optimizer_map[variable.path]


def test_a_resnet50_gets_timms_layer_decay_scales_and_no_decay_for_biases_and_norms():
    keras.utils.set_random_seed(0)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    optimizer = layer_decay_optimizer(model, base, 1e-3, decay=0.8, weight_decay=0.05)
    # timm's resnet group matcher (coarse=False): stem 0, residual blocks 1..16 in order, the rest (fc) last.
    first_block = {2: 0, 3: 3, 4: 7, 5: 13}  # 3, 4, 6 and 3 blocks per stage
    ids = {}
    for variable in model.weights:
        found = re.match(r"conv(\d)_block(\d)_", variable.path)
        ids[variable.path] = first_block[int(found[1])] + int(found[2]) if found else (0 if variable.path.startswith(("conv1_", "pool1")) else None)
    expected = timm_lr_scales(ids, 18, 0.8)
    for variable in model.trainable_weights:
        sub = routed(optimizer, variable)
        assert float(sub.learning_rate.numpy()) == pytest.approx(1e-3 * expected[variable.path], rel=1e-6), variable.path
        assert sub.weight_decay == (0.0 if len(variable.shape) <= 1 else 0.05), variable.path
    assert expected["conv1_conv/kernel"] == pytest.approx(0.8**17)


def test_a_vit_gets_timms_scales_with_its_final_norm_at_the_head_rate():
    from test_blocks import vit_like

    base = vit_like(depth=4)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(base(inputs))))
    optimizer = layer_decay_optimizer(model, base, 1e-3, decay=0.5, weight_decay=0.05)
    # timm's ViT group matcher: cls_token, pos_embed, patch_embed 0; blocks.i i + 1; norm after the blocks (99999)
    # and the head the last layer id.
    ids = {}
    for variable in model.weights:
        block = re.search(r"tranformer_block_(\d+)", variable.path)
        ids[variable.path] = int(block[1]) if block else (0 if "embedding" in variable.path else 5)
    expected = timm_lr_scales(ids, 6, 0.5)
    for variable in model.trainable_weights:
        assert float(routed(optimizer, variable).learning_rate.numpy()) == pytest.approx(1e-3 * expected[variable.path], rel=1e-6)
    no_decay = {v.path for v in model.weights if routed(optimizer, v).weight_decay == 0.0}
    assert "vit_patching_and_embedding/class_token" in no_decay
    assert "vit_patching_and_embedding/position_embedding/embeddings" in no_decay
    assert "vit_encoder/ln/gamma" in no_decay and "head/kernel" not in no_decay


def layer_decay_model(optimizer="adamw", **kwargs):
    keras.utils.set_random_seed(0)
    base = make_base()
    model = build_classifier(base, 3, hidden_units=(), dropout=0.0)
    model.compile(layer_decay_optimizer(model, base, 1e-2, decay=0.5, optimizer=optimizer, **kwargs), "sparse_categorical_crossentropy")
    return base, model


def test_a_base_without_blocks_is_split_at_its_kernels_and_the_first_step_follows_the_scales(images, int_labels):
    base, model = layer_decay_model(weight_decay=0.0)
    before = snapshot(model)
    model.fit(images[:8], int_labels[:8], batch_size=8, epochs=1, verbose=0)
    after = snapshot(model)
    # conv0 (with bn0, relu0), conv1 (with bn1), conv2 are three blocks under an empty stem: 0.5^3, 0.5^2, 0.5.
    for path, rate in (("conv0/kernel", 1.25e-3), ("conv1/kernel", 2.5e-3), ("conv2/kernel", 5e-3), ("head_output/kernel", 1e-2)):
        assert np.abs(after[path] - before[path]).max() == pytest.approx(rate, rel=2e-2), path


def test_phases_and_schedules_scale_every_block_together(images, int_labels):
    base, model = layer_decay_model()
    model.fit(images, int_labels, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=[ProgressiveUnfreezing(base, {0: 0, 2: "all"}, {0: 1e-2, 2: 4e-3}), CosineAnnealing(t_max=4)])
    optimizer = model.optimizer
    head = float(routed(optimizer, model.get_layer("head_output").kernel).learning_rate.numpy())
    assert head == pytest.approx(4e-3 * (1 + np.cos(np.pi * 3 / 4)) / 2, rel=1e-5)
    for path, scale in (("conv0/kernel", 0.125), ("conv1/kernel", 0.25), ("conv2/kernel", 0.5)):
        variable = next(v for v in model.weights if v.path == path)
        sub = routed(optimizer, variable)
        assert float(sub.learning_rate.numpy()) == pytest.approx(head * scale, rel=1e-5)
        assert int(sub.iterations.numpy()) == 8  # trained in the last two epochs only


def test_a_model_compiled_with_layer_decay_saves_and_reloads(images, int_labels, tmp_path):
    base, model = layer_decay_model(weight_decay=0.05)
    model.fit(images, int_labels, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    settings = sorted((float(o.learning_rate.numpy()), o.weight_decay) for o in model.optimizer.optimizers)
    code = (
        "import keras, keras_finetune\n"
        f"m = keras.saving.load_model({path!r})\n"
        "print(type(m.optimizer).__name__, sorted((float(o.learning_rate.numpy()), o.weight_decay) for o in m.optimizer.optimizers))\n"
    )
    name, reloaded = fresh_process(code).strip().split(" ", 1)
    assert name == "DiscriminativeOptimizer"
    np.testing.assert_allclose(np.array(eval(reloaded)), np.array(settings), rtol=1e-7)
    loaded = keras.saving.load_model(path)
    for original, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())


def test_layer_decay_rejects_bad_arguments():
    keras.utils.set_random_seed(0)
    base = make_base()
    model = build_classifier(base, 3)
    with pytest.raises(ValueError, match=r"`decay`.*Received: decay=0"):
        layer_decay_optimizer(model, base, 1e-3, decay=0)
    with pytest.raises(ValueError, match=r"Received: decay=1.5"):
        layer_decay_optimizer(model, base, 1e-3, decay=1.5)
    with pytest.raises(ValueError, match=r"Received: learning_rate=-1"):
        layer_decay_optimizer(model, base, -1)
    with pytest.raises(TypeError, match=r"Received: blocks=3"):
        layer_decay_optimizer(model, base, 1e-3, blocks=3)
    with pytest.raises(ValueError, match="is not a layer of `model`"):
        layer_decay_optimizer(model, make_base("other"), 1e-3)
