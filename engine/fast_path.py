"""The fast path's levers: outpainting-specific savings that OutpaintPipeline composes around its
UNet calls and its decode, the way k-diffusion composes denoisers. Each is a plain function over a
UNetFn (or the decode), so a request's pipeline is `guided_denoiser(window(cache(unet)))`.

Levers (each measured in benchmarks/; see docs/benchmarks.md for what each one buys and costs):

- region decode (`decode_margin`): the VAE decodes only the latent box around the mask plus a
  context margin; everything outside the box is the source, which paste-back would have returned
  bit for bit anyway (alpha is 1 wherever the mask is 0). Exact outside the mask; inside it the
  decoder sees less context (its mid-block attention is global), so pixels there move slightly.
- windowed denoising (`window_margin`): the UNet runs on the latent window around the mask plus a
  context margin (sizes rounded to 8 cells for the UNet's downsamplings). Outside the window the
  mask is 0, so the blend overwrites the latents with the re-noised source anyway: exact outside
  the mask, an approximation inside it (less context for attention and convolutions).
- guidance-free tail (`unguided_tail_steps`): the last steps run the UNet on the prompt alone
  (batch 1 instead of 2). An approximation: it changes the image, a little at low noise levels.
- tiled VAE (`decode_tile`, `encode_tile`, engine/tiled_vae.py): a canvas larger than a tile in area
  is decoded (encoded) in overlapping tiles blended linearly, so the decoder's (encoder's) activations
  are at most one tile's (2.3 GiB and 1.5 GiB at 1024x1024 for SD 1.5). An approximation: each tile's
  GroupNorms and attention see only the tile. Canvases no larger than a tile run as before, bit for bit.
- feature caching across steps (`feature_cache_interval`, DeepCache): every k-th UNet call runs the
  whole UNet and keeps its deep feature; the calls between run only the shallow path on top of it
  (export/feature_cache.py). An approximation: the deep feature is up to k-1 calls old.

`FastPathOptions()` is the fast path at its measured defaults; `EXACT` (every lever off) gives
exactly the reference computation and is what OutpaintPipeline runs unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from outpaint.core.errors import InvalidRequest, ModelError
from outpaint.core.geometry import UNET_LATENT_MULTIPLE
from outpaint.core.graphs import DEEP_FEATURE, FEATURE_CACHE_GRAPHS, GRAPHS, OUT_SAMPLE, SAMPLE, UNET

from .guidance import UNetFn
from .regions import Box, regenerate_box
from .schedulers import Plan

MIN_VAE_TILE = 8  # latent cells (64 px): smaller tiles are mostly overlap


@dataclass(frozen=True)
class FastPathOptions:
    # Latent cells of decoder context around the mask; None = decode everything. Off by default: it
    # halves the decode but moved the regenerated pixels by 21-24 dB PSNR (docs/benchmarks.md).
    decode_margin: int | None = None
    window_margin: int | None = 7  # latent cells of UNet context around the mask; None = whole canvas
    # Final steps without classifier-free guidance (2 of 25 DDIM steps are those below sigma 0.28, where
    # Kynkaanniemi et al. 2024, arXiv:2404.07724, found guidance unnecessary). Off by default: with
    # feature caching the 2-step tail saves only 1.9 s of 40.6 s, and its batch-1 shapes cost 5.6 GiB
    # more peak memory in OpenVINO, which compiles (and holds weights for) every shape.
    unguided_tail_steps: int = 0
    # Whole-UNet calls every k-th call, shallow path in between; 1 = off. Needs the unet_deep and
    # unet_shallow graphs (exported by default). The interval's speed/fidelity trade: docs/benchmarks.md.
    feature_cache_interval: int = 3
    # Latent cells: a canvas larger in area than a square tile of this side is decoded in overlapping
    # tiles of this size (a quarter of a tile's overlap); None = one piece. 80 cells (640 px) is the
    # smallest tile that splits a 1024 px side in two with that overlap: 1024x1024 decodes 4 tiles
    # (1.56x the pixels) where 64-cell tiles took 9 (2.25x, and 2.1x the time); every canvas up to
    # 640x640 in area (768x512 too) decodes exactly as before. Memory and picture: docs/benchmarks.md.
    decode_tile: int | None = 80
    # The same for the VAE encoder (its latents blended in latent space): at 1024x1024 its activations
    # were the server's peak once the decode was tiled (benchmarks/RESULTS.md, "Memory"). 80 cells for
    # the same reasons; canvases up to 640x640 in area encode exactly as before.
    encode_tile: int | None = 80

    def __post_init__(self) -> None:
        for name in ("decode_margin", "window_margin"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidRequest(name, f"must be None (off) or a number of latent cells >= 0, got {value}")
        for name in ("decode_tile", "encode_tile"):
            tile = getattr(self, name)
            if tile is not None and tile < MIN_VAE_TILE:
                raise InvalidRequest(name, f"must be None (off) or a number of latent cells >= {MIN_VAE_TILE}, "
                                     f"got {tile}")
        if self.unguided_tail_steps < 0:
            raise InvalidRequest("unguided_tail_steps", f"must be >= 0, got {self.unguided_tail_steps}")
        if self.feature_cache_interval < 1:
            raise InvalidRequest("feature_cache_interval", f"must be >= 1 (1 = off), got {self.feature_cache_interval}")

    @property
    def exact(self) -> bool:
        """Every lever off: the reference computation, bit for bit."""
        return self == EXACT

    @property
    def shapes_unet_calls(self) -> bool:
        """A lever acts on the host loop's UNet calls (the device-resident loop cannot run it)."""
        return (self.window_margin is not None or self.unguided_tail_steps > 0
                or self.feature_cache_interval > 1)


EXACT = FastPathOptions(decode_margin=None, window_margin=None, unguided_tail_steps=0, feature_cache_interval=1,
                        decode_tile=None, encode_tile=None)


def graphs_to_load(options: FastPathOptions, exported: tuple[str, ...], folder: object) -> tuple[str, ...]:
    """The graphs a pipeline with `options` runs. With feature caching, the UNet split replaces the
    whole-UNet graph, which is then never run (not loading it saves a session holding its weights)."""
    if options.feature_cache_interval == 1:
        return GRAPHS
    missing = [g for g in FEATURE_CACHE_GRAPHS if g not in exported]
    if missing:
        raise ModelError(
            f"{folder} lacks the graphs {', '.join(missing)} that feature caching runs: re-run "
            "`outpaint export` into it without --no-feature-cache (it adds only the missing graphs), "
            "or use FastPathOptions(feature_cache_interval=1)"
        )
    return (*(g for g in GRAPHS if g != UNET), *FEATURE_CACHE_GRAPHS)


def unet_window(options: FastPathOptions, latent_mask: np.ndarray, unet_in_channels: int) -> Box | None:
    """The latent window the UNet runs on, or None for the whole canvas. latent_mask (1, 1, h, w)."""
    margin = options.window_margin
    # The 9-channel UNet is not blended, so cells outside a window would not be restored.
    if margin is None or unet_in_channels != 4:
        return None
    h, w = latent_mask.shape[2:]
    box = regenerate_box(latent_mask, margin, UNET_LATENT_MULTIPLE)
    return None if box.covers(h, w) else box


def unguided_timesteps(options: FastPathOptions, plan: Plan) -> frozenset[float]:
    """The timesteps of the plan's last `unguided_tail_steps` steps."""
    tail = min(options.unguided_tail_steps, plan.num_steps)
    return frozenset(float(t) for t in plan.timesteps[plan.num_steps - tail:]) if tail else frozenset()


@dataclass(frozen=True)
class UNetCalls:
    """What one request's loop runs through the levers, by kind of call: `whole` (the whole UNet,
    `unet_deep` with caching on) and `shallow` (`unet_shallow` on a cached feature); `unguided` of
    all those run at batch 1 (the unguided tail). A cost model's inputs: a shallow call costs about a
    quarter of a whole one, a batch-1 call about half of a guided one (docs/benchmarks.md)."""

    whole: int
    shallow: int
    unguided: int


def unet_calls(options: FastPathOptions, calls: int, guided: bool = True) -> UNetCalls:
    """The kinds of `calls` UNet calls (one per step for DDIM and the other single-call schedulers) that
    `feature_cached_unet` and the unguided tail make: the same rule, counted without running it. A
    batch-2 feature serves the batch-1 tail, so the tail never forces a whole call."""
    tail = calls if not guided else min(options.unguided_tail_steps, calls)
    whole = len(range(0, calls, options.feature_cache_interval))
    return UNetCalls(whole=whole, shallow=calls - whole, unguided=tail)


def windowed_unet(unet: UNetFn, window: Box) -> UNetFn:
    """Run `unet` on the latent window only; eps is 0 outside it (the blend overwrites those cells)."""
    ys, xs = window.slices

    def run(feeds):
        sample = feeds[SAMPLE]  # (2B, C, h, w) float32
        crop = np.ascontiguousarray(sample[:, :, ys, xs])
        out = unet({**feeds, SAMPLE: crop})[OUT_SAMPLE]  # (2B, 4, window h, window w)
        full = np.zeros((sample.shape[0], out.shape[1], *sample.shape[2:]), dtype=np.float32)
        full[:, :, ys, xs] = out
        return {OUT_SAMPLE: full}

    return run


def feature_cached_unet(deep: UNetFn, shallow: UNetFn, interval: int) -> UNetFn:
    """A UNetFn for one request: every `interval`-th call runs `deep` and keeps its deep feature, the
    others run `shallow` on the kept feature. The cache is this closure's: one per request.

    A call with a batch the kept feature cannot serve runs `deep`: after the unguided tail starts the
    batch-2 feature's prompt half serves batch-1 calls; the reverse never happens in one loop.
    """
    kept: np.ndarray | None = None  # (2B, C, h, w) float32 deep feature of the last deep call
    calls = 0

    def run(feeds):
        nonlocal kept, calls
        batch = feeds[SAMPLE].shape[0]
        usable = kept is not None and kept.shape[0] >= batch and kept.shape[2:] == feeds[SAMPLE].shape[2:]
        refresh = calls % interval == 0 or not usable
        calls += 1
        if refresh or kept is None:
            out = deep(feeds)
            kept = out[DEEP_FEATURE]
            return {OUT_SAMPLE: out[OUT_SAMPLE]}
        feature = kept if kept.shape[0] == batch else np.ascontiguousarray(kept[kept.shape[0] - batch:])
        return shallow({**feeds, DEEP_FEATURE: feature})

    return run


def decode_region(
    decode: Callable[[np.ndarray], np.ndarray],  # (1, 4, h', w') latents -> (8h', 8w', 3) uint8
    latents: np.ndarray,  # (1, 4, h, w) float32 final latents
    source_rgb: np.ndarray,  # (8h, 8w, 3) uint8, the canvas as paste-back sees it
    latent_mask: np.ndarray,  # (1, 1, h, w) soft mask, 1 = regenerate
    margin: int | None,
) -> np.ndarray:
    """(8h, 8w, 3) uint8: decoded inside the mask's box plus `margin` cells, the source outside
    (where paste-back returns the source exactly). margin None decodes everything."""
    h, w = latents.shape[2:]
    box = regenerate_box(latent_mask, margin) if margin is not None else Box(0, h, 0, w)
    if box.covers(h, w):
        return decode(latents)
    ys, xs = box.slices
    out = source_rgb.copy()
    out[box.pixels()] = decode(np.ascontiguousarray(latents[:, :, ys, xs]))
    return out
