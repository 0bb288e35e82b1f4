"""What one benchmark run measures: systems, canvases, run counts. Everything here is a CLI flag."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from outpaint.engine.fast_path import FastPathOptions

_FAST_DEFAULTS = FastPathOptions()  # the engine's defaults are the one source of outpaint-fast's

# Systems: ours start with "outpaint", peers with their framework's name (results.json contract).
OURS = ("outpaint-ort-cpu", "outpaint-openvino-fp32", "outpaint-openvino-bf16", "outpaint-fast")
# The fast path; "-static" compiles OpenVINO models per input shape instead of one dynamic-shape model
# per batch (engine/backends/openvino.py), to show what the dynamic default costs or saves. Run only
# when named.
# "-int8" runs it on openvino-int8 whatever `--fast-backend` says (the model needs `outpaint quantize`),
# to compare int8 with outpaint-fast's precision in one run.
FAST_SYSTEMS = ("outpaint-fast", "outpaint-fast-static", "outpaint-fast-int8")
ON_REQUEST = ("outpaint-fast-static", "outpaint-fast-int8")
# optimum-ort-inpaint: optimum's ORTStableDiffusionInpaintPipeline on optimum's export of the same weights,
# run in optimum's own virtualenv (benchmarks/systems_optimum.py).
OPTIMUM = "optimum-ort-inpaint"
PEERS = ("diffusers-torch-fp32", "openvino-fp32", "openvino-bf16", OPTIMUM)
SYSTEMS = (*PEERS, *OURS)
# The whole outpaint is the most expensive row; by default it runs for the reference systems only.
WHOLE_DEFAULT = ("diffusers-torch-fp32", OPTIMUM, "outpaint-ort-cpu", "outpaint-openvino-bf16", "outpaint-fast")
REFERENCE_FP32 = "outpaint-ort-cpu"  # the image the fast path's PSNR is measured against
# Systems that compute in bf16 whatever the CPU: skipped (not failed) where bf16 is not native, because
# OpenVINO then emulates it (AVX-512 without BF16) or ignores the hint and runs fp32 (AVX2): either way
# the row would not measure what its name says.
NEEDS_NATIVE_BF16 = ("openvino-bf16", "outpaint-openvino-bf16")
SIZES = ("tiny", "full")


def parse_canvas(text: str) -> tuple[int, int]:
    """'768x512' -> (768, 512) as (width, height); both multiples of 64."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"canvas {text!r} is not WIDTHxHEIGHT, e.g. 768x512") from None
    if width <= 0 or height <= 0 or width % 64 or height % 64:
        raise ValueError(f"canvas {text!r}: width and height must be positive multiples of 64")
    return width, height


@dataclass(frozen=True)
class FastSettings:
    """The levers of outpaint-fast (engine.fast_pipeline.FastPathOptions); None = lever off."""

    # None: the fastest precision this CPU runs natively (engine/cpu_features.py), chosen when the run starts.
    backend: str | None = None
    # Off: the region decode measured 21-24 dB against the full decode on this model (docs/benchmarks.md).
    decode_margin: int | None = _FAST_DEFAULTS.decode_margin
    window_margin: int | None = _FAST_DEFAULTS.window_margin
    unguided_tail_steps: int = _FAST_DEFAULTS.unguided_tail_steps  # 2 = the steps below sigma 0.28 at 25 DDIM steps
    feature_cache_interval: int = _FAST_DEFAULTS.feature_cache_interval  # whole UNet every k-th call; 1 = off
    decode_tile: int | None = _FAST_DEFAULTS.decode_tile  # latent cells of a VAE-decode tile; None = one piece
    encode_tile: int | None = _FAST_DEFAULTS.encode_tile  # the same for the VAE encode


@dataclass(frozen=True)
class BenchConfig:
    size: str = "full"  # which random-weight model: tiny (smoke test) or full (SD 1.5 size, real timings)
    model_dir: str = ""
    systems: tuple[str, ...] = SYSTEMS
    whole_systems: tuple[str, ...] = WHOLE_DEFAULT
    # Systems that also run the UNet at canvases of 1024x1024 or more (the slowest rows).
    large_systems: tuple[str, ...] = SYSTEMS
    unet_canvases: tuple[str, ...] = ("512x512", "768x512", "1024x1024")
    outpaint_canvas: str = "512x512"  # the source fills its left half
    steps: int = 25
    guidance: float = 7.5
    seed: int = 1234
    warmup: int = 1
    runs: int = 3  # text encoder, VAE, UNet at canvases below 1024x1024
    runs_large: int = 2  # UNet at canvases of 1024x1024 pixels or more
    whole_runs: int = 1
    fast: FastSettings = field(default_factory=FastSettings)

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        known = (*SYSTEMS, *ON_REQUEST)
        unknown = [s for s in (*self.systems, *self.whole_systems, *self.large_systems) if s not in known]
        if unknown:
            raise ValueError(f"unknown systems {', '.join(unknown)}; choose from {', '.join(known)}")
        for canvas in (*self.unet_canvases, self.outpaint_canvas):
            parse_canvas(canvas)
        for name in ("runs", "runs_large", "whole_runs", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def unet_canvases_for(self, system: str) -> tuple[str, ...]:
        return tuple(c for c in self.unet_canvases if system in self.large_systems or not self.is_large(c))

    @staticmethod
    def is_large(canvas: str) -> bool:
        width, height = parse_canvas(canvas)
        return width * height >= 1024 * 1024

    def runs_for(self, canvas: str) -> int:
        return self.runs_large if self.is_large(canvas) else self.runs

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchConfig:
        data = json.loads(text)
        data["fast"] = FastSettings(**data["fast"])
        for key in ("systems", "whole_systems", "large_systems", "unet_canvases"):
            data[key] = tuple(data[key])
        return cls(**data)
