"""A GPU backend's image against the CPU fp32 image of the same request and seed, and the bar it must meet.

Both images are the pipeline's final uint8 output; the comparison covers the regenerated area only
(the canvas mask), since paste-back copies the source pixels outside it and would inflate the score.

The bars follow from the precisions (docs/gpu.md, "Expected differences"):
- fp32 on the GPU (ort-cuda): cuDNN and cuBLAS use TF32 (a 10-bit mantissa) for convolutions and
  matrix products on Ampere and newer, and sum in another order: small drifts, compounded over the
  steps. 40 dB = an RMS error under 2.6/255.
- fp16 (ort-trt, tensorrt): every layer's weights and activations carry an 11-bit significand and a
  narrower range, compounded over the steps: 30 dB = an RMS error under 8.1/255, still far above what
  a wrong computation gives (another seed gives about 13 dB on the same model; docs/gpu.md).
The largest absolute difference is reported, not judged: a handful of pixels at an edge the two runs
place a rounding apart can differ by a lot without the image being wrong. Non-finite latents fail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..workload import psnr_db

PRECISION = {"ort-cpu": "fp32", "ort-cuda": "fp32/TF32", "ort-trt": "fp16", "tensorrt": "fp16"}


@dataclass(frozen=True)
class Bar:
    min_psnr_db: float
    why: str


BARS = {
    "fp32": Bar(40.0, "fp32 with TF32 matrix products against fp32 on the CPU: RMS error under 2.6/255"),
    "fp16": Bar(30.0, "fp16 weights and activations in every layer against fp32, compounded over the steps: "
                      "RMS error under 8.1/255"),
}


def bar_for(backend: str) -> Bar:
    return BARS["fp16" if PRECISION.get(backend, "").startswith("fp16") else "fp32"]


@dataclass(frozen=True)
class ImageComparison:
    psnr_db: float  # over the regenerated area; 999.0 when identical there
    max_abs_diff: int  # 0..255, over the regenerated area
    rms_diff: float  # in 0..255 units
    pixels: int  # pixels in the regenerated area
    bar_psnr_db: float
    passed: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_images(reference: np.ndarray, candidate: np.ndarray, region: np.ndarray, bar: Bar,
                   finite: bool = True) -> ImageComparison:
    """`reference` and `candidate`: (H, W, 3) uint8; `region`: (H, W) bool, the regenerated pixels."""
    if reference.shape != candidate.shape or reference.dtype != np.uint8 or candidate.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of one shape, got {reference.dtype}{reference.shape} and "
                         f"{candidate.dtype}{candidate.shape}")
    if region.shape != reference.shape[:2] or region.dtype != bool:
        raise ValueError(f"region must be a bool mask of shape {reference.shape[:2]}, got {region.dtype}{region.shape}")
    pixels = int(region.sum())
    if pixels == 0:
        raise ValueError("the regenerated area is empty: nothing to compare")
    diff = np.abs(reference.astype(np.int16) - candidate.astype(np.int16))[region]
    psnr = psnr_db(reference, candidate, region)
    rms = float(np.sqrt(np.mean(diff.astype(np.float64) ** 2)))
    passed = finite and psnr >= bar.min_psnr_db
    if not finite:
        verdict = "fail: the final latents hold NaN or infinity (fp16 overflow?)"
    elif passed:
        verdict = f"pass: {psnr:.2f} dB >= {bar.min_psnr_db:.0f} dB"
    else:
        verdict = f"fail: {psnr:.2f} dB < {bar.min_psnr_db:.0f} dB"
    return ImageComparison(psnr_db=psnr, max_abs_diff=int(diff.max()), rms_diff=round(rms, 3), pixels=pixels,
                           bar_psnr_db=bar.min_psnr_db, passed=passed, verdict=verdict)
