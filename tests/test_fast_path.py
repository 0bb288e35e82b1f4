"""The fast path: every lever off is exactly the reference pipeline; each lever is exact outside the mask."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine.canvas import SourceImage
from outpaint.engine.fast_path import EXACT, FastPathOptions, feature_cached_unet, unet_calls, unet_window
from outpaint.engine.pipeline import OutpaintPipeline
from outpaint.engine.request import OutpaintRequest

OFF = FastPathOptions(decode_margin=None, window_margin=None, unguided_tail_steps=0, feature_cache_interval=1,
                      decode_tile=None, encode_tile=None)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    source = SourceImage(rgb=rng.integers(0, 256, (256, 128, 3), dtype=np.uint8), known=np.ones((256, 128), bool))
    request = OutpaintRequest(prompt="a harbour", img_width=256, img_height=256, num_inference_steps=4, seed=5)
    return source, request


@pytest.fixture(scope="module")
def reference(tiny_pipeline, case):
    return tiny_pipeline(*case)


def _fast(tiny_model_dir, options):
    return OutpaintPipeline.load(tiny_model_dir, "ort-cpu", options=options)


def test_all_levers_off_is_the_reference_pipeline(tiny_model_dir, case, reference):
    assert OFF == EXACT and OFF.exact and not FastPathOptions().exact
    result = _fast(tiny_model_dir, OFF)(*case)
    np.testing.assert_array_equal(result.latents, reference.latents)
    np.testing.assert_array_equal(result.image, reference.image)


@pytest.mark.parametrize("options", [
    FastPathOptions(decode_margin=2, window_margin=None, unguided_tail_steps=0, feature_cache_interval=1),
    FastPathOptions(decode_margin=None, window_margin=2, unguided_tail_steps=0, feature_cache_interval=1),
    FastPathOptions(decode_margin=None, window_margin=None, unguided_tail_steps=0, feature_cache_interval=2),
    FastPathOptions(decode_margin=2, window_margin=2, unguided_tail_steps=2, feature_cache_interval=3),
], ids=["region-decode", "unet-window", "feature-cache", "all"])
def test_each_lever_keeps_the_source_exact_and_changes_only_the_mask(tiny_model_dir, case, reference, options):
    result = _fast(tiny_model_dir, options)(*case)
    regenerate = reference.canvas.mask > 0
    np.testing.assert_array_equal(result.image[~regenerate], reference.image[~regenerate])
    assert result.image.shape == reference.image.shape
    differs = np.any(result.image != reference.image, axis=-1)
    assert differs[regenerate].any(), "the lever did not change anything: was it applied?"


def test_unet_window_is_aligned_and_skipped_when_it_would_be_the_whole_canvas(reference):
    from outpaint.engine.canvas import latent_mask

    mask = latent_mask(reference.canvas.mask)
    window = unet_window(FastPathOptions(window_margin=2), mask, unet_in_channels=4)
    assert window is not None and window.width % 8 == 0 and window.height == 32
    assert unet_window(FastPathOptions(window_margin=40), mask, unet_in_channels=4) is None
    assert unet_window(FastPathOptions(window_margin=2), mask, unet_in_channels=9) is None  # not blended


def test_guidance_one_makes_the_unguided_tail_exact(tiny_model_dir, tiny_pipeline, case):
    source, request = case
    request = dataclasses.replace(request, guidance_scale=1.0)
    expected = tiny_pipeline(source, request)
    tail_only = FastPathOptions(decode_margin=None, window_margin=None, unguided_tail_steps=3, feature_cache_interval=1)
    result = _fast(tiny_model_dir, tail_only)(source, request)
    np.testing.assert_array_equal(result.latents, expected.latents)


@pytest.mark.parametrize("kwargs,field", [
    ({"decode_margin": -1}, "decode_margin"), ({"window_margin": -2}, "window_margin"),
    ({"unguided_tail_steps": -1}, "unguided_tail_steps"), ({"feature_cache_interval": 0}, "feature_cache_interval"),
])
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(InvalidRequest, match=field):
        FastPathOptions(**kwargs)


def test_feature_cache_runs_the_whole_unet_every_kth_call_and_serves_the_tail_from_the_prompt_half():
    calls: list[tuple[str, int]] = []

    def deep(feeds):
        batch = feeds["sample"].shape[0]
        calls.append(("deep", batch))
        feature = np.arange(batch, dtype=np.float32).reshape(batch, 1, 1, 1) * np.ones((1, 3, 2, 2), np.float32)
        return {"out_sample": feeds["sample"], "deep_feature": feature}

    def shallow(feeds):
        calls.append(("shallow", feeds["sample"].shape[0]))
        assert feeds["deep_feature"].shape[0] == feeds["sample"].shape[0]
        return {"out_sample": feeds["sample"] + feeds["deep_feature"][:, :1]}

    unet = feature_cached_unet(deep, shallow, interval=3)
    for batch in (2, 2, 2, 2, 2, 1, 1):
        out = unet({"sample": np.zeros((batch, 1, 2, 2), np.float32)})
    assert calls == [("deep", 2), ("shallow", 2), ("shallow", 2), ("deep", 2), ("shallow", 2), ("shallow", 1),
                     ("deep", 1)]
    assert out["out_sample"].shape == (1, 1, 2, 2)
    fresh = feature_cached_unet(deep, shallow, interval=3)
    calls.clear()
    fresh({"sample": np.zeros((1, 1, 2, 2), np.float32)})
    fresh({"sample": np.zeros((2, 1, 2, 2), np.float32)})  # a batch-1 feature cannot serve batch 2
    assert calls == [("deep", 1), ("deep", 2)]


def test_prompt_half_of_the_cached_feature_serves_batch_one():
    seen = []

    def deep(feeds):
        return {"out_sample": feeds["sample"], "deep_feature": np.stack([np.full((3, 2, 2), v, np.float32)
                                                                          for v in (7.0, 9.0)])}

    def shallow(feeds):
        seen.append(float(feeds["deep_feature"][0, 0, 0, 0]))
        return {"out_sample": feeds["sample"]}

    unet = feature_cached_unet(deep, shallow, interval=4)
    unet({"sample": np.zeros((2, 1, 2, 2), np.float32)})
    unet({"sample": np.zeros((1, 1, 2, 2), np.float32)})
    assert seen == [9.0]  # [uncond, cond]: the cond half


def test_feature_cache_needs_the_split_graphs_and_says_how_to_get_them(tiny_model_dir, tmp_path):
    import json
    import shutil

    from outpaint.core.errors import ModelError

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"] = {k: v for k, v in manifest["graphs"].items() if not k.startswith("unet_")}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"unet_deep, unet_shallow.*outpaint export"):
        _fast(copy, FastPathOptions(feature_cache_interval=2))
    _fast(copy, FastPathOptions(feature_cache_interval=1))  # off: not needed


def test_feature_cache_loads_the_split_instead_of_the_whole_unet(tiny_model_dir):
    caching = _fast(tiny_model_dir, FastPathOptions(feature_cache_interval=2))
    assert {"unet_deep", "unet_shallow"} <= set(caching.graphs) and "unet" not in caching.graphs
    assert "unet" in _fast(tiny_model_dir, OFF).graphs


def test_levers_on_the_host_loop_refuse_a_forced_device_loop(tiny_model_dir):
    with pytest.raises(InvalidRequest, match="device_loop"):
        OutpaintPipeline.load(tiny_model_dir, "ort-cpu", device_loop=True, options=FastPathOptions())
    assert OutpaintPipeline.load(tiny_model_dir, "ort-cpu", options=FastPathOptions()).device_runtime is None


@pytest.mark.parametrize("interval,tail", [(1, 0), (2, 0), (3, 0), (3, 2), (4, 2), (5, 0), (5, 3), (7, 25)])
def test_unet_calls_counts_what_the_cache_and_the_tail_run(interval, tail):
    kinds: list[tuple[str, int]] = []

    def deep(feeds):
        kinds.append(("whole", feeds["sample"].shape[0]))
        return {"out_sample": feeds["sample"], "deep_feature": np.zeros((2, 1, 2, 2), np.float32)}

    def shallow(feeds):
        kinds.append(("shallow", feeds["sample"].shape[0]))
        return {"out_sample": feeds["sample"]}

    unet = feature_cached_unet(deep, shallow, interval)
    steps = 25
    for k in range(steps):
        unet({"sample": np.zeros((1 if k >= steps - tail else 2, 1, 2, 2), np.float32)})
    counted = unet_calls(FastPathOptions(feature_cache_interval=interval, unguided_tail_steps=tail), steps)
    assert counted.whole == sum(kind == "whole" for kind, _ in kinds)
    assert counted.shallow == sum(kind == "shallow" for kind, _ in kinds)
    assert counted.unguided == sum(batch == 1 for _, batch in kinds)
