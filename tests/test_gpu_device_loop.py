"""The device-resident loop (IOBinding + OrtValues), run here with CPU OrtValues: the GPU code path on a CPU.

It must give the host loop's image: same graphs, same seed, the step kernel instead of numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from outpaint.core.errors import OutpaintError
from outpaint.engine.device_loop import DeviceLatents
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult

from .conftest import make_png, make_request


@pytest.fixture(scope="module")
def source() -> bytes:
    return make_png(128, 128, seed=3)


@pytest.fixture(scope="module")
def device_pipeline(tiny_model_dir) -> OutpaintPipeline:
    pipeline = OutpaintPipeline.load(tiny_model_dir, device_loop=True)
    assert pipeline.device_runtime is not None and pipeline.device_runtime.device == "cpu"
    return pipeline


def _same(host: OutpaintResult, device: OutpaintResult) -> None:
    scale = np.abs(host.latents).max()
    assert np.abs(device.latents - host.latents).max() <= 1e-5 * scale
    assert np.abs(device.image.astype(int) - host.image.astype(int)).max() <= 1


@pytest.mark.parametrize("overrides", [
    {},  # guidance 7.5, strength 1: pure-noise start, blend every step
    {"guidance_scale": 1.0},  # the unguided kernel, batch 1
    {"strength": 0.6, "num_inference_steps": 5},  # noised-init start, skipped steps
], ids=["guided", "guidance-1", "strength-0.6"])
def test_device_loop_gives_the_host_loops_image(tiny_pipeline, device_pipeline, source, overrides):
    request = make_request(**overrides)
    _same(tiny_pipeline(source, request), device_pipeline(source, request))


def test_device_loop_with_explicit_noise_matches(tiny_pipeline, device_pipeline, source):
    noise = np.random.default_rng(9).standard_normal((1, 4, 32, 32), dtype=np.float32)
    _same(tiny_pipeline(source, make_request(), noise=noise), device_pipeline(source, make_request(), noise=noise))


def test_step_latents_are_readable_while_the_loop_waits_and_match_the_host_loop(tiny_pipeline, device_pipeline,
                                                                                  source):
    host = [e.latents for e in tiny_pipeline.generate(source, make_request()) if isinstance(e, StepEvent)]
    device_events = []
    for item in device_pipeline.generate(source, make_request()):
        if isinstance(item, StepEvent):
            assert isinstance(item.read_latents, DeviceLatents)  # copied to the host only when read
            if item.index == 1:
                preview = item.latents  # read before advancing: one copy of that step's latents
            device_events.append(item)
    assert np.abs(preview - host[1]).max() <= 1e-5 * np.abs(host[1]).max()
    with pytest.raises(OutpaintError, match="before advancing"):
        device_events[0].latents  # noqa: B018 - its buffers were overwritten by later steps
    assert np.array_equal(device_events[-1].latents, device_events[-1].latents)


def test_stopping_the_device_loop_early_frees_it_and_the_pipeline_still_works(device_pipeline, tiny_pipeline, source):
    generator = device_pipeline.generate(source, make_request(num_inference_steps=6))
    steps = [next(generator) for _ in range(2)]
    generator.close()
    assert [s.index for s in steps] == [0, 1]
    _same(tiny_pipeline(source, make_request()), device_pipeline(source, make_request()))


def test_cpu_backend_keeps_the_host_loop_unless_asked(tiny_pipeline, tiny_model_dir):
    assert tiny_pipeline.device_runtime is None
    assert OutpaintPipeline.load(tiny_model_dir, device_loop=False).device_runtime is None


def test_device_loop_conditions_a_nine_channel_unet_like_the_host_loop(tiny_inpainting_model_dir, source):
    host = OutpaintPipeline.load(tiny_inpainting_model_dir)(source, make_request())
    device = OutpaintPipeline.load(tiny_inpainting_model_dir, device_loop=True)(source, make_request())
    _same(host, device)
