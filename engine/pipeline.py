"""The public API: load a model folder once, outpaint many times, from several threads if you like.

    pipe = OutpaintPipeline.load("models/sd15")
    result = pipe(source_bytes, OutpaintRequest(prompt="streets in italy", img_width=768, img_height=512))
    Image.fromarray(result.image).save("out.png")

`pipe.generate(...)` is the same computation as a generator: it yields a StepEvent after every
denoising step and an OutpaintResult last, so callers can show progress or stop early.

`OutpaintPipeline.load(folder, options=FastPathOptions())` is the CPU fast path: the same pipeline
with the levers of engine/fast_path.py composed around its UNet calls and its decode.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from outpaint.core.errors import Cancelled, InvalidRequest, ModelError
from outpaint.core.geometry import CANVAS_MULTIPLE, LATENT_FACTOR
from outpaint.core.graphs import (
    IMAGE,
    INPUT_IDS,
    LAST_HIDDEN_STATE,
    LATENT,
    LATENT_MEAN,
    TEXT_ENCODER,
    UNET,
    UNET_DEEP,
    UNET_GRAPHS,
    UNET_SHALLOW,
    VAE_DECODER,
    VAE_ENCODER,
    int8_key,
)
from outpaint.core.manifest import read_manifest

from . import canvas as cv
from .backends.registry import load_graphs
from .coherence import COHERENCE_DEFAULT, Coherence, blend_band, coherence_masks, has_boundary, plan_steps
from .colour_match import COLOUR_MATCH_DEFAULT, match_colours
from .colour_match import MODES as COLOUR_MATCH_MODES
from .device_loop import device_denoise_loop, loop_tensors, select_device_runtime
from .device_loop import supports as device_loop_supports
from .fast_path import (
    EXACT,
    FastPathOptions,
    decode_region,
    feature_cached_unet,
    graphs_to_load,
    unet_window,
    unguided_timesteps,
    windowed_unet,
)
from .guidance import UNetFn, guided_denoiser
from .large_canvas import LARGE_CANVAS_DEFAULT, LargeCanvas, downsample_canvas, native_canvas_size, upscale
from .loop import KnownRegion, StepEvent, denoise_loop
from .request import SEED_MAX, OutpaintRequest
from .schedulers import SCHEDULERS, NoiseScheduleConfig, Plan, Scheduler, get_scheduler
from .seam import seam_score
from .tiled_vae import decode_tiled, encode_tiled
from .tokenizer import ClipTokenizer

log = logging.getLogger("outpaint")


@dataclass
class OutpaintResult:
    image: np.ndarray  # (H, W, 3) uint8, the final image after paste-back
    seed: int
    decoded: np.ndarray  # (H, W, 3) uint8, the VAE's output before paste-back
    latents: np.ndarray  # (1, 4, H/8, W/8) float32, the final latents
    canvas: cv.Canvas
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    step_seconds: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # engine/seam.py: ~1 smooth, well above 1 a visible seam; None with nothing to compare (x-seam-score)
    seam: float | None = None
    # The native-size composition when the large-canvas strategy ran (engine/large_canvas.py), else None.
    native_pass: OutpaintResult | None = None
    # The result before the coherence pass when it ran (engine/coherence.py), else None.
    first_pass: OutpaintResult | None = None


@dataclass(frozen=True)
class Conditioning:
    """Everything the loop needs that does not depend on the step: computed once per request."""

    canvas: cv.Canvas
    init_latents: np.ndarray  # (1, 4, h, w) float32, VAE mean x scaling factor
    latent_mask: np.ndarray  # (1, 1, h, w) float32 soft mask, 1 = regenerate
    text_embeddings: np.ndarray  # (2, 77, D) float32: [negative, prompt]
    extra_channels: np.ndarray | None  # (1, 5, h, w) for a 9-channel UNet
    warnings: tuple[str, ...]


def draw_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


class Outpainter(Protocol):
    """What the HTTP service and the CLI need of a loaded pipeline."""

    @property
    def scheduler_names(self) -> tuple[str, ...]: ...

    def generate(
        self, source: cv.SourceImage | bytes, request: OutpaintRequest, *, noise: np.ndarray | None = None
    ) -> Generator[StepEvent | OutpaintResult, None, None]: ...


class OutpaintPipeline:
    """Loaded graphs, tokenizer and noise schedule of one exported model. Holds no per-request state.

    `options` are the fast path's levers (engine/fast_path.py); the default, EXACT, turns every one
    off. `device_loop` None keeps the loop on the device where the UNet runs on a GPU and the levers
    are off (they act on the host loop's UNet calls); True insists, False never. `colour_match`
    harmonises the new area's colours to the source before paste-back (engine/colour_match.py).
    `large_canvas` says when a canvas well past the model's native size is composed at native size
    first (engine/large_canvas.py). `coherence` says whether a short second denoise runs over the band
    along the source's boundary (engine/coherence.py).
    """

    def __init__(
        self,
        folder: Path,
        backend: str = "ort-cpu",
        device_loop: bool | None = None,
        options: FastPathOptions = EXACT,
        colour_match: str = COLOUR_MATCH_DEFAULT,
        large_canvas: LargeCanvas = LARGE_CANVAS_DEFAULT,
        coherence: Coherence = COHERENCE_DEFAULT,
    ) -> None:
        folder = Path(folder)
        self.large_canvas = large_canvas
        self.coherence = coherence
        if colour_match not in COLOUR_MATCH_MODES:
            raise InvalidRequest("colour_match",
                                 f"must be one of {', '.join(COLOUR_MATCH_MODES)}, got {colour_match!r}")
        self.colour_match = colour_match
        if not folder.is_dir():
            raise ModelError(
                f"model folder {folder} does not exist; export one with `outpaint export SRC {folder}` "
                f"or `outpaint export --random tiny {folder}`"
            )
        self.folder = folder
        self.backend = backend
        self.manifest = read_manifest(folder)
        for note in self.manifest.notes:
            log.info("%s: %s", folder, note)
        if self.manifest.layout == "optimum" and options.feature_cache_interval > 1:
            # Its UNet is one graph; the split feature caching runs is made only by `outpaint export`.
            log.warning("%s is an optimum export: the fast path runs without feature caching (every UNet call "
                        "is the whole UNet); `outpaint export` of the same weights adds the UNet split", folder)
            options = dataclasses.replace(options, feature_cache_interval=1)
        self.options = options
        names = graphs_to_load(options, tuple(self.manifest.graphs), folder)
        missing = [g for g in names if g not in self.manifest.graphs]
        if missing:
            raise ModelError(f"{folder} lacks the graphs {', '.join(missing)}: the export did not finish; re-run it")
        # Before any runtime reads them: a truncated graph is a clear error naming the file and the
        # command that repairs it, not a protobuf traceback. The fused-attention twins are what the
        # ONNX Runtime backends read, the plain graphs what the others read: both are checked, and the
        # int8 twins openvino-int8 reads (export/quantize.py).
        twins = [twin for name in names for twin in (f"{name}.mha", int8_key(name)) if twin in self.manifest.graphs]
        self.manifest.check_files(folder, [*names, *twins])
        self.schedule_config = NoiseScheduleConfig.load(folder / "scheduler" / "scheduler_config.json")
        self.tokenizer = ClipTokenizer(folder / "tokenizer")
        if options.shapes_unet_calls and device_loop:
            raise InvalidRequest("device_loop", "the fast path's window, unguided tail and feature caching act "
                                 "on the host loop's UNet calls; leave device_loop unset with them")
        self.graphs = load_graphs(backend, folder, self.manifest, names)
        self.device_runtime = (
            None if device_loop is False or options.shapes_unet_calls
            else select_device_runtime(self.graphs[UNET], device_loop)
        )
        self.unet_in_channels = self.manifest.unet_in_channels
        self.scaling_factor = np.float32(self.manifest.vae_scaling_factor)
        self.native_size = self.manifest.native_size

    @classmethod
    def load(
        cls,
        folder: str | Path,
        backend: str = "ort-cpu",
        device_loop: bool | None = None,
        options: FastPathOptions = EXACT,
        colour_match: str = COLOUR_MATCH_DEFAULT,
        large_canvas: LargeCanvas = LARGE_CANVAS_DEFAULT,
        coherence: Coherence = COHERENCE_DEFAULT,
    ) -> OutpaintPipeline:
        return cls(Path(folder), backend, device_loop, options, colour_match, large_canvas, coherence)

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return tuple(SCHEDULERS)

    # -- stages ---------------------------------------------------------------------------------

    def encode_text(self, prompt: str, negative_prompt: str) -> tuple[np.ndarray, list[str]]:
        """(2, 77, D) float32 embeddings of [negative_prompt, prompt], and warnings on truncation."""
        warnings = []
        ids = []
        for label, text in (("negative_prompt", negative_prompt), ("prompt", prompt)):
            tokens = self.tokenizer(text)
            if tokens.chars_read is not None:
                warnings.append(f"{label} was cut: it has {len(text)} characters, only the first {tokens.chars_read} "
                                "were read, and of those only the first 77 CLIP tokens are used")
            elif tokens.truncated:
                warnings.append(f"{label} is longer than 77 CLIP tokens; the rest was ignored")
            ids.append(tokens.ids)
        out = self.graphs[TEXT_ENCODER].run({INPUT_IDS: np.stack(ids)})
        self.release_memory(TEXT_ENCODER)
        return out[LAST_HIDDEN_STATE], warnings

    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (1, 4, H/8, W/8) float32 latents (mean x scaling factor); in tiles where
        the canvas's area exceeds one square tile of the fast path's `encode_tile` cells
        (engine/tiled_vae.py)."""
        def encode(image: np.ndarray) -> np.ndarray:
            return self.graphs[VAE_ENCODER].run({IMAGE: image})[LATENT_MEAN]

        image = cv.to_model_image(rgb)
        tile = self.options.encode_tile
        mean = (encode(image) if tile is None
                else encode_tiled(encode, image, tile, tile // 4, self.manifest.latent_channels))
        self.release_memory(VAE_ENCODER)
        return mean * self.scaling_factor

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """(1, 4, h, w) latents -> (H, W, 3) uint8; in tiles where the latents' area exceeds one square
        tile of the fast path's `decode_tile` cells (engine/tiled_vae.py)."""
        def decode(z: np.ndarray) -> np.ndarray:
            return self.graphs[VAE_DECODER].run({LATENT: z})[IMAGE]

        tile = self.options.decode_tile
        scaled = latents / self.scaling_factor
        image = decode(scaled) if tile is None else decode_tiled(decode, scaled, tile, tile // 4)
        self.release_memory(VAE_DECODER)
        return cv.from_model_image(image)

    def release_memory(self, *names: str) -> None:
        """Let the named graphs free their intermediate buffers, on backends that keep them between
        runs (OpenVINO keeps them sized for the largest canvas run so far). The VAE runs once per
        request and the UNet's buffers are not needed while the VAE decodes: holding both at 1024x1024
        would add their peaks. Re-allocating them costs little next to the run (docs/benchmarks.md)."""
        for name in names:
            release = getattr(self.graphs.get(name), "release_memory", None)
            if release is not None:
                release()

    def request_unet(self, latent_mask: np.ndarray) -> UNetFn:
        """The UNet as one request's loop calls it: with a fresh feature cache and on the mask's window
        when those levers are on. latent_mask (1, 1, h, w)."""
        interval = self.options.feature_cache_interval
        if interval == 1:
            unet = self.graphs[UNET].run
        else:
            unet = feature_cached_unet(self.graphs[UNET_DEEP].run, self.graphs[UNET_SHALLOW].run, interval)
        window = unet_window(self.options, latent_mask, self.unet_in_channels)
        return unet if window is None else windowed_unet(unet, window)

    def condition(
        self,
        source: cv.SourceImage,
        request: OutpaintRequest,
        seed: int,
        timings: dict[str, float],
        prefill: np.ndarray | None = None,
    ) -> Conditioning:
        """Canvas, infill, init latents, latent mask and text embeddings (pipeline.md 1-5).

        `prefill` (H, W, 3) uint8 replaces the request's infill in the unknown area (the large-canvas
        strategy's upscaled composition)."""
        started = time.perf_counter()
        _check_canvas_size(request)
        canvas = _placed(source, request)
        if prefill is None:
            infilled = cv.infill(canvas, request.infill, np.random.default_rng([seed, 1]))
        else:
            infilled = np.where(canvas.known[..., None], canvas.rgb, prefill)
        latent_mask = cv.latent_mask(canvas.mask)
        timings["canvas"] = time.perf_counter() - started

        started = time.perf_counter()
        init_latents = self.encode_image(infilled)
        extra = None
        if self.unet_in_channels == 9:
            # The inpainting UNet sees the mask and the latents of the image with the new area blanked.
            blanked = np.where(canvas.mask[..., None] >= 0.5, np.uint8(127), infilled)
            masked_latents = self.encode_image(blanked.astype(np.uint8))
            extra = np.concatenate([latent_mask, masked_latents], axis=1).astype(np.float32)
        elif self.unet_in_channels != 4:
            raise ModelError(
                f"a UNet with {self.unet_in_channels} input channels is neither SD 1.5 (4) nor inpainting (9)"
            )
        timings["vae_encode"] = time.perf_counter() - started

        started = time.perf_counter()
        embeddings, warnings = self.encode_text(request.prompt, request.negative_prompt)
        timings["text_encoder"] = time.perf_counter() - started
        for warning in warnings:
            log.warning(warning)
        return Conditioning(canvas, init_latents, latent_mask, embeddings, extra, tuple(warnings))

    # -- the whole request ------------------------------------------------------------------------

    def generate(
        self,
        source: cv.SourceImage | bytes,
        request: OutpaintRequest,
        *,
        noise: np.ndarray | None = None,
    ) -> Generator[StepEvent | OutpaintResult, None, None]:
        """Yield a StepEvent after every denoising step, then the OutpaintResult.

        `noise` (1, 4, H/8, W/8) float32 replaces the seeded draw (tests, reproducing other engines).
        """
        total_started = time.perf_counter()
        if isinstance(source, bytes | bytearray | memoryview):
            source = cv.decode_image(bytes(source))
        get_scheduler(request.scheduler)  # an unknown name fails before any work
        _check_canvas_size(request)
        if noise is not None:
            shape = (1, self.manifest.latent_channels, request.img_height // LATENT_FACTOR,
                     request.img_width // LATENT_FACTOR)
            if noise.shape != shape or noise.dtype != np.float32:
                raise InvalidRequest("noise", f"must be float32 of shape {shape}, got {noise.dtype} {noise.shape}")
        seed = draw_seed() if request.seed == -1 else request.seed
        large = self.large_canvas.applies(request.img_width, request.img_height, self.native_size)
        main_steps = sum(self._pass_steps(request))
        coherence = self._coheres(source, request)
        total = main_steps + (self.coherence.steps if coherence else 0)  # planned_steps, the source placed once
        passes = (self._generate_large(source, request, seed, noise, total_started) if large
                  else self._generate_at(source, request, seed, noise, total_started))
        result = yield from _forward_steps(passes, before=0, total=total)
        if coherence:
            result = yield from _forward_steps(self.coherence_pass(result, request, seed), before=main_steps,
                                               total=total)
            result.timings["total"] = time.perf_counter() - total_started
        yield result

    def _coheres(self, source: cv.SourceImage | None, request: OutpaintRequest) -> bool:
        """Whether the coherence pass runs: it is on and the source borders new area (unknown source:
        assumed to)."""
        return self.coherence.on and (source is None or has_boundary(_placed(source, request).known))

    def coherence_pass(
        self, first: OutpaintResult, request: OutpaintRequest, seed: int, coherence: Coherence | None = None,
        colour_match: str | None = None,
    ) -> Generator[StepEvent | OutpaintResult, None, None]:
        """The coherence pass over a finished result (engine/coherence.py): yields its steps, then the new
        result. `coherence` and `colour_match` default to the pipeline's (the benchmark varies them over
        one first pass)."""
        settings = self.coherence if coherence is None else coherence
        colour = self.colour_match if colour_match is None else colour_match
        started = time.perf_counter()
        canvas = first.canvas
        regenerate, weight = coherence_masks(canvas.known, canvas.mask, settings.width)
        latent_mask = cv.latent_mask(regenerate)
        timings = dict(first.timings)
        init_latents = self.encode_image(first.image)
        extra = None
        if self.unet_in_channels == 9:
            blanked = np.where(regenerate[..., None] >= 0.5, np.uint8(127), first.image).astype(np.uint8)
            extra = np.concatenate([latent_mask, self.encode_image(blanked)], axis=1).astype(np.float32)
        embeddings, _ = self.encode_text(request.prompt, request.negative_prompt)  # warned in the first pass
        timings["coherence_encode"] = time.perf_counter() - started

        scheduler = get_scheduler(request.scheduler)
        plan = scheduler.plan(self.schedule_config, plan_steps(settings.steps, settings.strength), settings.strength)
        rng = np.random.default_rng([seed, 2])  # [seed, 1] is the infill's
        noise = rng.standard_normal(init_latents.shape, dtype=np.float32)
        latents = scheduler.start(plan, init_latents, noise, False)
        known = KnownRegion(init_latents, noise, latent_mask) if self.unet_in_channels == 4 else None
        step_seconds = []
        last_event: StepEvent | None = None
        for event in self._denoise_events(scheduler, plan, latents, embeddings, request.guidance_scale, extra,
                                          latent_mask, known, rng):
            step_seconds.append(event.seconds)
            last_event = event
            yield event
        assert last_event is not None, "a plan has at least one step (Scheduler.plan validates it)"
        latents = last_event.latents
        timings["coherence_denoise"] = float(sum(step_seconds))

        started = time.perf_counter()
        decoded = decode_region(self.decode_latents, latents, first.image, latent_mask, self.options.decode_margin)
        if colour != "off":
            decoded = match_colours(decoded, canvas.rgb, canvas.known, colour)
        merged = blend_band(first.decoded, decoded, weight)
        image = cv.paste_back(merged, canvas)
        seam = seam_score(image, canvas.known)
        timings["coherence_finish"] = time.perf_counter() - started
        yield dataclasses.replace(
            first, image=image, decoded=merged, latents=latents, timings=timings,
            step_seconds=[*first.step_seconds, *step_seconds], seam=seam, first_pass=first,
        )

    def _denoise_events(
        self, scheduler: Scheduler, plan: Plan, latents: np.ndarray, text_embeddings: np.ndarray,
        guidance_scale: float, extra_channels: np.ndarray | None, latent_mask: np.ndarray,
        known: KnownRegion | None, rng: np.random.Generator,
    ) -> Iterable[StepEvent]:
        """The loop's step events: on the device where it runs the loop, else on the host."""
        if self.device_runtime is not None and device_loop_supports(scheduler):
            return device_denoise_loop(self.device_runtime, loop_tensors(
                plan=plan, latents=latents, text_embeddings=text_embeddings,
                guidance_scale=guidance_scale, known=known, extra_channels=extra_channels,
            ), plan)
        denoise = guided_denoiser(
            self.request_unet(latent_mask), text_embeddings, guidance_scale,
            extra_channels, unguided_timesteps(self.options, plan),
        )
        return denoise_loop(scheduler=scheduler, plan=plan, latents=latents, denoise=denoise, rng=rng, known=known)

    def planned_steps(self, request: OutpaintRequest, source: cv.SourceImage | None = None) -> int:
        """How many step events `generate(request)` yields, numbered as one sequence (what a progress
        bar shows as its total): both passes where the large-canvas strategy applies, then the coherence
        pass's. Without `source` the coherence pass is counted whenever it is on (a source that covers
        the whole canvas borders no new area and skips it)."""
        return sum(self._pass_steps(request)) + (self.coherence.steps if self._coheres(source, request) else 0)

    def _pass_steps(self, request: OutpaintRequest) -> tuple[int, int]:
        """The denoising steps of the request's first pass, and of its refining pass (0 when none)."""
        scheduler = get_scheduler(request.scheduler)
        steps = scheduler.plan(self.schedule_config, request.num_inference_steps, request.strength).num_steps
        refine = self.large_canvas.refine_strength
        if not self.large_canvas.applies(request.img_width, request.img_height, self.native_size) or refine <= 0:
            return steps, 0
        return steps, scheduler.plan(self.schedule_config, request.num_inference_steps, refine).num_steps

    def _generate_large(
        self, source: cv.SourceImage, request: OutpaintRequest, seed: int, noise: np.ndarray | None,
        total_started: float,
    ) -> Generator[StepEvent | OutpaintResult, None, None]:
        """Compose at native size, upscale, refine at full size (engine/large_canvas.py).

        `noise`, when given, is the full-size pass's; the native-size pass draws its own from the seed."""
        full = _placed(source, request)
        small_w, small_h = native_canvas_size(request.img_width, request.img_height, self.native_size)
        small_request = dataclasses.replace(
            request, img_width=small_w, img_height=small_h, scale=1.0, offset_x=0, offset_y=0,
            mask_expand=round(request.mask_expand * small_w / request.img_width), seed=seed,
        )
        refine_request = dataclasses.replace(request, strength=self.large_canvas.refine_strength, seed=seed)
        small_steps, refine_steps = self._pass_steps(request)
        total = small_steps + refine_steps
        small_source = downsample_canvas(full, small_w, small_h)
        small = yield from _forward_steps(
            self._generate_at(small_source, small_request, seed, None, time.perf_counter()), before=0, total=total,
        )
        prefill = upscale(small.image, request.img_width, request.img_height)
        if refine_steps == 0:
            result = self._finish(full, prefill, small.latents, seed, {}, [], list(small.warnings), total_started)
        else:
            result = yield from _forward_steps(
                self._generate_at(source, refine_request, seed, noise, time.perf_counter(), prefill=prefill),
                before=small_steps, total=total,
            )
        result.timings["native_pass"] = small.timings["total"]
        result.timings["total"] = time.perf_counter() - total_started
        result.step_seconds = [*small.step_seconds, *result.step_seconds]
        yield dataclasses.replace(result, native_pass=small)

    def _generate_at(
        self, source: cv.SourceImage, request: OutpaintRequest, seed: int, noise: np.ndarray | None,
        total_started: float, prefill: np.ndarray | None = None,
    ) -> Generator[StepEvent | OutpaintResult, None, None]:
        """The request at its own canvas size (pipeline.md 1-9)."""
        scheduler = get_scheduler(request.scheduler)
        timings: dict[str, float] = {}
        cond = self.condition(source, request, seed, timings, prefill)

        plan = scheduler.plan(self.schedule_config, request.num_inference_steps, request.strength)
        latent_shape = cond.init_latents.shape
        rng = np.random.default_rng(seed)
        if noise is None:  # a caller's noise was checked against the canvas in generate()
            noise = rng.standard_normal(latent_shape, dtype=np.float32)
        pure_noise = request.strength >= 1.0
        latents = scheduler.start(plan, cond.init_latents, noise, pure_noise)
        # A 9-channel UNet inpaints by itself; diffusers blends only for the 4-channel one.
        known = KnownRegion(cond.init_latents, noise, cond.latent_mask) if self.unet_in_channels == 4 else None
        events = self._denoise_events(scheduler, plan, latents, cond.text_embeddings, request.guidance_scale,
                                      cond.extra_channels, cond.latent_mask, known, rng)

        step_seconds = []
        last_event: StepEvent | None = None
        for event in events:
            step_seconds.append(event.seconds)
            last_event = event
            yield event
        assert last_event is not None, "a plan has at least one step (Scheduler.plan validates it)"
        latents = last_event.latents  # read after the loop: a device loop copies to the host only this once
        timings["denoise"] = float(sum(step_seconds))
        self.release_memory(*UNET_GRAPHS)

        started = time.perf_counter()
        # With the region decode on, `decoded` holds the source outside the decoded box.
        decoded = decode_region(self.decode_latents, latents, cond.canvas.rgb, cond.latent_mask,
                                self.options.decode_margin)
        timings["vae_decode"] = time.perf_counter() - started
        yield self._finish(cond.canvas, decoded, latents, seed, timings, step_seconds, list(cond.warnings),
                           total_started)

    def _finish(
        self, canvas: cv.Canvas, decoded: np.ndarray, latents: np.ndarray, seed: int, timings: dict[str, float],
        step_seconds: list[float], warnings: list[str], total_started: float,
    ) -> OutpaintResult:
        """Colour match, paste-back and seam score of a decoded canvas (pipeline.md 9)."""
        started = time.perf_counter()
        if self.colour_match != "off":
            decoded = match_colours(decoded, canvas.rgb, canvas.known, self.colour_match)
            timings["colour_match"] = time.perf_counter() - started
            started = time.perf_counter()
        image = cv.paste_back(decoded, canvas)
        timings["paste_back"] = time.perf_counter() - started
        started = time.perf_counter()
        seam = seam_score(image, canvas.known)
        timings["seam_score"] = time.perf_counter() - started
        timings["total"] = time.perf_counter() - total_started
        return OutpaintResult(
            image=image, seed=seed, decoded=decoded, latents=latents, canvas=canvas,
            timings=timings, step_seconds=step_seconds, warnings=warnings, seam=seam,
        )

    def __call__(
        self, source: cv.SourceImage | bytes, request: OutpaintRequest, *, noise: np.ndarray | None = None
    ) -> OutpaintResult:
        return run_to_result(self, source, request, noise=noise)


def run_to_result(
    pipeline: Outpainter,
    source: cv.SourceImage | bytes,
    request: OutpaintRequest,
    on_step: Callable[[StepEvent], None] | None = None,
    *,
    noise: np.ndarray | None = None,
) -> OutpaintResult:
    """Run one request to its result, telling `on_step` of every step (progress, the chains of zoom and pan)."""
    for item in pipeline.generate(source, request, noise=noise):
        if not isinstance(item, OutpaintResult):
            if on_step is not None:
                on_step(item)
        else:
            return item
    raise Cancelled("the generation ended without a result")


def _check_canvas_size(request: OutpaintRequest) -> None:
    for name in ("img_width", "img_height"):
        value = getattr(request, name)
        if value % CANVAS_MULTIPLE or value <= 0:
            raise InvalidRequest(name, f"must be a positive multiple of {CANVAS_MULTIPLE}, got {value}")


def _placed(source: cv.SourceImage, request: OutpaintRequest) -> cv.Canvas:
    return cv.make_canvas(
        source, width=request.img_width, height=request.img_height, scale=request.scale,
        offset_x=request.offset_x, offset_y=request.offset_y, mask_expand=request.mask_expand,
    )


def _forward_steps(
    items: Iterable[StepEvent | OutpaintResult], *, before: int, total: int
) -> Generator[StepEvent, None, OutpaintResult]:
    """Yield one pass's step events numbered within a request of `total` steps; return its result."""
    result = None
    for item in items:
        if isinstance(item, OutpaintResult):
            result = item
        else:
            yield dataclasses.replace(item, index=item.index + before, total=total)
    assert result is not None, "a pass ends with its result"
    return result
