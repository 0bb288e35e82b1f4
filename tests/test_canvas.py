"""Canvas geometry: placement, cropping, scale, the mask and its band, infill, latent mask, paste-back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from outpaint.core.errors import InvalidImage, InvalidRequest
from outpaint.engine import canvas as cv


def _source(w: int, h: int, seed: int = 0) -> cv.SourceImage:
    rng = np.random.default_rng(seed)
    return cv.SourceImage(rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), known=np.ones((h, w), bool))


def test_offsets_place_the_source_top_left_on_a_non_square_canvas():
    src = _source(64, 32)
    c = cv.make_canvas(src, width=320, height=192, offset_x=100, offset_y=50, mask_expand=0)
    assert c.rgb.shape == (192, 320, 3)
    np.testing.assert_array_equal(c.rgb[50:82, 100:164], src.rgb)
    assert c.known.sum() == 64 * 32
    assert c.known[50, 100] and not c.known[49, 100] and not c.known[50, 99]
    assert c.mask[~c.known].min() == 1.0 and c.mask[c.known].max() == 0.0


def test_a_source_reaching_past_the_canvas_is_cropped():
    src = _source(100, 80)
    c = cv.make_canvas(src, width=256, height=256, offset_x=200, offset_y=220, mask_expand=0)
    np.testing.assert_array_equal(c.rgb[220:, 200:], src.rgb[:36, :56])
    assert c.known.sum() == 36 * 56


def test_no_overlap_is_an_error_naming_the_offset():
    with pytest.raises(InvalidRequest) as info:
        cv.make_canvas(_source(64, 64), width=256, height=256, offset_x=256, offset_y=0)
    assert info.value.field == "offset_x"
    assert "does not overlap" in info.value.message


def test_scale_resizes_the_source_before_placement():
    c = cv.make_canvas(_source(100, 60), width=256, height=256, scale=0.5, mask_expand=0)
    assert c.known.sum() == 50 * 30
    c = cv.make_canvas(_source(10, 10), width=256, height=256, scale=3.0, offset_x=5, offset_y=7, mask_expand=0)
    assert c.known[7:37, 5:35].all() and c.known.sum() == 900


def test_mask_expand_grows_into_the_source_only_where_it_borders_new_area():
    # Source covers the left half of the canvas fully, touching the top, bottom and left canvas edges:
    # only its right side borders new area, so only there does the band grow.
    c = cv.make_canvas(_source(128, 256), width=256, height=256, mask_expand=16)
    band = (c.mask == 1) & c.known
    assert band.any()
    columns = np.where(band.any(axis=0))[0]
    assert columns.min() == 128 - 16 and columns.max() == 127
    assert band[:, 112:128].all(), "the band spans the whole height, canvas edges included"
    assert not band[:, :112].any()


def test_mask_expand_at_canvas_edges_does_not_treat_outside_as_new():
    c = cv.make_canvas(_source(256, 256), width=256, height=256, mask_expand=32)
    assert c.mask.max() == 0.0 and (c.alpha == 1.0).all()


def test_alpha_ramps_across_the_band_and_is_exactly_one_beyond():
    c = cv.make_canvas(_source(128, 256), width=256, height=256, mask_expand=3)
    row = c.alpha[100, 120:132]
    # columns 120..124 far from new area -> 1; 125, 126, 127 at distances 3, 2, 1 -> 3/4, 2/4, 1/4; new area 0
    assert row.tolist() == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0, 0]


def test_transparent_pixels_of_an_rgba_source_are_unknown():
    rgba = np.full((64, 64, 4), 200, np.uint8)
    rgba[:32, :, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    src = cv.decode_image(buffer.getvalue())
    assert src.known.sum() == 32 * 64
    c = cv.make_canvas(src, width=256, height=256, mask_expand=0)
    assert c.known.sum() == 32 * 64


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert cv.decode_image(buffer.getvalue()).rgb.shape == (40, 20, 3)


def test_not_an_image_is_a_clear_error():
    with pytest.raises(InvalidImage, match="not a decodable image"):
        cv.decode_image(b"definitely not a picture")


def test_unaccepted_format_is_rejected():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")
    with pytest.raises(InvalidImage, match="BMP is not accepted"):
        cv.decode_image(buffer.getvalue())


def test_decompression_bomb_is_refused_from_the_header():
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buffer, format="PNG")
    with pytest.raises(InvalidImage) as info:
        cv.decode_image(buffer.getvalue(), max_pixels=1000 * 1000)
    assert info.value.too_large


def test_infill_keeps_known_pixels_and_fills_the_rest_smoothly():
    src = cv.SourceImage(rgb=np.full((64, 64, 3), (200, 40, 10), np.uint8), known=np.ones((64, 64), bool))
    c = cv.make_canvas(src, width=256, height=256, offset_x=96, offset_y=96)
    filled = cv.infill(c, "pushpull", np.random.default_rng(0))
    np.testing.assert_array_equal(filled[c.known], c.rgb[c.known])
    # A uniform source extends to a uniform canvas.
    assert np.abs(filled.astype(int) - [200, 40, 10]).max() <= 1
    gray = cv.infill(c, "gray", np.random.default_rng(0))
    assert (gray[~c.known] == 127).all()


def test_latent_mask_is_the_area_average_of_8x8_blocks():
    mask = np.zeros((16, 16), np.float32)
    mask[:, 12:] = 1.0  # half of the second block column
    latent = cv.latent_mask(mask)
    assert latent.shape == (1, 1, 2, 2)
    assert latent[0, 0].tolist() == [[0.0, 0.5], [0.0, 0.5]]


def test_paste_back_returns_source_pixels_outside_the_band_bit_identical():
    src = _source(100, 90, seed=5)
    c = cv.make_canvas(src, width=256, height=192, offset_x=30, offset_y=20, mask_expand=8)
    generated = np.random.default_rng(1).integers(0, 256, (192, 256, 3), dtype=np.uint8)
    out = cv.paste_back(generated, c)
    outside_band = c.alpha == 1.0
    np.testing.assert_array_equal(out[outside_band], c.rgb[outside_band])
    np.testing.assert_array_equal(out[~c.known], generated[~c.known])
    assert outside_band.sum() == (100 - 16) * (90 - 16)
