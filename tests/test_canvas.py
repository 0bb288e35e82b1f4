"""Canvas geometry: placement, cropping, scale, the mask and its band, infill, latent mask, paste-back."""

from __future__ import annotations

import io
import struct
import time
import zlib

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


# -- untrusted sources: bounded scale, truncation, pixel modes (issue 11) ------------------------


def _smooth(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A photo-like (H, W, 3) uint8 picture: blurred overlapping shapes."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(5, w)), y0 + int(rng.integers(5, h))]
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)))


def _resize_whole_then_crop(source: cv.SourceImage, width: int, height: int, scale: float, x0: int, y0: int):
    """What placement computed before it was bounded: the whole scaled source, then the crop."""
    h, w = source.known.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(Image.fromarray(source.rgb).resize(size, Image.Resampling.LANCZOS))
    known = np.asarray(Image.fromarray(source.known).resize(size, Image.Resampling.NEAREST))
    x1, y1 = min(width, x0 + size[0]), min(height, y0 + size[1])
    out_rgb, out_known = np.zeros((height, width, 3), np.uint8), np.zeros((height, width), bool)
    out_rgb[y0:y1, x0:x1] = rgb[: y1 - y0, : x1 - x0]
    out_known[y0:y1, x0:x1] = known[: y1 - y0, : x1 - x0]
    out_rgb[~out_known] = 0
    return out_rgb, out_known


@pytest.mark.parametrize("scale", [0.1, 0.37, 0.5, 1.3, 2.0, 2.7, 10.0])
def test_scaled_placement_matches_resizing_the_whole_source(scale):
    rgb = _smooth(333, 250)
    known = np.ones((250, 333), bool)
    known[100:180, 40:200] = False  # a transparent hole: the mask is resized too
    source = cv.SourceImage(rgb=rgb, known=known)
    for x0, y0 in ((0, 0), (37, 20)):
        expected_rgb, expected_known = _resize_whole_then_crop(source, 512, 384, scale, x0, y0)
        got_rgb, got_known = cv.place(source, width=512, height=384, scale=scale, offset_x=x0, offset_y=y0)
        np.testing.assert_array_equal(got_known, expected_known)  # nearest neighbour: bit for bit
        # Lanczos over the box: PIL computes the box's step in float32, so a pixel may round differently.
        difference = np.abs(got_rgb.astype(int) - expected_rgb.astype(int))
        assert difference.max() <= 2 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).mean())


def test_scale_ten_on_a_4096_source_never_builds_more_than_the_canvas(monkeypatch):
    """scale 10 on 4096x4096 used to build a 40960x40960 image (4.8 GB at 2048) before cropping."""
    calls = []
    resize = Image.Image.resize

    def bounded_resize(self, size, *args, **kwargs):
        calls.append((self.size, tuple(size)))
        if size[0] * size[1] > 256 * 256 or self.size[0] * self.size[1] > 64 * 64:
            raise AssertionError(f"resize of {self.size} to {size}: more than the canvas needs")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    rgb = np.broadcast_to(np.arange(4096, dtype=np.uint8)[:, None, None], (4096, 4096, 3))
    source = cv.SourceImage(rgb=np.ascontiguousarray(rgb), known=np.ones((4096, 4096), bool))
    started = time.perf_counter()
    c = cv.make_canvas(source, width=256, height=256, scale=10.0, offset_x=64, offset_y=0)
    assert time.perf_counter() - started < 5
    assert calls and c.known.sum() == 192 * 256
    # Row y of the canvas comes from source row y / 10: the gradient shows the scale was applied.
    assert abs(int(c.rgb[200, 100, 0]) - 20) <= 1


def test_a_jpeg_whose_header_claims_more_pixels_than_its_data_holds_is_rejected():
    """The issue's 692-byte JPEG: a 16x16 picture whose frame header says 4096x4096. libjpeg fills
    the missing blocks with grey and reports nothing."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 4096, 4096)
    assert len(data) < 1000
    with pytest.raises(InvalidImage, match="truncated or damaged") as info:
        cv.decode_image(bytes(data))
    assert not info.value.too_large and "4096x4096" in info.value.message


@pytest.mark.parametrize("kwargs", [{}, {"progressive": True, "optimize": True, "quality": 1},
                                    {"optimize": True, "quality": 1, "subsampling": 2}])
@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_flat_jpegs_compressed_as_far_as_possible_still_decode(mode, kwargs):
    """The at-least-a-bit-per-block bound never refuses a real JPEG, however flat."""
    buffer = io.BytesIO()
    Image.new(mode, (1024, 1024), 0).save(buffer, format="JPEG", **kwargs)
    assert cv.decode_image(buffer.getvalue()).rgb.shape == (1024, 1024, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_image_is_rejected_even_with_pils_lenient_mode_on(fmt, monkeypatch):
    from PIL import ImageFile

    buffer = io.BytesIO()
    Image.fromarray(_smooth(300, 200)).save(buffer, format=fmt)
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what some libraries turn on globally
    with pytest.raises(InvalidImage):
        cv.decode_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _sixteen_bit(values: np.ndarray, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(values.astype(np.uint16))
    if mode == "I;16B":
        return Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes())
    if mode == "I":
        return Image.fromarray(values.astype(np.int32))
    return Image.fromarray(values.astype(np.float32))  # F


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped_white(mode):
    values = np.array([[0, 128, 257, 25700], [32896, 65278, 65535, 1000]])
    image = _sixteen_bit(values, mode)
    assert image.mode == mode
    source = cv.source_from_image(image)
    expected = np.array([[0, 0, 1, 100], [128, 254, 255, 4]], np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(source.rgb, np.repeat(expected[..., None], 3, axis=2))
    assert source.known.all()


def test_a_sixteen_bit_grey_png_is_a_grey_picture_with_its_transparent_value_unknown():
    """The issue's case: a 16-bit grey PNG came back as a solid white source."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG", transparency=int(ramp[0, 5]))
    source = cv.decode_image(buffer.getvalue())
    np.testing.assert_array_equal(source.rgb[..., 0], np.rint(ramp / 257).astype(np.uint8))
    assert 120 < source.rgb.mean() < 135  # mid grey on average, not 255
    assert not source.known[0, 5] and source.known.sum() == 64 * 64 - 1


def _rgba_of(source: cv.SourceImage) -> list:
    return np.concatenate([source.rgb, source.known[..., None].astype(np.uint8)], axis=2).tolist()


def test_every_eight_bit_mode_becomes_rgb_with_its_transparency():
    la = Image.fromarray(np.array([[[10, 0], [20, 255]]], np.uint8), "LA")
    assert _rgba_of(cv.source_from_image(la)) == [[[10, 10, 10, 0], [20, 20, 20, 1]]]
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 0, 200, 100, 50])
    pa.putpixel((0, 0), (1, 255))
    pa.putpixel((1, 0), (1, 0))
    assert _rgba_of(cv.source_from_image(pa)) == [[[200, 100, 50, 1], [200, 100, 50, 0]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 50])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 is transparent (PNG tRNS)
    assert _rgba_of(cv.source_from_image(palette)) == [[[0, 0, 0, 0], [200, 100, 50, 1]]]
    grey = Image.fromarray(np.array([[5, 6]], np.uint8), "L")
    grey.info["transparency"] = 6  # a grey PNG's tRNS value
    assert _rgba_of(cv.source_from_image(grey)) == [[[5, 5, 5, 1], [6, 6, 6, 0]]]
    rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8), "RGB")
    rgb.info["transparency"] = (4, 5, 6)
    assert _rgba_of(cv.source_from_image(rgb)) == [[[1, 2, 3, 1], [4, 5, 6, 0]]]
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert bilevel.mode == "1" and _rgba_of(cv.source_from_image(bilevel)) == [[[255] * 3 + [1], [0] * 3 + [1]]]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no black, full magenta + yellow: red
    assert _rgba_of(cv.source_from_image(cmyk)) == [[[255, 0, 0, 1]]]
    ycc = Image.new("RGB", (1, 1), (10, 200, 30)).convert("YCbCr")
    assert np.abs(cv.source_from_image(ycc).rgb.astype(int) - [10, 200, 30]).max() <= 2


def test_png_and_jpeg_transparency_and_cmyk_round_trip_through_decode():
    buffer = io.BytesIO()
    Image.fromarray(np.array([[10, 20, 30]], np.uint8), "L").save(buffer, format="PNG", transparency=20)
    assert cv.decode_image(buffer.getvalue()).known.tolist() == [[True, False, True]]
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buffer, format="JPEG", quality=100)
    assert np.abs(cv.decode_image(buffer.getvalue()).rgb.astype(int) - [255, 0, 0]).max() <= 3


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_an_animated_image_gives_its_first_frame(fmt):
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert getattr(Image.open(io.BytesIO(buffer.getvalue())), "n_frames", 1) == 2
    source = cv.decode_image(buffer.getvalue())
    assert np.abs(source.rgb.astype(int) - [200, 0, 0]).max() <= 2


def _png_chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _jpeg(progressive: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG", progressive=progressive)
    return buffer.getvalue()


def _png_with(before_idat: bytes) -> bytes:
    rows = zlib.compress(b"".join(b"\x00" + bytes(64 * 3) for _ in range(64)))
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + before_idat + _png_chunk(b"IDAT", rows)
            + _png_chunk(b"IEND"))


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        # PIL walks these in Python at ~10 us each: 12-16 s for 12 MB, one worker held (found by the battery).
        ("1 M empty PNG chunks", _png_with(_png_chunk(b"quXx") * 1_000_000), "chunks"),
        ("3 M empty JPEG comments", _jpeg()[:2] + b"\xff\xfe\x00\x02" * 3_000_000 + _jpeg()[2:], "segments"),
        # libjpeg skips fill bytes one by one with suspension checks: 12 MB took 2.6 s.
        ("12 MB of JPEG fill bytes", _jpeg(True)[:-2] + b"\xff" * 12_000_000 + b"\xff\xd9", "fill bytes"),
    ],
)
def test_containers_no_real_file_looks_like_are_refused_before_pil_parses_them(name, data, needle):
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match=needle):
        cv.decode_image(data)
    assert time.perf_counter() - started < 2, name


def test_real_pngs_and_jpegs_are_far_from_the_structure_limits():
    many_idats = _png_with(b"")  # PIL's own writer, and libjpeg with restart markers and ICC
    assert cv.decode_image(many_idats).rgb.shape == (64, 64, 3)
    buffer = io.BytesIO()
    Image.fromarray(_smooth(640, 480)).save(buffer, format="PNG", optimize=True)
    assert cv.decode_image(buffer.getvalue()).rgb.shape == (480, 640, 3)
    buffer = io.BytesIO()
    Image.fromarray(_smooth(640, 480)).save(buffer, format="JPEG", progressive=True, restart_marker_blocks=1,
                                            icc_profile=bytes(range(256)) * 1000)
    assert cv.decode_image(buffer.getvalue()).rgb.shape == (480, 640, 3)
