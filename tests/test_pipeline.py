"""The loaded pipeline: reproducibility, seeds, cancellation, concurrency, errors, strength, 9 channels."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest, ModelError
from outpaint.engine.coherence import COHERENCE_DEFAULT
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult

from .conftest import make_png, make_request


@pytest.fixture(scope="module")
def source() -> bytes:
    return make_png(128, 128, seed=3)


def test_same_seed_same_image(tiny_pipeline, source):
    first = tiny_pipeline(source, make_request())
    second = tiny_pipeline(source, make_request())
    assert first.image.tobytes() == second.image.tobytes()


def test_another_seed_another_image(tiny_pipeline, source):
    first = tiny_pipeline(source, make_request(seed=1))
    second = tiny_pipeline(source, make_request(seed=2))
    changed = np.abs(first.image.astype(int) - second.image.astype(int)).max(axis=2) > 0
    assert changed[~first.canvas.known].mean() > 0.5
    assert not changed[first.canvas.alpha == 1.0].any(), "the kept source never changes"


def test_seed_minus_one_draws_and_reports_a_seed_that_reproduces(tiny_pipeline, source):
    drawn = tiny_pipeline(source, make_request(seed=-1))
    assert 0 <= drawn.seed < 2**32
    again = tiny_pipeline(source, make_request(seed=drawn.seed))
    assert drawn.image.tobytes() == again.image.tobytes()


def test_generate_yields_every_step_then_the_result(tiny_pipeline, source):
    items = list(tiny_pipeline.generate(source, make_request(num_inference_steps=6)))
    steps = [i for i in items if isinstance(i, StepEvent)]
    total = 6 + COHERENCE_DEFAULT.steps  # the request's steps, then the coherence pass's (engine/coherence.py)
    assert [s.index for s in steps] == list(range(total)) and all(s.total == total for s in steps)
    assert isinstance(items[-1], OutpaintResult)
    assert {"text_encoder", "vae_encode", "denoise", "vae_decode", "total"} <= set(items[-1].timings)


class _CountingRunner:
    """Wraps one pipeline instance's UNet runner to count calls (no global patching)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.name, self.input_names, self.output_names = inner.name, inner.input_names, inner.output_names

    def run(self, feeds):
        self.calls += 1
        return self.inner.run(feeds)


def test_stopping_the_generator_stops_the_loop(tiny_model_dir, source):
    pipeline = OutpaintPipeline.load(tiny_model_dir)
    counter = _CountingRunner(pipeline.graphs["unet"])
    pipeline.graphs["unet"] = counter
    generation = pipeline.generate(source, make_request(num_inference_steps=10))
    seen = [next(generation), next(generation)]
    generation.close()
    assert [s.index for s in seen if isinstance(s, StepEvent)] == [0, 1]
    assert counter.calls == 2, "no UNet call after the consumer stopped"
    with pytest.raises(StopIteration):
        next(generation)


def test_concurrent_calls_on_one_pipeline_match_sequential_ones(tiny_pipeline, source):
    seeds = [5, 6, 7, 8]
    expected = {s: tiny_pipeline(source, make_request(seed=s)).image for s in seeds}
    results: dict[int, np.ndarray] = {}

    def work(seed: int) -> None:
        results[seed] = tiny_pipeline(source, make_request(seed=seed)).image

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for s in seeds:
        assert results[s].tobytes() == expected[s].tobytes()


def test_strength_below_one_starts_from_the_noised_infill(tiny_pipeline, source):
    full = tiny_pipeline(source, make_request(strength=1.0, num_inference_steps=10))
    partial = tiny_pipeline(source, make_request(strength=0.3, num_inference_steps=10))
    assert partial.step_seconds and len(partial.step_seconds) == 3 + COHERENCE_DEFAULT.steps  # and the pass's
    assert partial.image.tobytes() != full.image.tobytes()


def test_explicit_noise_of_the_wrong_shape_is_rejected(tiny_pipeline, source):
    with pytest.raises(InvalidRequest, match="noise"):
        tiny_pipeline(source, make_request(), noise=np.zeros((1, 4, 8, 8), np.float32))


def test_canvas_not_a_multiple_of_64_is_rejected(tiny_pipeline, source):
    with pytest.raises(InvalidRequest) as info:
        tiny_pipeline(source, make_request(img_width=200))
    assert info.value.field == "img_width"


def test_unknown_scheduler_lists_the_implemented_ones(tiny_pipeline, source):
    with pytest.raises(InvalidRequest) as info:
        tiny_pipeline(source, make_request(scheduler="Nope"))
    assert "DDIM" in info.value.message


def test_long_prompt_is_truncated_with_a_warning(tiny_pipeline, source):
    result = tiny_pipeline(source, make_request(prompt="castle " * 100))
    assert any("77" in w for w in result.warnings)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        OutpaintPipeline.load(tmp_path / "nowhere")
    with pytest.raises(ModelError, match=r"no manifest\.json"):
        OutpaintPipeline.load(tmp_path)


def test_nine_channel_inpainting_unet_is_detected_and_conditioned(tiny_inpainting_model_dir, source):
    pipeline = OutpaintPipeline.load(tiny_inpainting_model_dir)
    assert pipeline.unet_in_channels == 9
    result = pipeline(source, make_request(num_inference_steps=3))
    assert result.image.shape == (256, 256, 3) and np.isfinite(result.latents).all()


def test_source_pixels_outside_the_band_come_back_bit_identical(tiny_pipeline):
    from outpaint.engine import canvas as cv

    png = make_png(150, 100, seed=8)
    result = tiny_pipeline(png, make_request(offset_x=40, offset_y=90, mask_expand=12))
    source = cv.decode_image(png).rgb
    kept = result.canvas.alpha == 1.0
    assert kept.sum() == (150 - 2 * 12) * (100 - 2 * 12)
    np.testing.assert_array_equal(result.image[90:190, 40:190][kept[90:190, 40:190]],
                                  source[kept[90:190, 40:190]])
