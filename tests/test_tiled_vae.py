"""The tiled VAE decode and encode (engine/tiled_vae.py): tiles cover the canvas with the overlap
asked, the blend weights sum to one, a decoder or encoder without context gives exactly the whole
result, and canvases that fit in one tile run bit for bit as before."""

import argparse
import dataclasses
import re

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine.fast_path import EXACT, FastPathOptions
from outpaint.engine.tiled_vae import decode_tiled, encode_tiled, tile_starts


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


def _pooled(image: np.ndarray) -> np.ndarray:
    """An encoder with no context: each 8x8 block's mean of the three channels, and their sum."""
    n, c, h, w = image.shape
    means = image.reshape(n, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))
    return np.concatenate([means, means.sum(axis=1, keepdims=True)], axis=1).astype(np.float32)


@pytest.mark.parametrize("shape", [(96, 128), (128, 64), (100, 72), (64, 200)])
def test_an_encoder_without_context_is_encoded_exactly(shape):
    image = np.random.default_rng(2).uniform(-1, 1, (1, 3, shape[0] * 8, shape[1] * 8)).astype(np.float32)
    calls = []

    def encode(x):
        calls.append(x.shape[2:])
        return _pooled(x)

    tiled = encode_tiled(encode, image, 64, 16)
    assert tiled.shape == (1, 4, *shape)
    np.testing.assert_allclose(tiled, _pooled(image), rtol=0, atol=1e-5)
    assert len(calls) > 1 and all(h <= 512 and w <= 512 for h, w in calls)


def test_one_tile_is_the_whole_encode():
    image = np.random.default_rng(3).uniform(-1, 1, (1, 3, 512, 384)).astype(np.float32)
    np.testing.assert_array_equal(encode_tiled(_pooled, image, 64, 16), _pooled(image))


def test_bad_tiles_name_the_option():
    for name in ("decode_tile", "encode_tile"):
        with pytest.raises(InvalidRequest, match=name):
            FastPathOptions(**{name: 4})
    with pytest.raises(ValueError, match="overlap"):
        decode_tiled(_pointwise, np.zeros((1, 4, 80, 80), np.float32), 64, 64)
    with pytest.raises(ValueError, match="overlap"):
        encode_tiled(_pooled, np.zeros((1, 3, 640, 640), np.float32), 64, 80)


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


def test_the_pipeline_encodes_in_tiles_past_the_tile_and_not_within_it(tiny_model_dir):
    from outpaint.core.graphs import VAE_ENCODER
    from outpaint.engine.pipeline import OutpaintPipeline

    whole = OutpaintPipeline.load(tiny_model_dir, "ort-cpu")
    tiled = OutpaintPipeline.load(tiny_model_dir, "ort-cpu", options=dataclasses.replace(EXACT, encode_tile=8))
    shapes = []
    graph = tiled.graphs[VAE_ENCODER]
    run = graph.run

    def recorded(feeds):
        shapes.append(next(iter(feeds.values())).shape)
        return run(feeds)

    graph.run = recorded  # type: ignore[method-assign]
    rgb = np.random.default_rng(4).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    np.testing.assert_array_equal(whole.encode_image(rgb[:64, :64]), tiled.encode_image(rgb[:64, :64]))
    assert shapes == [(1, 3, 64, 64)]
    a, b = whole.encode_image(rgb), tiled.encode_image(rgb)
    assert a.shape == b.shape == (1, 4, 16, 24)
    assert len(shapes) > 2 and all(s[2] <= 64 and s[3] <= 64 for s in shapes[1:])
    assert not np.array_equal(a, b), "each tile's encoder sees only the tile"
    assert np.abs(a - b).mean() < np.abs(a).mean(), "the tiles' latents are blended, not noise"


def test_the_benchmark_variant_is_the_pipeline_with_tiles(tiny_model_dir):
    """`+tile-N` decodes the base's latents again: it must give exactly what the pipeline loaded with
    that decode tile gives."""
    from outpaint.benchmarks.quality.cases import Case
    from outpaint.benchmarks.quality.metrics import Rect
    from outpaint.benchmarks.quality.run import QualityConfig, UnknownSystem, build_systems, tile_variant
    from outpaint.benchmarks.quality.systems import Ours, Retiled, request_for
    from outpaint.engine import canvas as cv
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.pipeline import OutpaintPipeline

    assert tile_variant("outpaint-ort-cpu+tile-8") == 8
    with pytest.raises(UnknownSystem, match="decode_tile"):
        tile_variant("outpaint-ort-cpu+tile-4")
    assert tile_variant("outpaint-ort-cpu+encode-tile-16") == 16
    with pytest.raises(UnknownSystem, match=r"tiled-encode variant is outpaint-ort-cpu\+encode-tile-N.*encode_tile"):
        tile_variant("outpaint-ort-cpu+encode-tile-2")
    (encoded,) = build_systems(QualityConfig(model=tiny_model_dir, systems=["outpaint-ort-cpu+encode-tile-16"]))
    assert isinstance(encoded, Ours) and isinstance(encoded.pipeline, OutpaintPipeline)
    assert encoded.pipeline.options == dataclasses.replace(EXACT, encode_tile=16)
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


def test_the_server_flags_reach_the_pipeline(tiny_model_dir):
    from outpaint.server.cli import _vae_tile, add_serve
    from outpaint.server.config import ServerConfig
    from outpaint.server.loading import load_pipeline

    assert (_vae_tile("auto"), _vae_tile("off"), _vae_tile("64")) == ("auto", None, 64)
    with pytest.raises(argparse.ArgumentTypeError, match="latent cells, 'off' or 'auto', got 'big'"):
        _vae_tile("big")
    parser = argparse.ArgumentParser()
    add_serve(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(tiny_model_dir), "--decode-tile", "off", "--encode-tile", "64"])
    assert (args.decode_tile, args.encode_tile) == (None, 64)
    base = ServerConfig(model=tiny_model_dir, no_auth=True)
    # "auto": the fast path's default with --fast, the exact path (one piece) without it.
    assert base.fast_path_options() == EXACT
    assert dataclasses.replace(base, fast=True).fast_path_options() == FastPathOptions()
    fast_untiled = dataclasses.replace(base, fast=True, decode_tile=None, encode_tile=None).fast_path_options()
    assert (fast_untiled.decode_tile, fast_untiled.encode_tile) == (None, None)
    assert dataclasses.replace(base, decode_tile=7, encode_tile=3).problems() == [
        "--decode-tile must be off, auto or >= 8 latent cells, got 7",
        "--encode-tile must be off, auto or >= 8 latent cells, got 3"]
    _, pipeline = load_pipeline(dataclasses.replace(base, decode_tile=8, encode_tile=16))
    assert pipeline.options == dataclasses.replace(EXACT, decode_tile=8, encode_tile=16)


@pytest.mark.parametrize("stage", ["decode", "encode"])
def test_the_time_benchmark_runs_both_halves_whole_and_tiled(tiny_model_dir, stage):
    from outpaint.benchmarks.vae_tiles import measure

    (row,) = measure(tiny_model_dir, [(128, 96)], tile=8, runs=1, stage=stage)
    assert (row["stage"], row["canvas"], row["tile_cells"], row["runs"]) == (stage, "128x96", 8, 1)
    assert row["whole_s"] > 0 and row["tiled_s"] > 0


def test_the_memory_benchmark_says_which_graph_run_held_each_peak(tiny_model_dir):
    from outpaint.benchmarks.memory import measure

    result = measure(tiny_model_dir, [(64, 64), (192, 128)], steps=1, backend="ort-cpu", decode_tile=8,
                     encode_tile=8)
    assert (result["backend"], result["decode_tile"], result["encode_tile"]) == ("ort-cpu", 8, 8)
    load, small, large = result["rows"]
    assert load["after"] == "load" and "sampled_peaks" not in load
    assert (small["after"], large["after"]) == ("64x64", "192x128")
    for row in (small, large):
        assert row["VmHWM"] >= row["VmRSS"] > 0 and 0 < row["idle_VmRSS"] <= row["VmHWM"]
        peaks = row["sampled_peaks"]
        assert list(peaks.values()) == sorted(peaks.values(), reverse=True)
        assert all(0 < gib <= row["VmHWM"] + 0.01 for gib in peaks.values())
        assert all(re.fullmatch(r"(after )?\w+ [\dx]+|before any graph run", key) for key in peaks), peaks


def test_graph_peaks_attribute_memory_to_the_run_that_held_it():
    import time

    from outpaint.benchmarks.memory import GraphPeaks

    class Holder:
        def __init__(self, mib: int) -> None:
            self.mib = mib

        def run(self, feeds):
            held = np.ones(self.mib * 2**18, np.float32)  # touched: resident
            time.sleep(0.3)
            return {"out": held[:1]}

    graphs = {"small": Holder(1), "big": Holder(400)}
    peaks = GraphPeaks(graphs, interval_s=0.005)
    graphs["small"].run({"x": np.zeros((1, 3, 8, 8))})
    graphs["big"].run({"x": np.zeros((2, 4))})
    graphs["small"].run({"x": np.zeros((1, 3, 8, 8))})
    taken = peaks.take()
    assert next(iter(taken)) == "big 2x4"
    assert taken["big 2x4"] - taken["small 1x3x8x8"] > 0.3  # GiB: the 400 MiB array
    time.sleep(0.05)
    assert set(peaks.take()) == {"after small 1x3x8x8"}  # the time since: the last run's leftovers
    peaks.stop()
