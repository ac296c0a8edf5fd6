"""Printed glyphs rendered from the fonts that install with matplotlib: the source task of the
shipped `glyphs` base, and a target of classes it never saw.

Each image is formed the way scikit-learn's 8x8 digits were (UCI optdigits):
a glyph fitted into a 32x32 binary bitmap, then the ink counted in each 4x4
block, so pixels take the 17 values 0, 1/16, ..., 1 (ink bright on a dark
ground). Before the counting, each glyph is distorted at random: an affine
map (rotation, shear, scale per axis, shift), a smooth random displacement
(a hand's wobble), a thinner or thicker stroke; after it, a little blur,
noise and a dimmer ink. Pure numpy (no Keras backend): a seed gives the same
images under any backend. Nothing is downloaded: the
fonts are DejaVu (Sans, Sans Mono, Serif), STIX and Computer Modern, in
their regular, bold and italic cuts where matplotlib has them.
"""

from __future__ import annotations

import functools
import os

import numpy as np

__all__ = [
    "FONTS",
    "SOURCE_CHARACTERS",
    "UNSEEN_CHARACTERS",
    "IMAGE_SIZE",
    "AUGMENTATION",
    "fonts",
    "templates",
    "render",
]

IMAGE_SIZE = 8
_CANVAS = 32  # the binary bitmap that is counted down to 8x8, as for the UCI digits
_FIT = 30  # pixels the longer side of a glyph spans in that bitmap before the random scale
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmmi10.ttf", "cmti10.ttf",
)
# 107 classes: digits, Latin capitals, the small letters whose shape differs from their capital
# once both are fitted to the same box (not c o s u v w x z, nor l, which is I), the Cyrillic
# capitals not shaped like a Latin one, and symbols. No Greek: that is the unseen target.
SOURCE_CHARACTERS = (
    "0123456789"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "abdefghijkmnpqrty"
    "БГДЖЗИЛПФЦЧШЩЪЫЬЭЮЯ"
    "+=<>%&@#$?!()[]{}/*\u00f7\u00d7\u20ac\u00a3\u221e\u221a\u00a7\u00b6\u2020\u2021\u00a9\u00ae\u00b1\u2260\u2264\u2265"
)
# `image_augmentation` options that suit 8x8 glyphs: shifts of up to one pixel. A flipped glyph is
# another glyph (or none); rotation ±11° and zoom ±10% cost 0.8 points on the demo's tuning seeds
# (92.5 against 93.3 %): at 8x8 pixels they blur the strokes.
AUGMENTATION = {
    "flip": None, "rotation": None, "zoom": None, "translation": 0.125,
    "brightness": None, "contrast": None, "saturation": None, "hue": None,
}
# Greek small letters, none of them a source class nor shaped like one.
UNSEEN_CHARACTERS = "\u03b1\u03b2\u03b3\u03b4\u03b6\u03b8\u03bb\u03be\u03c8\u03c9"


def fonts() -> list[str]:
    """Paths of `FONTS` in matplotlib's data folder; an ImportError that says what to install without it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError('Rendering glyphs needs matplotlib\'s fonts: pip install "keras-finetune[demo]".') from None
    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    return [os.path.join(folder, name) for name in FONTS]


def _glyph(font, character: str) -> np.ndarray | None:
    """The glyph's ink, antialiased, cropped to its box; `None` where the font lacks it."""
    if font.get_char_index(ord(character)) == 0:
        return None
    font.set_size(96, 72)
    font.set_text(character, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    ink = np.asarray(font.get_image(), dtype="float32") / 255.0
    rows, columns = np.flatnonzero(ink.max(axis=1) > 0.5), np.flatnonzero(ink.max(axis=0) > 0.5)
    if rows.size == 0:
        return None
    return ink[rows[0]: rows[-1] + 1, columns[0]: columns[-1] + 1]


def _fitted(ink: np.ndarray) -> np.ndarray:
    """`ink` scaled so that its longer side spans `_FIT` pixels, centred in a `_CANVAS` square."""
    from PIL import Image

    height, width = ink.shape
    scale = _FIT / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BOX))
    canvas = np.zeros((_CANVAS, _CANVAS), "float32")
    top, left = (_CANVAS - size[1]) // 2, (_CANVAS - size[0]) // 2
    canvas[top: top + size[1], left: left + size[0]] = small
    return canvas


@functools.lru_cache(maxsize=4)
def templates(characters: str) -> tuple[np.ndarray, np.ndarray]:
    """Every font's undistorted glyph of each character, fitted to a 32x32 square.

    Returns:
        `(glyphs, classes)`: float32 `(T, 32, 32)` ink in [0, 1], and the
        index in `characters` of each; a character some fonts lack has fewer.

    Raises:
        ValueError: a character no font has, or repeated characters.
    """
    if len(set(characters)) != len(characters):
        raise ValueError(f"`characters` must not repeat one. Received: characters={characters!r}")
    from matplotlib.ft2font import FT2Font

    glyphs, classes = [], []
    for path in fonts():
        font = FT2Font(path)
        for index, character in enumerate(characters):
            ink = _glyph(font, character)
            if ink is not None:
                glyphs.append(_fitted(ink))
                classes.append(index)
    missing = sorted(set(characters) - {characters[i] for i in classes})
    if missing:
        raise ValueError(f"No font has {missing}. Received: characters={characters!r}")
    return np.stack(glyphs), np.asarray(classes, "int32")


def _upsampling(size: int, grid: int) -> np.ndarray:
    """The `(size, grid)` matrix of bilinear weights that resizes `grid` samples to `size` (half-pixel centres)."""
    position = np.clip((np.arange(size) + 0.5) * grid / size - 0.5, 0, grid - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, grid - 1)
    weights = np.zeros((size, grid))
    np.add.at(weights, (np.arange(size), low), 1 - (position - low))
    np.add.at(weights, (np.arange(size), high), position - low)
    return weights


def _coordinates(rng, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel of the 32x32 bitmap reads its glyph: an affine map about the centre
    (rotation, shear, scale per axis, shift) plus a smooth random displacement, a hand's wobble.

    Returns:
        `(rows, columns)`, each `(count, 32, 32)`.
    """
    angle = rng.uniform(-0.3, 0.3, count)  # radians, about ±17°
    shear = rng.uniform(-0.3, 0.3, count)
    scale_x, scale_y = rng.uniform(0.6, 1.05, count), rng.uniform(0.8, 1.05, count)
    shift = rng.uniform(-2.0, 2.0, (count, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.empty((count, 2, 2))  # (row, column) -> (row, column): scale, shear, rotate
    forward[:, 0, 0], forward[:, 0, 1] = cos * scale_y, (cos * shear - sin) * scale_x
    forward[:, 1, 0], forward[:, 1, 1] = sin * scale_y, (sin * shear + cos) * scale_x
    inverse = np.linalg.inv(forward).astype("float32")[:, :, :, None, None]
    centre = (_CANVAS - 1) / 2.0
    row, column = np.meshgrid(np.arange(_CANVAS, dtype="float32") - centre, np.arange(_CANVAS, dtype="float32") - centre, indexing="ij")
    row, column = row - shift[:, 0, None, None], column - shift[:, 1, None, None]
    wobble = (rng.normal(0.0, 1.0, (2, count, 4, 4)) * rng.uniform(0.0, 2.0, (count, 1, 1))).astype("float32")
    up = _upsampling(_CANVAS, 4).astype("float32")
    wobble = up @ wobble @ up.T  # (2, count, 32, 32)
    rows = inverse[:, 0, 0] * row + inverse[:, 0, 1] * column + centre + wobble[0]
    columns = inverse[:, 1, 0] * row + inverse[:, 1, 1] * column + centre + wobble[1]
    return rows, columns


def _sampled(glyphs: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Bilinear samples of each glyph at its `(rows, columns)`, ink 0 outside the square."""
    padded = np.pad(glyphs, ((0, 0), (1, 1), (1, 1)))
    rows, columns = np.clip(rows + 1, 0, _CANVAS + 1), np.clip(columns + 1, 0, _CANVAS + 1)
    top, left = np.minimum(np.floor(rows).astype(int), _CANVAS), np.minimum(np.floor(columns).astype(int), _CANVAS)
    down, right = rows - top, columns - left
    flat = padded.reshape(-1)
    corner = (np.arange(len(glyphs))[:, None, None] * (_CANVAS + 2) + top) * (_CANVAS + 2) + left
    return ((1 - down) * ((1 - right) * flat[corner] + right * flat[corner + 1])
            + down * ((1 - right) * flat[corner + _CANVAS + 2] + right * flat[corner + _CANVAS + 3]))


def _neighbourhood(images: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.maximum, np.add) over each pixel's 3x3 neighbourhood, 0 beyond the edge."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    size = images.shape[1]
    result = padded[:, :size, :size]
    for i, j in [(i, j) for i in range(3) for j in range(3)][1:]:
        result = reduce(result, padded[:, i: i + size, j: j + size])
    return result


def _distorted(glyphs: np.ndarray, rng) -> np.ndarray:
    """A batch of fitted glyphs distorted at random and counted down to 8x8 (see the module's docstring)."""
    count = len(glyphs)
    ink = _sampled(glyphs, *_coordinates(rng, count))
    width = rng.choice([-1, 0, 1, 2], (count, 1, 1), p=[0.05, 0.25, 0.4, 0.3])  # pixels added to the stroke
    thicker = _neighbourhood(ink, np.maximum)
    ink = np.where(width < 0, -_neighbourhood(-ink, np.maximum), np.where(width == 0, ink, thicker))
    ink = np.where(width == 2, _neighbourhood(thicker, np.maximum), ink)
    block = _CANVAS // IMAGE_SIZE
    images = (ink > 0.5).reshape(count, IMAGE_SIZE, block, IMAGE_SIZE, block).mean(axis=(2, 4))
    blur = rng.uniform(0.0, 0.4, (count, 1, 1)) * (rng.random((count, 1, 1)) < 0.5)
    images = (1 - blur) * images + blur * _neighbourhood(images, np.add) / 9
    images = images * rng.uniform(0.8, 1.0, (count, 1, 1))
    images = images + rng.normal(0.0, 1.0, images.shape) * rng.uniform(0.0, 0.05, (count, 1, 1))
    return np.clip(images, 0.0, 1.0).astype("float32")[..., None]


def render(characters: str, count: int, seed: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`count` distorted 8x8 glyphs, classes drawn uniformly from `characters`, fonts at random.

    The same `(characters, count, seed)` gives the same images.

    Returns:
        `(images, labels)`: float32 `(count, 8, 8, 1)` in [0, 1] (ink
        bright, as in `sklearn.datasets.load_digits().images / 16`) and
        int32 indices into `characters`.

    Raises:
        ValueError: `count` or `seed` is not a non-negative int.
    """
    for name, value in (("count", count), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"`{name}` must be an int >= 0. Received: {name}={value!r}")
    glyphs, classes = templates(characters)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(characters), count).astype("int32")
    by_class = np.argsort(classes, kind="stable")  # each class's glyphs side by side
    counts = np.bincount(classes, minlength=len(characters))
    chosen = by_class[np.cumsum(counts)[labels] - counts[labels] + rng.integers(0, counts[labels])]
    images = [_distorted(glyphs[chosen[s: s + batch]], rng) for s in range(0, count, batch)]
    images = np.concatenate(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), "float32")
    return images, labels

