"""The coherence pass (engine/coherence.py): the band as pure functions, its settings, and a request
through it keeping the pipeline's contracts (one step numbering, exact source pixels, the first pass
untouched outside the band, the seam scored on the final image, determinism)."""

import argparse
import dataclasses

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine import canvas as cv
from outpaint.engine import coherence
from outpaint.engine.coherence import (
    COHERENCE_OFF,
    Coherence,
    blend_band,
    coherence_masks,
    has_boundary,
    plan_steps,
)
from outpaint.engine.large_canvas import LargeCanvas
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult
from outpaint.engine.schedulers import SCHEDULERS, NoiseScheduleConfig, get_scheduler
from outpaint.engine.seam import seam_score

from .conftest import make_png, make_request


def _canvas(mask_expand: int = 8) -> cv.Canvas:
    """A 128x128 canvas with the source on its left 64 columns."""
    source = cv.SourceImage(rgb=np.full((128, 64, 3), 200, np.uint8), known=np.ones((128, 64), bool))
    return cv.make_canvas(source, width=128, height=128, mask_expand=mask_expand)


def test_the_band_is_the_first_mask_within_the_width_of_the_source():
    canvas = _canvas()
    regenerate, weight = coherence_masks(canvas.known, canvas.mask, 32)
    row_regenerate, row_weight = regenerate[50], weight[50]
    # Source columns 0-63: regenerated only in the paste-back ramp (56-63, mask_expand 8), weight 1 there.
    assert (row_regenerate[:56] == 0).all() and (row_weight[:56] == 0).all()
    assert (row_regenerate[56:64] == 1).all() and (row_weight[56:64] == 1).all()
    # New columns 64-127 (1 to 64 px from the source): weight 1 up to 16 px, linear to 0 at 32, nothing past.
    distance = np.arange(64, 128) - 63
    np.testing.assert_array_equal(row_regenerate[64:], (distance <= 32).astype(np.float32))
    expected = np.clip((32 - distance) / 16, 0, 1).astype(np.float32)
    np.testing.assert_allclose(row_weight[64:], np.where(distance <= 32, expected, 0), atol=1e-6)
    assert weight.dtype == regenerate.dtype == np.float32
    # Nothing outside the first pass's mask is touched, whatever the width.
    for width in (8, 64, 256):
        regenerate, weight = coherence_masks(canvas.known, canvas.mask, width)
        assert (regenerate[canvas.mask == 0] == 0).all() and (weight[canvas.mask == 0] == 0).all()


def test_no_boundary_no_band():
    known = np.ones((64, 64), bool)
    assert not has_boundary(known) and not has_boundary(~known)
    for k in (known, ~known):
        regenerate, weight = coherence_masks(k, (~k).astype(np.float32), 32)
        assert not regenerate.any() and not weight.any()


def test_the_blend_keeps_the_first_image_bit_for_bit_where_the_weight_is_zero():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    second = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    canvas = _canvas()
    _, weight = coherence_masks(canvas.known, canvas.mask, 32)
    out = blend_band(first, second, weight)
    outside = weight == 0
    np.testing.assert_array_equal(out[outside], first[outside])
    full = weight == 1
    np.testing.assert_array_equal(out[full], second[full])
    # After paste-back every source pixel past the ramp is the source's, as without the pass.
    pasted = cv.paste_back(out, canvas)
    keep = canvas.alpha >= 1.0
    np.testing.assert_array_equal(pasted[keep], canvas.rgb[keep])


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 12])
@pytest.mark.parametrize("strength", [0.05, 0.2, 0.35, 0.5, 0.7, 1.0])
def test_the_pass_plan_has_exactly_the_steps_asked(steps, strength):
    config = NoiseScheduleConfig()
    for name in SCHEDULERS:
        plan = get_scheduler(name).plan(config, plan_steps(steps, strength), strength)
        assert plan.num_steps == steps


@pytest.mark.parametrize(("field", "kwargs"), [
    ("coherence", {"mode": "on"}),
    ("coherence_width", {"width": 4}),
    ("coherence_width", {"width": 300}),
    ("coherence_width", {"width": 16.5}),
    ("coherence_strength", {"strength": 0.0}),
    ("coherence_strength", {"strength": 1.5}),
    ("coherence_steps", {"steps": 0}),
    ("coherence_steps", {"steps": 51}),
    ("coherence_steps", {"steps": True}),
])
def test_bad_settings_name_the_setting_and_what_is_allowed(field, kwargs):
    with pytest.raises(InvalidRequest) as info:
        Coherence(**{"mode": "band", **kwargs})
    assert info.value.field == field
    assert "must be" in info.value.message


def test_the_flags_parse_and_reject_with_the_flag_named():
    parser = argparse.ArgumentParser()
    coherence.add_arguments(parser)
    assert coherence.from_arguments(parser.parse_args([])).mode == coherence.COHERENCE_DEFAULT.mode
    assert coherence.from_arguments(parser.parse_args(["--coherence", "band"])) == Coherence()
    on = coherence.from_arguments(parser.parse_args(
        ["--coherence", "band", "--coherence-width", "48", "--coherence-strength", "0.3", "--coherence-steps", "6"]))
    assert on == Coherence("band", 48, 0.3, 6)
    with pytest.raises(SystemExit, match="--coherence-width: must be a whole number of pixels from 8 to 256"):
        coherence.from_arguments(parser.parse_args(["--coherence", "band", "--coherence-width", "2"]))
    with pytest.raises(SystemExit):  # argparse: not a mode
        parser.parse_args(["--coherence", "blur"])


def _run(pipeline, request, source=None):
    items = list(pipeline.generate(source or make_png(128, 128, seed=4), request))
    events = [item for item in items if isinstance(item, StepEvent)]
    result = items[-1]
    assert isinstance(result, OutpaintResult)
    return events, result


SETTINGS = Coherence(mode="band", width=24, strength=0.5, steps=3)


@pytest.fixture(scope="module")
def cohering_pipeline(tiny_model_dir):
    return OutpaintPipeline.load(tiny_model_dir, coherence=SETTINGS)


def test_a_request_with_the_pass_numbers_its_steps_after_the_main_ones(cohering_pipeline):
    request = make_request(num_inference_steps=4)
    events, result = _run(cohering_pipeline, request)
    assert [e.index for e in events] == list(range(7))
    assert {e.total for e in events} == {7}
    assert len(result.step_seconds) == 7
    first = result.first_pass
    assert first is not None and first.first_pass is None
    assert len(first.step_seconds) == 4
    assert {"coherence_encode", "coherence_denoise", "coherence_finish", "total"} <= set(result.timings)
    # Source pixels past the paste-back ramp are the source's; outside the band the first pass's, exactly.
    keep = result.canvas.alpha >= 1.0
    np.testing.assert_array_equal(result.image[keep], result.canvas.rgb[keep])
    _, weight = coherence_masks(result.canvas.known, result.canvas.mask, SETTINGS.width)
    outside = weight == 0
    np.testing.assert_array_equal(result.image[outside], first.image[outside])
    assert not np.array_equal(result.image[~outside], first.image[~outside])  # the pass did change the band
    # The seam figure is the final image's.
    assert result.seam == seam_score(result.image, result.canvas.known)
    # Deterministic from the seed; the same first pass as the pipeline without the pass.
    _, again = _run(cohering_pipeline, request)
    np.testing.assert_array_equal(again.image, result.image)
    _, plain = _run(OutpaintPipeline.load(cohering_pipeline.folder, coherence=COHERENCE_OFF), request)
    assert plain.first_pass is None
    np.testing.assert_array_equal(plain.image, first.image)


def test_the_pass_follows_the_large_canvas_refine(tiny_model_dir):
    pipeline = OutpaintPipeline.load(tiny_model_dir, coherence=SETTINGS,
                                     large_canvas=LargeCanvas(threshold=1.0, refine_strength=0.5))
    request = make_request(img_width=384, img_height=384, offset_x=128, offset_y=128, num_inference_steps=4)
    events, result = _run(pipeline, request)
    # 4 native-size steps, the refine's 2, the pass's 3: one numbering.
    assert [e.index for e in events] == list(range(9))
    assert {e.total for e in events} == {9}
    assert result.native_pass is not None and result.first_pass is not None
    keep = result.canvas.alpha >= 1.0
    np.testing.assert_array_equal(result.image[keep], result.canvas.rgb[keep])


def test_a_canvas_without_new_area_skips_the_pass(cohering_pipeline):
    request = make_request(img_width=128, img_height=128, offset_x=0, offset_y=0, num_inference_steps=4)
    events, result = _run(cohering_pipeline, request)
    assert [e.total for e in events] == [4] * 4
    assert result.first_pass is None


@pytest.mark.parametrize("scheduler", ["Euler", "Heun"])
def test_the_pass_runs_with_other_schedulers(cohering_pipeline, scheduler):
    assert scheduler in SCHEDULERS
    events, result = _run(cohering_pipeline, make_request(num_inference_steps=4, scheduler=scheduler))
    assert events[-1].total == events[-1].index + 1 == len(result.step_seconds)
    assert result.first_pass is not None


def test_the_pass_on_a_nine_channel_unet(tiny_inpainting_model_dir):
    pipeline = OutpaintPipeline.load(tiny_inpainting_model_dir, coherence=SETTINGS)
    events, result = _run(pipeline, make_request(num_inference_steps=2))
    assert len(events) == 5
    keep = result.canvas.alpha >= 1.0
    np.testing.assert_array_equal(result.image[keep], result.canvas.rgb[keep])


def test_the_benchmark_variant_is_the_pipeline_with_the_pass(tiny_model_dir):
    """`+coherence-W-S-N` post-processes the colour-off base's images: it must give exactly what the
    pipeline with the default colour match and the pass gives."""
    from outpaint.benchmarks.quality.cases import Case
    from outpaint.benchmarks.quality.metrics import Rect
    from outpaint.benchmarks.quality.run import coherence_variant
    from outpaint.benchmarks.quality.systems import Cohered, Ours, request_for
    from outpaint.engine.colour_match import COLOUR_MATCH_DEFAULT

    settings = coherence_variant("outpaint-ort-cpu+coherence-24-0.5-3")
    assert settings == SETTINGS
    with pytest.raises(ValueError, match="WIDTH-STRENGTH-STEPS"):
        coherence_variant("outpaint-ort-cpu+coherence-24-0.5")
    with pytest.raises(ValueError, match="coherence_width"):
        coherence_variant("outpaint-ort-cpu+coherence-2-0.5-3")
    case = Case("t", 256, 192, Rect(0, 0, 128, 192))
    source = np.random.default_rng(3).integers(0, 256, (192, 128, 3), dtype=np.uint8)
    base = Ours("outpaint-ort-cpu", OutpaintPipeline.load(tiny_model_dir, colour_match="off", coherence=COHERENCE_OFF))
    base.outpaint(case, source, "a lighthouse", 7)
    variant = Cohered("v", base, settings).outpaint(case, source, "a lighthouse", 7)
    engine = OutpaintPipeline.load(tiny_model_dir, colour_match=COLOUR_MATCH_DEFAULT, coherence=settings)
    whole = engine(cv.SourceImage(rgb=source, known=np.ones((192, 128), bool)),
                   dataclasses.replace(request_for(case, "a lighthouse", 7)))
    np.testing.assert_array_equal(variant, whole.image)


def test_the_server_config_reaches_the_pipeline(tiny_model_dir):
    from outpaint.server.config import ServerConfig
    from outpaint.server.loading import load_pipeline

    _, pipeline = load_pipeline(ServerConfig(model=tiny_model_dir, no_auth=True, coherence=SETTINGS))
    assert pipeline.coherence == SETTINGS
