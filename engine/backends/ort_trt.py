"""ONNX Runtime's TensorRT execution provider: options per graph (profiles, engine and timing caches).

ONNX Runtime builds the TensorRT engines itself on the first session creation and caches them in
MODEL/engines/ort-trt/<graph>/ (minutes for the UNet the first time, seconds afterwards). The explicit
profiles (from the same `profile_for` as `outpaint build-engines`) make one engine serve every canvas
in the range; without them the provider rebuilds whenever a new shape arrives. Nodes TensorRT cannot
take fall back to the CUDA provider, then the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from outpaint.core.graphs import GraphSpec, graph_specs
from outpaint.core.manifest import Manifest
from outpaint.core.trt_key import ENGINES_DIR
from outpaint.core.trt_profiles import CanvasRange, ShapeProfile, profile_for

ORT_TRT_CACHE = "ort-trt"


def shapes_option(profile: dict[str, ShapeProfile], pick: str) -> str:
    """ONNX Runtime's profile syntax: `name:d0xd1x...,name2:...` for the min, opt or max shapes."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(shape, pick))}" for name, shape in profile.items())


def trt_provider_options(
    spec: GraphSpec,
    cache_dir: Path,
    canvas: CanvasRange | None = None,
    batch: int = 1,
    fp16: bool = True,
    device_id: int = 0,
) -> dict[str, str]:
    """TensorrtExecutionProvider options for one graph (ONNX Runtime takes every value as a string)."""
    profile = profile_for(spec, canvas or CanvasRange.square(), batch)
    return {
        "device_id": str(device_id),
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_builder_optimization_level": "3",
        "trt_profile_min_shapes": shapes_option(profile, "min"),
        "trt_profile_opt_shapes": shapes_option(profile, "opt"),
        "trt_profile_max_shapes": shapes_option(profile, "max"),
    }


def ort_trt_providers(folder: Path, manifest: Manifest, graph: str, device_id: int = 0) -> tuple[Any, ...]:
    """The provider list of one graph: TensorRT first, CUDA for what TensorRT cannot run, CPU last."""
    spec = {s.name: s for s in graph_specs(manifest.unet_in_channels, manifest.text_hidden_size)}[graph]
    cache = Path(folder) / ENGINES_DIR / ORT_TRT_CACHE / graph
    cache.mkdir(parents=True, exist_ok=True)
    return (
        ("TensorrtExecutionProvider", trt_provider_options(spec, cache, device_id=device_id)),
        ("CUDAExecutionProvider", {"device_id": str(device_id)}),
        "CPUExecutionProvider",
    )
