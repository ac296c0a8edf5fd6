"""The blocks of a backbone, bottom to top: what layer-wise decay scales and what "top N" unfreezes.

A Keras backbone's `layers` are not its blocks. A keras.applications ResNet50
lists 175 entries, one per convolution, normalisation or activation, for 16
residual blocks; a keras-hub `ViTBackbone` lists three (`images`,
`vit_patching_and_embedding`, `vit_encoder`), its twelve transformer blocks
nested inside the encoder. timm names its blocks (`blocks.3`,
`stages.2.blocks.1`) and groups parameters by those names; here the blocks
are read from the names Keras's and keras-hub's backbones give their layers,
or from the prefixes or function a user gives.

`units(base_model)` returns the units bottom to top: the stem (everything
below the first block), then one unit per block; whatever lies above the last
block (a final normalisation) joins the last block. A base with no blocks to
find keeps the entries of `base_model.layers` as its units, one each.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import keras

__all__ = ["Units", "all_layers", "children", "units"]

# A layer name -> its block, for the backbones of keras.applications and keras-hub. The first pattern
# that finds two blocks or more in a base is the one used.
_PATTERNS = (
    re.compile(r"(?:tran|trans)former_(?:block|layer)_(\d+)$"),  # keras-hub ViT (its own spelling), encoders
    re.compile(r"stage_(\d+)_block_(\d+)_"),  # ConvNeXt
    re.compile(r"^conv(\d+)_block(\d+)_"),  # ResNet, ResNetV2, DenseNet
    re.compile(r"^block(\d+)([a-z])_"),  # EfficientNet, EfficientNetV2
    re.compile(r"^block_(\d+)_"),  # MobileNetV2
    re.compile(r"^expanded_conv_(\d+)_"),  # MobileNetV3
    re.compile(r"^stack(\d+)_block(\d+)_"),  # keras-hub ResNet
)


def children(layer: keras.layers.Layer) -> list:
    """The layers directly inside `layer`, in the order they were added."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_layers(layer: keras.layers.Layer) -> list:
    """`layer` and every layer nested in it, depth first, in model order, once each."""
    ordered, seen = [], set()

    def visit(current):
        if id(current) not in seen:
            seen.add(id(current))
            ordered.append(current)
            for child in children(current):
                visit(child)

    visit(layer)
    return ordered


def _key(match: re.Match) -> tuple:
    return tuple(int(part) if part.isdigit() else ord(part) for part in match.groups())


def _own_variables(layer) -> list:
    """The variables `layer` holds itself, not through a sublayer."""
    nested = {id(v) for child in children(layer) for v in child.weights}
    return [v for v in layer.weights if id(v) not in nested]


class Units(list):
    """The units of a base, bottom to top: each a list of layers. `blocks` says whether they are blocks found
    in it (the stem first) or its `layers` entries, one each; `above` lists the layers above the last block
    (in the last unit too)."""

    def __init__(self, units: list, blocks: bool, above: list = ()):
        super().__init__(units)
        self.blocks = blocks
        self.above = list(above)

    def index_of(self, layer) -> int | None:
        """The lowest unit that holds `layer` or a layer nested in it."""
        inside = {id(current) for current in all_layers(layer)}
        for index, unit in enumerate(self):
            if any(id(member) in inside for member in unit):
                return index
        return None


def _matcher(blocks) -> Callable:
    """`layer -> block key or None` from a list of name prefixes, a callable, or the known patterns."""
    if callable(blocks):
        return blocks
    if isinstance(blocks, Sequence) and not isinstance(blocks, str) and blocks and all(isinstance(p, str) for p in blocks):
        prefixes = list(blocks)

        def by_prefix(layer):
            found = [index for index, prefix in enumerate(prefixes) if layer.name.startswith(prefix)]
            return max(found, key=lambda index: len(prefixes[index])) if found else None

        return by_prefix
    raise TypeError(
        "`blocks` must be a list of layer-name prefixes, bottom block first, or a callable "
        f"`layer -> block key or None`. Received: blocks={blocks!r}"
    )


def _keyed(base_model, matcher) -> list:
    """(layer, block key or None) for every layer of the base, depth first; a layer inside a block is in it."""
    keyed = []

    def visit(layer, inherited):
        key = matcher(layer) if inherited is None else inherited
        keyed.append((layer, key))
        for child in children(layer):
            visit(child, key)

    for child in children(base_model):
        visit(child, None)
    return keyed


def _found_matcher(base_model):
    names = [layer.name for layer in all_layers(base_model)]
    for pattern in _PATTERNS:
        keys = {_key(match) for match in map(pattern.search, names) if match}
        if len(keys) >= 2:
            return lambda layer, pattern=pattern: _key(found) if (found := pattern.search(layer.name)) else None
    return None


def units(base_model: keras.Model, blocks=None) -> Units:
    """The units of `base_model`, bottom to top (see the module docstring).

    Args:
        base_model: keras.Model. The backbone.
        blocks: list of str or callable. The blocks' layer-name prefixes,
            bottom block first, or `layer -> key` (a sortable key, the same
            for every layer of a block, None outside blocks). Defaults to
            `None`: read from the layer names of keras.applications and
            keras-hub backbones, else the entries of `base_model.layers`.
    """
    matcher = _found_matcher(base_model) if blocks is None else _matcher(blocks)
    if matcher is None:
        return Units([[layer] for layer in base_model.layers], blocks=False)
    keyed = _keyed(base_model, matcher)
    keys = sorted({key for _, key in keyed if key is not None})
    if len(keys) < (2 if blocks is None else 1):
        raise ValueError(
            f"`blocks` found no block among the layers of {base_model.name!r}. Received: blocks={blocks!r}"
        )
    found = [[] for _ in range(len(keys) + 1)]  # the stem, then each block
    position, above = 0, []
    for layer, key in keyed:
        if key is not None:
            position, above = keys.index(key) + 1, []
            found[position].append(layer)
        elif _own_variables(layer) or not children(layer):
            # Outside the blocks: below the first, the stem; between or above them, the block before.
            found[position].append(layer)
            above.append(layer)
    return Units(found, blocks=True, above=above)
