"""The CPU fast path: the same computation as OutpaintPipeline, with outpainting-specific savings.

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
- feature caching across steps (`feature_cache_interval`, DeepCache): every k-th UNet call runs the
  whole UNet and keeps its deep feature; the calls between run only the shallow path on top of it
  (export/feature_cache.py). An approximation: the deep feature is up to k-1 calls old.

Off-switches: a margin of None, a tail of 0 and an interval of 1 give exactly OutpaintPipeline's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from outpaint.core.errors import InvalidRequest, ModelError

from . import canvas as cv
from .backends.registry import FEATURE_CACHE_GRAPHS, GRAPHS
from .loop import UNetFn, guide
from .pipeline import Conditioning, OutpaintPipeline
from .regions import UNET_MULTIPLE, Box, regenerate_box
from .request import OutpaintRequest
from .schedulers import Denoiser, Plan


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

    def __post_init__(self) -> None:
        for name in ("decode_margin", "window_margin"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidRequest(name, f"must be None (off) or a number of latent cells >= 0, got {value}")
        if self.unguided_tail_steps < 0:
            raise InvalidRequest("unguided_tail_steps", f"must be >= 0, got {self.unguided_tail_steps}")
        if self.feature_cache_interval < 1:
            raise InvalidRequest("feature_cache_interval", f"must be >= 1 (1 = off), got {self.feature_cache_interval}")


def windowed_unet(unet: UNetFn, window: Box) -> UNetFn:
    """Run `unet` on the latent window only; eps is 0 outside it (the blend overwrites those cells)."""
    ys, xs = window.slices

    def run(feeds):
        sample = feeds["sample"]  # (2B, C, h, w) float32
        crop = np.ascontiguousarray(sample[:, :, ys, xs])
        out = unet({**feeds, "sample": crop})["out_sample"]  # (2B, 4, window h, window w)
        full = np.zeros((sample.shape[0], out.shape[1], *sample.shape[2:]), dtype=np.float32)
        full[:, :, ys, xs] = out
        return {"out_sample": full}

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
        batch = feeds["sample"].shape[0]
        usable = kept is not None and kept.shape[0] >= batch and kept.shape[2:] == feeds["sample"].shape[2:]
        refresh = calls % interval == 0 or not usable
        calls += 1
        if refresh:
            out = deep(feeds)
            kept = out["deep_feature"]
            return {"out_sample": out["out_sample"]}
        feature = kept if kept.shape[0] == batch else np.ascontiguousarray(kept[kept.shape[0] - batch:])
        return shallow({**feeds, "deep_feature": feature})

    return run


def tail_guided_denoiser(
    unet: UNetFn,
    text_embeddings: np.ndarray,  # (2, 77, D) float32: [uncond, cond]
    guidance_scale: float,
    unguided_timesteps: frozenset[float],
    extra_channels: np.ndarray | None = None,  # (1, 5, h, w), 9-channel UNet only
) -> Denoiser:
    """Like loop.guided_denoiser, but at `unguided_timesteps` only the prompt half runs (eps = eps_c)."""
    both = np.ascontiguousarray(text_embeddings)
    cond = np.ascontiguousarray(text_embeddings[1:])

    def denoise(model_input: np.ndarray, timestep: float) -> np.ndarray:
        sample = model_input if extra_channels is None else np.concatenate([model_input, extra_channels], axis=1)
        t = np.array([timestep], dtype=np.float32)
        if guidance_scale == 1.0 or timestep in unguided_timesteps:
            return unet({"sample": sample, "timestep": t, "encoder_hidden_states": cond})["out_sample"]
        eps = unet({"sample": np.concatenate([sample, sample], axis=0), "timestep": t,
                    "encoder_hidden_states": both})["out_sample"]
        return guide(eps[:1], eps[1:], guidance_scale)

    return denoise


class FastOutpaintPipeline(OutpaintPipeline):
    """OutpaintPipeline (default backend openvino-bf16) plus the levers of `FastPathOptions`."""

    def __init__(self, folder: Path, backend: str = "openvino-bf16", options: FastPathOptions | None = None) -> None:
        self.options = options or FastPathOptions()  # before super().__init__: graph_names reads it
        # The levers act on the host loop's UNet calls, so the device-resident loop stays off.
        super().__init__(Path(folder), backend, device_loop=False)

    @classmethod
    def load(cls, folder, backend="openvino-bf16", options: FastPathOptions | None = None):  # type: ignore[override]
        return cls(Path(folder), backend, options)

    def graph_names(self) -> tuple[str, ...]:
        """With feature caching, the UNet split replaces the whole-UNet graph, which is then never run
        (not loading it saves an ONNX Runtime session holding the UNet's weights)."""
        if self.options.feature_cache_interval == 1:
            return GRAPHS
        missing = [g for g in FEATURE_CACHE_GRAPHS if g not in self.manifest.graphs]
        if missing:
            raise ModelError(
                f"{self.folder} lacks the graphs {', '.join(missing)} that feature caching runs: re-run "
                "`outpaint export` into it without --no-feature-cache (it adds only the missing graphs), "
                "or use FastPathOptions(feature_cache_interval=1)"
            )
        return (*(g for g in GRAPHS if g != "unet"), *FEATURE_CACHE_GRAPHS)

    def decode_region(self, latents: np.ndarray, canvas: cv.Canvas, latent_mask: np.ndarray) -> np.ndarray:
        """(1, 4, h, w) latents -> (H, W, 3) uint8: decoded inside the mask's box, the source outside."""
        margin = self.options.decode_margin
        h, w = latents.shape[2:]
        box = regenerate_box(latent_mask, margin) if margin is not None else Box(0, h, 0, w)
        if box.covers(h, w):
            return self.decode_latents(latents)
        ys, xs = box.slices
        part = self.decode_latents(np.ascontiguousarray(latents[:, :, ys, xs]))
        # Outside the box the mask is 0, where paste-back returns the source pixels exactly.
        out = canvas.rgb.copy()
        out[box.pixels()] = part
        return out

    def unet_window(self, latent_mask: np.ndarray) -> Box | None:
        margin = self.options.window_margin
        # The 9-channel UNet is not blended, so cells outside a window would not be restored.
        if margin is None or self.unet_in_channels != 4:
            return None
        h, w = latent_mask.shape[2:]
        box = regenerate_box(latent_mask, margin, UNET_MULTIPLE)
        return None if box.covers(h, w) else box

    def request_unet(self) -> UNetFn:
        """The UNet as one request sees it: with a fresh feature cache when caching is on."""
        interval = self.options.feature_cache_interval
        if interval == 1:
            return self.unet
        return feature_cached_unet(self.graphs["unet_deep"].run, self.graphs["unet_shallow"].run, interval)

    def host_denoiser(self, cond: Conditioning, request: OutpaintRequest, plan: Plan) -> Denoiser:
        window = self.unet_window(cond.latent_mask)
        unet = self.request_unet()
        if window is not None:
            unet = windowed_unet(unet, window)
        tail = min(self.options.unguided_tail_steps, plan.num_steps)
        unguided = frozenset(float(t) for t in plan.timesteps[plan.num_steps - tail:]) if tail else frozenset()
        return tail_guided_denoiser(unet, cond.text_embeddings, request.guidance_scale, unguided,
                                    cond.extra_channels)

    def decode_for_paste_back(self, latents: np.ndarray, cond: Conditioning) -> np.ndarray:
        """With the region decode on, the result's `decoded` holds the source outside the decoded box."""
        return self.decode_region(latents, cond.canvas, cond.latent_mask)


def load_pipeline(folder: str | Path, backend: str, fast: bool = False) -> OutpaintPipeline:
    """The pipeline `outpaint run` and `outpaint serve` use: the reference one, or with `fast` the fast
    path with its default levers (approximations inside the mask, see docs/benchmarks.md)."""
    if fast:
        return FastOutpaintPipeline.load(folder, backend)
    return OutpaintPipeline.load(folder, backend)
