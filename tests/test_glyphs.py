import numpy as np
import pytest
from scipy import ndimage

from keras_finetune import glyphs


def test_the_source_task_has_over_100_classes_and_no_greek_letter_of_the_unseen_target():
    assert len(glyphs.SOURCE_CHARACTERS) >= 100
    assert len(set(glyphs.SOURCE_CHARACTERS)) == len(glyphs.SOURCE_CHARACTERS)
    assert not set(glyphs.UNSEEN_CHARACTERS) & set(glyphs.SOURCE_CHARACTERS)
    assert not any(0x370 <= ord(c) <= 0x3FF for c in glyphs.SOURCE_CHARACTERS)  # no Greek at all
    assert all(0x3B1 <= ord(c) <= 0x3C9 for c in glyphs.UNSEEN_CHARACTERS)


def test_templates_hold_every_character_from_several_fonts_fitted_to_the_square():
    shapes, classes = glyphs.templates(glyphs.SOURCE_CHARACTERS)
    counts = np.bincount(classes, minlength=len(glyphs.SOURCE_CHARACTERS))
    assert counts.min() >= 12 and counts.max() == len(glyphs.FONTS)  # DejaVu and STIX have every one
    assert shapes.shape[1:] == (32, 32) and 0.0 <= shapes.min() and shapes.max() <= 1.0
    ink = shapes > 0.5
    spans = [max(np.ptp(np.flatnonzero(g.any(1))), np.ptp(np.flatnonzero(g.any(0)))) + 1 for g in ink]
    assert min(spans) >= 28 and max(spans) <= 30  # the longer side spans 30 pixels (antialiased edges aside)


def test_templates_refuse_a_character_no_font_has_and_repeated_ones():
    with pytest.raises(ValueError, match=r"No font has \['\\ue000'\]"):
        glyphs.templates("A\ue000")
    with pytest.raises(ValueError, match="must not repeat one. Received: characters='AA'"):
        glyphs.templates("AA")


def test_render_is_a_function_of_its_seed_and_looks_like_the_digits_scale():
    first, labels = glyphs.render("0123456789", 600, seed=3)
    again, labels_again = glyphs.render("0123456789", 600, seed=3)
    other, _ = glyphs.render("0123456789", 600, seed=4)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(first, other)
    assert first.shape == (600, 8, 8, 1) and first.dtype == np.float32 and labels.dtype == np.int32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert set(np.unique(labels)) == set(range(10)) and np.bincount(labels).min() > 30
    # about as much ink as scikit-learn's digits (0.31 of the image), bright on a dark ground
    assert 0.2 < first.mean() < 0.4 and first[:, [0, -1]].mean() < first[:, 3:5].mean()


@pytest.mark.parametrize("count, seed", [(-1, 0), (2.5, 0), (3, "0"), (True, 0)])
def test_render_refuses_a_count_or_seed_that_is_not_a_non_negative_int(count, seed):
    with pytest.raises(ValueError, match="must be an int >= 0"):
        glyphs.render("AB", count, seed)


def test_upsampling_weights_interpolate_linearly_and_sum_to_one():
    weights = glyphs._upsampling(32, 4)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    ramp = np.arange(4.0)  # a linear ramp stays linear between the sample centres
    inside = (np.arange(32) + 0.5) / 8 - 0.5
    middle = (inside >= 0) & (inside <= 3)
    np.testing.assert_allclose((weights @ ramp)[middle], inside[middle], atol=1e-12)


def test_bilinear_sampling_at_the_pixel_centres_returns_the_glyph_and_zero_outside():
    shapes, _ = glyphs.templates("AB")
    rows, columns = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    rows, columns = np.broadcast_to(rows, (2, 32, 32)), np.broadcast_to(columns, (2, 32, 32))
    np.testing.assert_allclose(glyphs._sampled(shapes[:2], rows, columns), shapes[:2], atol=1e-6)
    half = glyphs._sampled(shapes[:2], rows + 0.5, columns)
    np.testing.assert_allclose(half[:, :-1], (shapes[:2, :-1] + shapes[:2, 1:]) / 2, atol=1e-6)
    np.testing.assert_array_equal(glyphs._sampled(shapes[:2], rows + 40, columns), 0.0)


def test_neighbourhood_maximum_and_sum_equal_scipys_filters():
    images = np.random.default_rng(0).random((3, 8, 8))
    np.testing.assert_allclose(
        glyphs._neighbourhood(images, np.maximum), ndimage.maximum_filter(images, (1, 3, 3), mode="constant")
    )
    np.testing.assert_allclose(
        glyphs._neighbourhood(images, np.add) / 9, ndimage.uniform_filter(images, (1, 3, 3), mode="constant"), atol=1e-12
    )
