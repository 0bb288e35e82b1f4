"""The tiled VAE decode (engine/tiled_decode.py): tiles cover the canvas with the overlap asked, the
blend weights sum to one, a decoder without context gives exactly the whole decode, and canvases that
fit in one tile decode bit for bit as before."""

import argparse
import dataclasses

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine.fast_path import EXACT, FastPathOptions
from outpaint.engine.tiled_decode import decode_tiled, tile_starts


@pytest.mark.parametrize("size", [8, 64, 65, 80, 96, 128, 129, 200])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (32, 8), (8, 2)])
def test_tiles_cover_the_axis_with_at_least_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0
    if size <= tile:
        assert starts == [0]
        return
    assert starts[-1] == size - tile
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (tile - gaps >= overlap).all()
    assert len(starts) == 1 + int(np.ceil((size - tile) / (tile - overlap)))  # no more tiles than needed


def _pointwise(latents: np.ndarray) -> np.ndarray:
    """A decoder with no context: each cell's first three channels, repeated over its 8x8 pixels."""
    return np.repeat(np.repeat(latents[:, :3], 8, axis=2), 8, axis=3).astype(np.float32)


@pytest.mark.parametrize("shape", [(96, 128), (128, 64), (100, 72), (64, 200)])
def test_a_decoder_without_context_is_decoded_exactly(shape):
    latents = np.random.default_rng(0).standard_normal((1, 4, *shape), dtype=np.float32)
    calls = []

    def decode(z):
        calls.append(z.shape[2:])
        return _pointwise(z)

    tiled = decode_tiled(decode, latents, 64, 16)
    np.testing.assert_allclose(tiled, _pointwise(latents), rtol=0, atol=1e-5)
    assert len(calls) > 1 and all(h <= 64 and w <= 64 for h, w in calls)


def test_one_tile_is_the_whole_decode():
    latents = np.random.default_rng(1).standard_normal((1, 4, 64, 48), dtype=np.float32)
    out = decode_tiled(lambda z: z[:, :3].repeat(8, 2).repeat(8, 3) * 2, latents, 64, 16)
    np.testing.assert_array_equal(out, latents[:, :3].repeat(8, 2).repeat(8, 3) * 2)


def test_bad_tiles_name_the_option():
    with pytest.raises(InvalidRequest, match="decode_tile"):
        FastPathOptions(decode_tile=4)
    with pytest.raises(ValueError, match="overlap"):
        decode_tiled(_pointwise, np.zeros((1, 4, 80, 80), np.float32), 64, 64)


def test_the_pipeline_tiles_past_the_tile_and_not_within_it(tiny_model_dir):
    from outpaint.engine.pipeline import OutpaintPipeline
    from tests.conftest import make_png, make_request

    whole = OutpaintPipeline.load(tiny_model_dir, "ort-cpu")
    tiled = OutpaintPipeline.load(tiny_model_dir, "ort-cpu", options=dataclasses.replace(EXACT, decode_tile=8))
    small = make_request(img_width=64, img_height=64, offset_x=16, offset_y=16, num_inference_steps=2, seed=3)
    large = make_request(img_width=192, img_height=128, offset_x=64, offset_y=32, num_inference_steps=2, seed=3)
    png = make_png(32, 32)
    np.testing.assert_array_equal(whole(png, small).image, tiled(png, small).image)
    a, b = whole(png, large).image, tiled(png, large).image
    assert a.shape == b.shape == (128, 192, 3)
    assert not np.array_equal(a, b), "each tile's decoder sees only the tile"


def test_the_benchmark_variant_is_the_pipeline_with_tiles(tiny_model_dir):
    """`+tile-N` decodes the base's latents again: it must give exactly what the pipeline loaded with
    that decode tile gives."""
    from outpaint.benchmarks.quality.cases import Case
    from outpaint.benchmarks.quality.metrics import Rect
    from outpaint.benchmarks.quality.run import UnknownSystem, tile_variant
    from outpaint.benchmarks.quality.systems import Ours, Retiled, request_for
    from outpaint.engine import canvas as cv
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.pipeline import OutpaintPipeline

    assert tile_variant("outpaint-ort-cpu+tile-8") == 8
    with pytest.raises(UnknownSystem, match="decode_tile"):
        tile_variant("outpaint-ort-cpu+tile-4")
    case = Case("t", 256, 192, Rect(0, 0, 128, 192))
    source = np.random.default_rng(3).integers(0, 256, (192, 128, 3), dtype=np.uint8)
    base = Ours("outpaint-ort-cpu", OutpaintPipeline.load(tiny_model_dir, colour_match="off", coherence=COHERENCE_OFF))
    untiled = base.outpaint(case, source, "a lighthouse", 7)
    variant = Retiled("v", base, 8).outpaint(case, source, "a lighthouse", 7)
    engine = OutpaintPipeline.load(tiny_model_dir, colour_match="off", coherence=COHERENCE_OFF,
                                   options=dataclasses.replace(EXACT, decode_tile=8))
    whole = engine(cv.SourceImage(rgb=source, known=np.ones((192, 128), bool)), request_for(case, "a lighthouse", 7))
    np.testing.assert_array_equal(variant, whole.image)
    assert not np.array_equal(variant, untiled)


def test_the_server_flag_reaches_the_pipeline(tiny_model_dir):
    from outpaint.server.cli import _decode_tile
    from outpaint.server.config import ServerConfig
    from outpaint.server.loading import load_pipeline

    assert (_decode_tile("auto"), _decode_tile("off"), _decode_tile("64")) == ("auto", None, 64)
    with pytest.raises(argparse.ArgumentTypeError, match="latent cells, 'off' or 'auto', got 'big'"):
        _decode_tile("big")
    base = ServerConfig(model=tiny_model_dir, no_auth=True)
    # "auto": the fast path's default with --fast, the exact path (one piece) without it.
    assert base.fast_path_options() == EXACT
    assert dataclasses.replace(base, fast=True).fast_path_options() == FastPathOptions()
    assert dataclasses.replace(base, fast=True, decode_tile=None).fast_path_options().decode_tile is None
    assert dataclasses.replace(base, decode_tile=7).problems() == [
        "--decode-tile must be off or >= 8 latent cells, got 7"]
    _, pipeline = load_pipeline(dataclasses.replace(base, decode_tile=8))
    assert pipeline.options == dataclasses.replace(EXACT, decode_tile=8)
