"""The blocks of keras.applications and keras-hub backbones, and what "top N" and a nested layer name unfreeze."""

import keras
import numpy as np
import pytest
from conftest import make_base

from keras_finetune.blocks import units
from keras_finetune.callbacks import ProgressiveUnfreezing
from keras_finetune.freezing import unfreeze

BACKENDS = ("tensorflow", "jax", "torch")  # see conftest.py


class Block(keras.layers.Layer):
    """A transformer block as keras-hub's `ViTEncoderBlock` nests it: ln_1, attention (here a dense), ln_2, mlp."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.ln_1 = keras.layers.LayerNormalization(name="ln_1")
        self.mha = keras.layers.Dense(dim, name="mha")
        self.ln_2 = keras.layers.LayerNormalization(name="ln_2")
        self.mlp = keras.layers.Dense(dim, name="mlp")

    def call(self, x):
        x = x + self.mha(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Encoder(keras.layers.Layer):
    """keras-hub's `ViTEncoder`: blocks named `tranformer_block_<i>` (its spelling), then a final norm `ln`."""

    def __init__(self, depth, dim, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [Block(dim, name=f"tranformer_block_{i + 1}") for i in range(depth)]
        self.ln = keras.layers.LayerNormalization(name="ln")

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


class Embedding(keras.layers.Layer):
    """keras-hub's `ViTPatchingAndEmbedding`: its own class token, a patch convolution, a position embedding."""

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_embedding = keras.layers.Conv2D(dim, 4, strides=4, name="patch_embedding")
        self.position_embedding = keras.layers.Embedding(5, dim, name="position_embedding")
        self.dim = dim

    def build(self, shape):
        self.class_token = self.add_weight(shape=(1, 1, self.dim), name="class_token")

    def call(self, images):
        patches = keras.ops.reshape(self.patch_embedding(images), (-1, 4, self.dim))
        tokens = keras.ops.concatenate([keras.ops.tile(self.class_token, (keras.ops.shape(images)[0], 1, 1)), patches], 1)
        return tokens + self.position_embedding(keras.ops.arange(5))


def vit_like(depth=4, dim=8):
    """The layout of a keras-hub `ViTBackbone` (checked against keras-hub 0.24): three entries in `layers`,
    the transformer blocks nested inside `vit_encoder`."""
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 3), name="images")
    tokens = Embedding(dim, name="vit_patching_and_embedding")(images)
    return keras.Model(images, Encoder(depth, dim, name="vit_encoder")(tokens), name="vit_backbone")


def trainable_parts(model):
    """The layer names (below the top entry) that hold trainable weights."""
    return sorted({v.path.split("/")[1] if v.path.count("/") > 1 else v.path.split("/")[0] for v in model.trainable_weights})


def test_a_vit_has_its_stem_then_its_blocks_the_final_norm_joining_the_last():
    base = vit_like()
    assert [layer.name for layer in base.layers] == ["images", "vit_patching_and_embedding", "vit_encoder"]
    found = units(base)
    assert found.blocks and len(found) == 5
    assert [layer.name for layer in found[0]] == ["images", "vit_patching_and_embedding", "patch_embedding", "position_embedding"]
    assert [unit[0].name for unit in found[1:]] == [f"tranformer_block_{i}" for i in range(1, 5)]
    assert [layer.name for layer in found.above] == ["ln"]


def test_top_n_unfreezes_the_top_n_transformer_blocks():
    base = vit_like()
    unfreeze(base, top=1)
    assert trainable_parts(base) == ["ln", "tranformer_block_4"]
    unfreeze(base, top=2)
    assert trainable_parts(base) == ["ln", "tranformer_block_3", "tranformer_block_4"]
    unfreeze(base, top=5)
    assert len(base.trainable_weights) == len(base.weights)
    unfreeze(base, top=0)
    assert base.trainable_weights == []


def test_a_nested_layer_name_unfreezes_its_block_and_those_above():
    base = vit_like()
    unfreeze(base, from_layer="tranformer_block_3")
    assert trainable_parts(base) == ["ln", "tranformer_block_3", "tranformer_block_4"]
    unfreeze(base, from_layer="vit_encoder")  # a container: its lowest block up
    assert trainable_parts(base) == ["ln"] + [f"tranformer_block_{i}" for i in range(1, 5)]
    with pytest.raises(ValueError, match=r"nested ones included \(known: images, vit_patching_and_embedding.*Received: from_layer='block_9'"):
        unfreeze(base, from_layer="block_9")


def test_progressive_unfreezing_counts_blocks_and_takes_nested_names(images):
    base = vit_like()
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling1D()(base(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")

    class Record(keras.callbacks.Callback):
        parts = []

        def on_epoch_end(self, epoch, logs=None):
            self.parts.append(trainable_parts(base))

    rng = np.random.default_rng(0)
    model.fit(rng.uniform(size=(8, 8, 8, 3)), np.arange(8) % 3, epochs=3, verbose=0,
              callbacks=[ProgressiveUnfreezing(base, {0: 0, 1: 1, 2: "tranformer_block_2"}), Record()])
    assert Record.parts == [[], ["ln", "tranformer_block_4"], ["ln", "tranformer_block_2", "tranformer_block_3", "tranformer_block_4"]]
    with pytest.raises(ValueError, match=r"units \(the stem and 4 blocks\) of 'vit_backbone' from the top: 0 to 5. Received: schedule value 6"):
        ProgressiveUnfreezing(base, {0: 0, 1: 6})


@pytest.mark.parametrize(
    "build, count, first, last, above",
    [
        (lambda: keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)), 16,
         "conv2_block1_1_conv", "conv5_block3_out", []),
        (lambda: keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3)), 16,
         "block1a_dwconv", "top_activation", ["top_conv", "top_bn", "top_activation"]),
        (lambda: keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)), 16,
         "block_1_expand", "out_relu", ["Conv_1", "Conv_1_bn", "out_relu"]),
        (lambda: keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3)), 18,
         "convnext_tiny_stage_0_block_0_depthwise_conv", "layer_normalization", ["layer_normalization"]),
    ],
)
def test_blocks_of_keras_applications_backbones(build, count, first, last, above):
    found = units(build())
    assert found.blocks
    assert len(found) == count + 1  # the stem, then the blocks
    assert found[1][0].name == first
    assert found[-1][-1].name == last
    assert [layer.name for layer in found.above] == above
    assert all(layer.name not in {"conv2_block1_1_conv", "block1a_dwconv"} for layer in found[0])


def test_a_base_without_blocks_counts_the_entries_of_its_layers():
    base = make_base()
    found = units(base)
    assert not found.blocks
    assert [unit[0].name for unit in found] == [layer.name for layer in base.layers]


def test_blocks_given_as_prefixes_or_a_function():
    base = make_base()
    by_prefix = units(base, blocks=["conv0", "conv1", "conv2"])  # layers between blocks join the block below
    by_function = units(base, blocks=lambda layer: int(layer.name[-1]) if layer.name[-1].isdigit() else None)
    for found in (by_prefix, by_function):
        assert [[layer.name for layer in unit] for unit in found] == [
            ["pixels"], ["conv0", "bn0", "relu0"], ["conv1", "bn1"], ["conv2"]
        ]
    unfreeze(base, top=1, blocks=["conv0", "conv1", "conv2"])
    assert [v.path for v in base.trainable_weights] == ["conv2/kernel", "conv2/bias"]
    with pytest.raises(ValueError, match=r"found no block.*Received: blocks=\['nothing'\]"):
        units(base, blocks=["nothing"])
    with pytest.raises(TypeError, match=r"Received: blocks=3"):
        units(base, blocks=3)
