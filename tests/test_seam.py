"""The seam score (engine/seam.py): about 1 for a continuous picture, well above for a visible seam."""

import numpy as np
import pytest

from outpaint.engine.colour import lightness
from outpaint.engine.seam import seam_score


def _gradient_picture(height: int = 128, width: int = 192) -> np.ndarray:
    """A sky-like picture with texture: a vertical gradient plus a little ripple everywhere."""
    y, x = np.mgrid[0:height, 0:width]
    base = 60 + 120 * y / height + 6 * np.sin(x / 3.0) * np.cos(y / 5.0)
    return np.repeat(base[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)


def _known(height: int = 128, width: int = 192) -> np.ndarray:
    known = np.zeros((height, width), bool)
    known[:, :128] = True
    return known


def test_a_continuous_picture_scores_about_one():
    assert seam_score(_gradient_picture(), _known()) == pytest.approx(1.0, abs=0.15)


def test_a_brightness_step_at_the_boundary_scores_well_above_one():
    image = _gradient_picture().astype(np.int16)
    image[:, 128:] += 25  # the new area a little brighter: the classic outpainting seam
    score = seam_score(image.clip(0, 255).astype(np.uint8), _known())
    assert score is not None and score > 2.0


def test_a_colour_ramp_over_the_paste_back_band_is_a_seam_too():
    image = _gradient_picture().astype(np.float64)
    ramp = np.clip((np.arange(192) - 119) / 9.0, 0, 1)  # 9 px linear blend into a brighter new area
    image += 25 * ramp[None, :, None]
    score = seam_score(image.clip(0, 255).astype(np.uint8), _known())
    assert score is not None and score > 2.0


def test_no_boundary_no_score():
    picture = _gradient_picture()
    assert seam_score(picture, np.ones(picture.shape[:2], bool)) is None
    assert seam_score(picture, np.zeros(picture.shape[:2], bool)) is None


def test_lightness_is_cie_l_star():
    values = lightness(np.array([[[0, 0, 0], [255, 255, 255], [119, 119, 119]]], np.uint8))[0]
    np.testing.assert_allclose(values, [0.0, 100.0, 50.0], atol=0.3)
