"""The peers' whole outpaint: a diffusers-style inpaint pipeline (diffusers' own, or optimum's ONNX Runtime
one) called on our infilled canvas, mask and initial noise, timed per run, then our paste-back so its
image is compared with ours on the same pixels. Needs only numpy, Pillow and torch, so optimum's own
virtualenv runs it too."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import BenchConfig
from .recorder import Recorder
from .workload import outpaint_noise, outpaint_request, source_image


class StepClock:
    """Per-step wall time minus UNet time (the sampler's overhead): the step-end callback's times and
    the UNet's, which a subclass records by hooking the pipeline's UNet its own way."""

    def __init__(self) -> None:
        self.unet_start: list[float] = []
        self.unet_seconds: list[float] = []
        self.step_end: list[float] = []

    def callback(self, pipe, step, timestep, kwargs):
        self.step_end.append(time.perf_counter())
        return {}

    def overhead(self) -> list[float]:
        begins = [self.unet_start[0], *self.step_end[:-1]]
        return [end - begin - unet for begin, end, unet in zip(begins, self.step_end, self.unet_seconds, strict=True)]

    def close(self) -> None:
        """Remove the hooks."""


def run_whole_inpaint(pipe: Any, config: BenchConfig, rec: Recorder, make_clock: Callable[[Any], StepClock]) -> None:
    """`make_clock(pipe.unet)`: a StepClock hooked on that UNet."""
    import torch
    from PIL import Image

    from outpaint.engine import canvas as cv

    canvas = config.outpaint_canvas
    request = outpaint_request(config)
    placed = cv.make_canvas(source_image(config), width=request.img_width, height=request.img_height,
                            mask_expand=request.mask_expand)
    infilled = cv.infill(placed, request.infill, np.random.default_rng([request.seed, 1]))
    kwargs = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, image=Image.fromarray(infilled),
        mask_image=Image.fromarray((placed.mask * 255).astype(np.uint8)), height=request.img_height,
        width=request.img_width, num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale, strength=1.0, output_type="np",
    )
    totals, overhead, out = [], [], None
    for _ in range(config.whole_runs):
        clock = make_clock(pipe.unet)
        started = time.perf_counter()
        # A fresh copy of the noise each run: a pipeline may step its latents in place.
        out = pipe(**kwargs, latents=torch.from_numpy(outpaint_noise(config)),
                   callback_on_step_end=clock.callback).images[0]
        totals.append(time.perf_counter() - started)
        overhead.extend(clock.overhead())
        clock.close()
    rec.add_samples(f"outpaint_{config.steps}_steps", canvas, totals)
    rec.add_samples("sampler_overhead_step", canvas, overhead)
    decoded = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
    rec.save("image", cv.paste_back(decoded, placed))  # the same paste-back as ours, for the PSNR
    rec.save("mask", placed.mask > 0)
