"""Our engine, measured through its public pipeline API: one backend per system, plus the fast path."""

from __future__ import annotations

import os
import time

from outpaint.core.graphs import ENCODER_HIDDEN_STATES, SAMPLE, UNET, UNET_DEEP, UNET_GRAPHS, UNET_SHALLOW

from .config import FAST_SYSTEMS, BenchConfig
from .recorder import Recorder
from .timing import NO_CANVAS
from .workload import (
    NEGATIVE_PROMPT,
    PROMPT,
    UNET_TIMESTEP,
    outpaint_request,
    source_image,
    unet_inputs,
    vae_inputs,
)

BACKEND_OF = {
    "outpaint-ort-cpu": "ort-cpu",
    "outpaint-openvino-fp32": "openvino-fp32",
    "outpaint-openvino-bf16": "openvino-bf16",
}


class TimedRunner:
    """A GraphRunner that records the wall time of each call of the runner it wraps."""

    def __init__(self, inner, seconds: list[float] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.input_names = inner.input_names
        self.output_names = inner.output_names
        self.seconds: list[float] = [] if seconds is None else seconds  # may be shared by several runners

    def run(self, feeds):
        started = time.perf_counter()
        out = self.inner.run(feeds)
        self.seconds.append(time.perf_counter() - started)
        return out


def _load(system: str, config: BenchConfig):
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.cpu_features import fast_backend
    from outpaint.engine.fast_path import FastPathOptions
    from outpaint.engine.large_canvas import LARGE_CANVAS_OFF
    from outpaint.engine.pipeline import OutpaintPipeline

    # The same computation as the peers at every canvas: the large-canvas strategy (a different, cheaper
    # computation past the native size), the colour match and the coherence pass (stages diffusers lacks) are judged
    # by the quality benchmark, not timed against diffusers.
    if system in FAST_SYSTEMS:
        if system == "outpaint-fast-static":  # this worker process runs this system only
            os.environ["OUTPAINT_OV_SHAPES"] = "static"
        fast = config.fast
        options = FastPathOptions(decode_margin=fast.decode_margin, window_margin=fast.window_margin,
                                  unguided_tail_steps=fast.unguided_tail_steps,
                                  feature_cache_interval=fast.feature_cache_interval, decode_tile=fast.decode_tile,
                                  encode_tile=fast.encode_tile)
        # run_benchmark resolves None to what `--fast` picks here; a worker started by hand does the same.
        backend = "openvino-int8" if system == "outpaint-fast-int8" else fast.backend or fast_backend().backend
        return OutpaintPipeline.load(config.model_dir, backend, options=options,
                                     large_canvas=LARGE_CANVAS_OFF, colour_match="off",
                                     coherence=COHERENCE_OFF)
    return OutpaintPipeline.load(config.model_dir, BACKEND_OF[system], large_canvas=LARGE_CANVAS_OFF,
                                 colour_match="off", coherence=COHERENCE_OFF)


def _whole_outpaint(pipe, config: BenchConfig, rec: Recorder) -> None:
    """The whole request, several times; the per-step time outside the UNet is the sampler's overhead."""
    seconds: list[float] = []
    originals = {name: pipe.graphs[name] for name in UNET_GRAPHS if name in pipe.graphs}
    for name, graph in originals.items():  # our own pipeline instance: measurement only
        pipe.graphs[name] = TimedRunner(graph, seconds)
    source, request = source_image(config), outpaint_request(config)
    overhead, totals, result = [], [], None
    for _ in range(config.whole_runs):
        seconds.clear()
        started = time.perf_counter()
        result = pipe(source, request)
        totals.append(time.perf_counter() - started)
        # One UNet call per DDIM step (the fast path's unguided tail and shallow calls too).
        overhead.extend(step - unet for step, unet in zip(result.step_seconds, seconds, strict=True))
    pipe.graphs.update(originals)
    rec.add_samples(f"outpaint_{config.steps}_steps", config.outpaint_canvas, totals)
    rec.add_samples("sampler_overhead_step", config.outpaint_canvas, overhead)
    rec.save("image", result.image)
    rec.save("mask", result.canvas.mask > 0)


def run(system: str, config: BenchConfig, rec: Recorder) -> None:
    from outpaint.engine import canvas as cv
    from outpaint.engine.guidance import guided_denoiser

    started = time.perf_counter()
    pipe = _load(system, config)
    rec.notes.append(f"loaded in {time.perf_counter() - started:.1f} s")
    hidden = pipe.manifest.text_hidden_size
    canvas = config.outpaint_canvas
    image, latent = vae_inputs(canvas)
    rgb = cv.from_model_image(image)
    latents = latent * pipe.scaling_factor

    def unet_step(name: str, at: str, unet) -> None:
        feeds = unet_inputs(at, hidden)
        denoise = guided_denoiser(unet, feeds[ENCODER_HIDDEN_STATES], config.guidance)
        eps = rec.measure(name, at, lambda: denoise(feeds[SAMPLE][:1], UNET_TIMESTEP), runs=config.runs_for(at))
        rec.save(f"{name}_{at}", eps)

    if system in FAST_SYSTEMS:
        _fast_stages(pipe, config, rec)
    else:
        rec.measure("text_encoder", NO_CANVAS, lambda: pipe.encode_text(PROMPT, NEGATIVE_PROMPT), runs=config.runs)
        rec.measure("vae_encode", canvas, lambda: pipe.encode_image(rgb), runs=config.runs)
        rec.measure("vae_decode", canvas, lambda: pipe.decode_latents(latents), runs=config.runs)
        # The outpaint canvas first, so the whole outpaint below reuses its warm (compiled) shapes.
        if canvas in config.unet_canvases_for(system):
            unet_step("unet_step", canvas, pipe.graphs[UNET].run)
    if system in config.whole_systems:
        _whole_outpaint(pipe, config, rec)
    if system not in FAST_SYSTEMS:
        for at in config.unet_canvases_for(system):
            if at != canvas:
                unet_step("unet_step", at, pipe.graphs[UNET].run)


def _fast_stages(pipe, config: BenchConfig, rec: Recorder) -> None:
    """The fast path's own stages on the outpaint canvas: windowed UNet step (whole and shallow), region decode."""
    from outpaint.engine import canvas as cv
    from outpaint.engine.fast_path import decode_region, feature_cached_unet, unet_window, windowed_unet
    from outpaint.engine.guidance import guided_denoiser

    request = outpaint_request(config)
    placed = cv.make_canvas(source_image(config), width=request.img_width, height=request.img_height,
                            mask_expand=request.mask_expand)
    mask = cv.latent_mask(placed.mask)
    hidden = pipe.manifest.text_hidden_size
    feeds = unet_inputs(config.outpaint_canvas, hidden)
    window = unet_window(pipe.options, mask, pipe.unet_in_channels)
    caching = config.fast.feature_cache_interval > 1
    # With caching on, the whole-UNet calls are unet_deep's (the same UNet plus one output); the fast
    # pipeline then does not load `unet` at all.
    whole = pipe.graphs[UNET_DEEP].run if caching else pipe.graphs[UNET].run

    def windowed(fn):
        return fn if window is None else windowed_unet(fn, window)

    unet = windowed(whole)
    everything = frozenset({UNET_TIMESTEP})
    if window is not None:
        rec.notes.append(f"UNet window: {window.width}x{window.height} latent cells of "
                         f"{mask.shape[3]}x{mask.shape[2]}")
    guided = guided_denoiser(unet, feeds[ENCODER_HIDDEN_STATES], config.guidance)
    rec.measure("unet_step_window", config.outpaint_canvas, lambda: guided(feeds[SAMPLE][:1], UNET_TIMESTEP),
                runs=config.runs)
    if config.fast.unguided_tail_steps:
        unguided = guided_denoiser(unet, feeds[ENCODER_HIDDEN_STATES], config.guidance,
                                   unguided_timesteps=everything)
        rec.measure("unet_step_window_unguided", config.outpaint_canvas,
                    lambda: unguided(feeds[SAMPLE][:1], UNET_TIMESTEP), runs=config.runs)
    if caching:
        # An interval no run reaches: the first call fills the cache, every later one is shallow.
        cached = windowed(feature_cached_unet(pipe.graphs[UNET_DEEP].run, pipe.graphs[UNET_SHALLOW].run,
                                              interval=1 << 30))
        shallow = guided_denoiser(cached, feeds[ENCODER_HIDDEN_STATES], config.guidance)
        shallow(feeds[SAMPLE][:1], UNET_TIMESTEP)
        rec.measure("unet_step_window_shallow", config.outpaint_canvas,
                    lambda: shallow(feeds[SAMPLE][:1], UNET_TIMESTEP), runs=config.runs)
    _, latent = vae_inputs(config.outpaint_canvas)
    latents = latent * pipe.scaling_factor
    rec.measure("vae_decode_region", config.outpaint_canvas,
                lambda: decode_region(pipe.decode_latents, latents, placed.rgb, mask, pipe.options.decode_margin),
                runs=config.runs)
    # Warm the remaining graphs at the request's shapes so the whole outpaint does not compile.
    pipe.encode_text(PROMPT, NEGATIVE_PROMPT)
    pipe.encode_image(cv.from_model_image(vae_inputs(config.outpaint_canvas)[0]))
