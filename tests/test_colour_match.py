"""Colour harmonisation (engine/colour_match.py): what each mode corrects, and that the source's own
pixels come back untouched."""

import numpy as np
import pytest

from outpaint.engine.colour import srgb_to_lab
from outpaint.engine.colour_match import match_colours

from .conftest import make_png, make_request


def _scene(height: int = 96, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A textured gradient and a known mask (the left 96 columns)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([80 + 0.5 * y + 0.2 * x, 120 + 0.3 * x, 160 - 0.4 * y], axis=-1)
    rgb = rgb + rng.normal(0, 4, (height, width, 3))
    known = np.zeros((height, width), bool)
    known[:, :96] = True
    return rgb.clip(0, 255).astype(np.uint8), known


def test_decoded_mode_undoes_a_colour_cast_measured_on_the_source():
    source, known = _scene()
    decoded = (source.astype(np.int16) + np.array([18, -10, 6])).clip(0, 255).astype(np.uint8)  # a cast everywhere
    matched = match_colours(decoded, source, known, "decoded")
    error_before = np.abs(srgb_to_lab(decoded[~known]) - srgb_to_lab(source[~known])).mean()
    error_after = np.abs(srgb_to_lab(matched[~known]) - srgb_to_lab(source[~known])).mean()
    assert error_after < 0.25 * error_before
    np.testing.assert_array_equal(matched[known], decoded[known])  # paste-back owns the source's pixels


def test_band_mode_matches_the_new_band_to_the_source_band():
    source, known = _scene()
    decoded = source.copy()
    decoded[~known] = (decoded[~known].astype(np.int16) - 30).clip(0, 255).astype(np.uint8)  # the new area darker
    matched = match_colours(decoded, source, known, "band")
    band_l = srgb_to_lab(matched[:, 96:128])[..., 0].mean()
    source_l = srgb_to_lab(source[:, 64:96])[..., 0].mean()
    assert abs(band_l - source_l) < 1.5


def test_off_and_nothing_to_match_return_the_input():
    source, known = _scene()
    assert match_colours(source, source, known, "off") is source
    assert match_colours(source, source, np.ones_like(known), "decoded") is source


def test_an_unknown_mode_is_refused():
    source, known = _scene()
    with pytest.raises(ValueError, match="off, decoded, band"):
        match_colours(source, source, known, "krita")


def test_pipeline_with_colour_match_changes_only_the_new_area(tiny_model_dir):
    from outpaint.engine.pipeline import OutpaintPipeline

    request = make_request()
    plain = OutpaintPipeline.load(tiny_model_dir, colour_match="off")(make_png(128, 128), request)
    matched = OutpaintPipeline.load(tiny_model_dir, colour_match="decoded")(make_png(128, 128), request)
    keep = plain.canvas.alpha >= 1.0
    np.testing.assert_array_equal(matched.image[keep], plain.image[keep])
    assert np.any(matched.image[~keep] != plain.image[~keep])
    assert "colour_match" in matched.timings
