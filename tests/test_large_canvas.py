"""The large-canvas strategy (engine/large_canvas.py): when it applies, what the native-size pass sees,
and that a request through it keeps the pipeline's contracts (step events, exact source pixels,
determinism)."""

import dataclasses

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine import canvas as cv
from outpaint.engine.coherence import COHERENCE_DEFAULT, COHERENCE_OFF
from outpaint.engine.large_canvas import (
    LARGE_CANVAS_OFF,
    LargeCanvas,
    downsample_canvas,
    native_canvas_size,
)
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult

from .conftest import make_png, make_request


@pytest.mark.parametrize(("size", "native", "expected"), [
    ((768, 768), 256, (256, 256)),
    ((1024, 1024), 512, (512, 512)),
    ((1024, 576), 512, (704, 384)),  # 16:9 keeps its shape on the 64 px grid
    ((4096, 256), 512, (2048, 128)),
    ((8192, 64), 256, (2880, 64)),  # never below one grid cell
])
def test_native_canvas_size_keeps_the_aspect_ratio_at_the_native_area(size, native, expected):
    width, height = size
    assert native_canvas_size(width, height, native) == expected


def test_the_strategy_applies_only_past_its_threshold():
    policy = LargeCanvas(mode="upscale", threshold=2.0)
    assert not policy.applies(256, 256, 256)
    assert not policy.applies(512, 256, 256)  # exactly twice the native area
    assert policy.applies(384, 384, 256)
    assert policy.applies(1024, 1024, 512)
    assert not policy.applies(1024, 1024, 1024)
    assert not LARGE_CANVAS_OFF.applies(4096, 4096, 256)


@pytest.mark.parametrize(("field", "kwargs"), [
    ("large_canvas", {"mode": "tiles"}),
    ("large_canvas_threshold", {"threshold": 0.5}),
    ("large_canvas_refine", {"refine_strength": 1.5}),
])
def test_bad_settings_name_the_setting_and_what_is_allowed(field, kwargs):
    with pytest.raises(InvalidRequest) as info:
        LargeCanvas(**kwargs)
    assert info.value.field == field


def test_downsampled_canvas_keeps_source_colours_and_marks_only_whole_boxes_known():
    rgb = np.zeros((96, 96, 3), np.uint8)
    known = np.zeros((96, 96), bool)
    known[24:72, 30:72] = True  # the left edge (30) is not on the 3 px grid of a 96 -> 32 reduction
    rgb[known] = (200, 40, 90)
    canvas = cv.Canvas(rgb=rgb, known=known, mask=(~known).astype(np.float32), alpha=known.astype(np.float32))
    small = downsample_canvas(canvas, 32, 32)
    expected = np.zeros((32, 32), bool)
    expected[8:24, 10:24] = True  # box 10 covers columns 30-32: wholly known
    np.testing.assert_array_equal(small.known, expected)
    # Premultiplied: the partly known boxes at the edge are not darkened by the unknown zeros.
    assert (small.rgb[small.known] == (200, 40, 90)).all()
    assert (small.rgb[~small.known] == 0).all()


@pytest.fixture(scope="module")
def large_pipeline(tiny_model_dir):
    return OutpaintPipeline.load(tiny_model_dir, large_canvas=LargeCanvas(threshold=1.0, refine_strength=0.5))


def _run(pipeline, request):
    items = list(pipeline.generate(make_png(128, 128, seed=4), request))
    events = [item for item in items if isinstance(item, StepEvent)]
    result = items[-1]
    assert isinstance(result, OutpaintResult)
    return events, result


def test_a_large_request_composes_at_native_size_then_refines(large_pipeline):
    request = make_request(img_width=384, img_height=384, offset_x=128, offset_y=128, num_inference_steps=4)
    events, result = _run(large_pipeline, request)
    # One numbering over every pass: 4 native-size steps, the refine's 2 (strength 0.5 of 4), the coherence pass's.
    total = 6 + COHERENCE_DEFAULT.steps
    assert [e.index for e in events] == list(range(total))
    assert {e.total for e in events} == {total}
    assert large_pipeline.planned_steps(request) == total  # what a job's status shows as `steps` (server/jobs.py)
    assert len(result.step_seconds) == total
    assert result.native_pass is not None and result.native_pass.image.shape == (256, 256, 3)
    assert result.image.shape == (384, 384, 3)
    assert result.latents.shape == (1, 4, 48, 48)
    assert "native_pass" in result.timings
    # Every source pixel outside the band comes back bit for bit, as on the plain path.
    keep = result.canvas.alpha >= 1.0
    np.testing.assert_array_equal(result.image[keep], result.canvas.rgb[keep])
    # Deterministic from the seed, and different from denoising the full canvas directly.
    _, again = _run(large_pipeline, request)
    np.testing.assert_array_equal(again.image, result.image)
    plain = OutpaintPipeline.load(large_pipeline.folder, large_canvas=LARGE_CANVAS_OFF)(make_png(128, 128, seed=4),
                                                                                      request)
    assert plain.native_pass is None
    assert not np.array_equal(plain.image, result.image)


def test_refine_strength_zero_pastes_the_upscaled_composition_back(tiny_model_dir):
    pipeline = OutpaintPipeline.load(tiny_model_dir, large_canvas=LargeCanvas(threshold=1.0, refine_strength=0.0),
                                     colour_match="off", coherence=COHERENCE_OFF)  # the upscale itself, untouched
    request = make_request(img_width=384, img_height=384, offset_x=128, offset_y=128, num_inference_steps=3)
    events, result = _run(pipeline, request)
    assert [e.index for e in events] == [0, 1, 2]
    assert pipeline.planned_steps(request) == 3
    assert result.native_pass is not None
    new = result.canvas.alpha == 0.0
    from outpaint.engine.large_canvas import upscale

    np.testing.assert_array_equal(result.image[new], upscale(result.native_pass.image, 384, 384)[new])


def test_a_canvas_within_the_threshold_takes_the_plain_path(large_pipeline):
    request = make_request()  # 256x256: the tiny model's native size
    _, result = _run(large_pipeline, request)
    assert result.native_pass is None
    assert len(result.step_seconds) == request.num_inference_steps + COHERENCE_DEFAULT.steps


def test_an_explicit_noise_is_the_full_size_pass_noise(large_pipeline):
    request = dataclasses.replace(make_request(img_width=384, img_height=384, offset_x=128, offset_y=128),
                                  num_inference_steps=2)
    with pytest.raises(InvalidRequest, match="noise"):
        large_pipeline(make_png(128, 128), request, noise=np.zeros((1, 4, 32, 32), np.float32))
    noise = np.random.default_rng(1).standard_normal((1, 4, 48, 48), dtype=np.float32)
    first = large_pipeline(make_png(128, 128), request, noise=noise)
    second = large_pipeline(make_png(128, 128), request, noise=noise)
    np.testing.assert_array_equal(first.image, second.image)
