"""TensorRT optimisation profiles from the graph specs: pure functions, checked on the CPU."""

from __future__ import annotations

import pytest

from outpaint.core.graphs import graph_specs
from outpaint.core.trt_profiles import AxisRange, CanvasRange, ShapeProfile, profile_for
from outpaint.kernels.ddim_step import StepKernel

SPECS = {s.name: s for s in graph_specs(unet_in_channels=4, text_hidden=768)}


def test_unet_profile_spans_256_to_1024_with_the_guidance_batch():
    profile = profile_for(SPECS["unet"], CanvasRange.square(256, 512, 1024), batch=1)
    assert profile["sample"] == ShapeProfile(min=(1, 4, 32, 32), opt=(2, 4, 64, 64), max=(2, 4, 128, 128))
    assert profile["timestep"] == ShapeProfile((1,), (1,), (1,))
    assert profile["encoder_hidden_states"] == ShapeProfile((1, 77, 768), (2, 77, 768), (2, 77, 768))


def test_guided_only_profile_fixes_the_doubled_batch():
    profile = profile_for(SPECS["unet"], CanvasRange.square(), batch=2, guided_only=True)
    assert {p.min[0] for p in (profile["sample"], profile["encoder_hidden_states"])} == {4}


def test_static_canvas_gives_equal_min_opt_max_for_pixels_and_latents():
    canvas = CanvasRange.static(512, 768)
    assert canvas.is_static and canvas.tag == "512x768"
    image = profile_for(SPECS["vae_encoder"], canvas)["image"]
    assert image.min == image.opt == image.max == (1, 3, 512, 768)
    latent = profile_for(SPECS["vae_decoder"], canvas)["latent"]
    assert latent.min == latent.max == (1, 4, 64, 96)


def test_text_encoder_profile_has_only_the_prompt_batch():
    ids = profile_for(SPECS["text_encoder"], CanvasRange.square(), batch=1)["input_ids"]
    assert ids == ShapeProfile((1, 77), (1, 77), (1, 77))


def test_nine_channel_unet_profile_keeps_its_channels():
    spec = {s.name: s for s in graph_specs(unet_in_channels=9, text_hidden=768)}["unet"]
    assert profile_for(spec, CanvasRange.square())["sample"].max == (2, 9, 128, 128)


def test_step_kernel_profile_follows_the_latent_grid():
    kernel = StepKernel(guided=True, blend=True)
    profile = profile_for(kernel.spec(), CanvasRange.square(256, 512, 1024))
    assert profile["eps"] == ShapeProfile((2, 4, 32, 32), (2, 4, 64, 64), (2, 4, 128, 128))
    assert profile["mask"].opt == (1, 1, 64, 64)
    assert profile["alpha_t"] == ShapeProfile((1,), (1,), (1,))


def test_canvas_range_tags_and_coverage():
    canvas = CanvasRange(AxisRange(256, 512, 768), AxisRange(256, 768, 1024))
    assert canvas.tag == "h256-512-768.w256-768-1024"
    assert canvas.covers(512, 1024) and not canvas.covers(1024, 512)


@pytest.mark.parametrize("bad", [lambda: CanvasRange.square(200, 512, 1024), lambda: CanvasRange.square(512, 256, 1024),
                                 lambda: profile_for(SPECS["unet"], CanvasRange.square(), batch=0)])
def test_bad_ranges_are_refused_with_the_rule(bad):
    with pytest.raises(ValueError, match=r"multiple of 64|min <= opt <= max|at least 1"):
        bad()
