"""What the benchmark compares, each as `outpaint(case, source, prompt, seed) -> (H, W, 3) uint8`:
the naive fills, our pipeline on each backend and on the fast path, and diffusers' inpaint pipeline
on the same weights with the same noise, infill, mask and paste-back."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from outpaint.engine import canvas as cv
from outpaint.engine.coherence import Coherence
from outpaint.engine.colour_match import COLOUR_MATCH_DEFAULT, match_colours
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult
from outpaint.engine.request import OutpaintRequest

from ..workload import seeded_noise
from .cases import Case

STEPS = 25  # the hosted API's defaults for everything the case does not set
GUIDANCE = 7.5


def request_for(case: Case, prompt: str, seed: int) -> OutpaintRequest:
    return OutpaintRequest(prompt=prompt, num_inference_steps=STEPS, img_width=case.width, img_height=case.height,
                           scale=case.scale, offset_x=case.source.x, offset_y=case.source.y,
                           guidance_scale=GUIDANCE, seed=seed)


def _source(pixels: np.ndarray) -> cv.SourceImage:
    return cv.SourceImage(rgb=pixels, known=np.ones(pixels.shape[:2], bool))


def _placed(case: Case, pixels: np.ndarray, request: OutpaintRequest) -> cv.Canvas:
    return cv.make_canvas(_source(pixels), width=case.width, height=case.height, scale=case.scale,
                          offset_x=case.source.x, offset_y=case.source.y, mask_expand=request.mask_expand)


class System(Protocol):
    name: str
    generative: bool

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray: ...


@dataclass
class Fill:
    """A naive baseline: the canvas after the infill alone (`pushpull`: the pipeline's own infill)."""

    name: str
    mode: str
    generative: bool = False

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        canvas = _placed(case, source, request_for(case, prompt, seed))
        return cv.infill(canvas, self.mode, np.random.default_rng(seed))


@dataclass
class Ours:
    """Our pipeline as a user runs it: OutpaintPipeline.load(model, backend, options)(source, request).

    `seed_offset` 1 draws other noise for the same scene: the full path's own seed-to-seed spread,
    which sets the bar for the fast path's levers (docs/quality.md)."""

    name: str
    pipeline: object
    seed_offset: int = 0
    generative: bool = True
    last: OutpaintResult | None = None  # the latest result, for the systems that post-process it

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        request = request_for(case, prompt, seed + self.seed_offset)
        self.last = self.pipeline(_source(source), request)  # type: ignore[operator]
        return self.last.image


def latest(base: Ours, name: str) -> OutpaintResult:
    """`base`'s latest result, which the post-processing system `name` works on."""
    if base.last is None:
        raise RuntimeError(f"{name} runs after {base.name}")
    return base.last


@dataclass
class ColourMatched:
    """`base`'s latest generation with its colours matched (engine/colour_match.py) before paste-back:
    the same as running the pipeline with `colour_match=mode`, without generating again."""

    name: str
    base: Ours
    mode: str
    generative: bool = False  # it adds no generation; its time is the base's

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        result = latest(self.base, self.name)
        matched = match_colours(result.decoded, result.canvas.rgb, result.canvas.known, self.mode)
        return cv.paste_back(matched, result.canvas)


@dataclass
class Cohered:
    """`base`'s latest generation with the engine's default colour match, then the coherence pass at
    `settings` (engine/coherence.py): the same image as the pipeline loaded with that colour match and
    coherence (tests/test_coherence.py checks it), generating only the pass. Its seconds are the pass's."""

    name: str
    base: Ours
    settings: Coherence
    colour_match: str = COLOUR_MATCH_DEFAULT
    generative: bool = True

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        result = latest(self.base, self.name)
        pipeline = self.base.pipeline
        assert isinstance(pipeline, OutpaintPipeline)
        matched = match_colours(result.decoded, result.canvas.rgb, result.canvas.known, self.colour_match)
        first = dataclasses.replace(result, decoded=matched, image=cv.paste_back(matched, result.canvas))
        passes = pipeline.coherence_pass(first, request_for(case, prompt, seed + self.base.seed_offset), result.seed,
                                         self.settings, self.colour_match)
        result = [item for item in passes if isinstance(item, OutpaintResult)][-1]
        return result.image


@dataclass
class Retiled:
    """`base`'s latest generation decoded again with the tiled VAE decode at `tile` latent cells
    (engine/tiled_vae.py), then pasted back: the same image as the pipeline loaded with that
    `decode_tile` (tests/test_tiled_vae.py checks it), without denoising again."""

    name: str
    base: Ours
    tile: int
    generative: bool = False  # it adds no generation; its time is the base's

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        result = latest(self.base, self.name)
        pipeline = copy.copy(self.base.pipeline)  # shares the loaded graphs; only the options differ
        assert isinstance(pipeline, OutpaintPipeline)
        pipeline.options = dataclasses.replace(pipeline.options, decode_tile=self.tile)
        return cv.paste_back(pipeline.decode_latents(result.latents), result.canvas)


class Diffusers:
    """diffusers' StableDiffusionInpaintPipeline on the same diffusers folder, fed our infilled canvas,
    mask and initial noise (a 4-channel UNet: it blends the known latents each step; a 9-channel one
    sees the mask and the masked image's latents)."""

    generative = True

    def __init__(self, weights: Path, name: str = "diffusers-inpaint") -> None:
        self.name = name
        import torch
        from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline.from_pretrained(str(weights), torch_dtype=torch.float32,
                                                              safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def outpaint(self, case: Case, source: np.ndarray, prompt: str, seed: int) -> np.ndarray:
        import torch
        from PIL import Image

        request = request_for(case, prompt, seed)
        placed = _placed(case, source, request)
        infilled = cv.infill(placed, request.infill, np.random.default_rng([seed, 1]))
        noise = seeded_noise(seed, case.width, case.height)  # ours for this seed: both engines start alike
        with torch.no_grad():
            out = self.pipe(prompt=prompt, negative_prompt="", image=Image.fromarray(infilled),
                            mask_image=Image.fromarray((placed.mask * 255).astype(np.uint8)),
                            height=case.height, width=case.width, num_inference_steps=STEPS,
                            guidance_scale=GUIDANCE, strength=1.0, latents=torch.from_numpy(noise),
                            output_type="np").images[0]  # type: ignore[union-attr]
        decoded = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
        return cv.paste_back(decoded, placed)
