"""The fast path's whole-outpaint seconds at the speed benchmark's full-size request, estimated from
its UNet calls (engine/fast_path.py: `unet_calls`, `unet_window`) and the per-call costs the lever
probe measured on the full-size model in bf16 (docs/benchmarks.md, "The fast path").

Why an estimate: the quality benchmark judges lever settings on the small trained model, whose
seconds say little about SD 1.5's; the full-size model cannot be run per setting on a shared 2-core
machine. The model below reproduces the probe's five measured settings to about 1 s (tested), so it
ranks settings and tells which one to time for real with `outpaint bench`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The speed benchmark's outpaint (benchmarks/workload.py): 512x512, the source on the left half,
# mask_expand 8, 25 DDIM steps with guidance.
FULL_SIZE_CANVAS = (512, 512)
FULL_SIZE_STEPS = 25
MASK_EXPAND = 8

# Seconds per guided (batch 2) UNet call on the full-size model in bf16 on 2 Zen 4 cores, at the window
# widths the probe ran (latent columns of 64 rows): the whole UNet and the shallow path.
WHOLE_S = {40: 2.40, 64: 4.30}
SHALLOW_S = {40: 0.56, 64: 1.14}
BATCH_ONE = 0.5  # an unguided (batch-1) call against a guided one: half the work
# Everything but the UNet (text encoder, VAE encode, decode, the loop's own work): the mean residual of
# the probe's settings 7:1, 7:2, 7:3, 7:5 and off:3 after their UNet calls (9.8-11.6 s).
OTHER_S = 10.5


def _per_call(table: dict[int, float], columns: int) -> float:
    """Linear in the window's columns through the two measured widths (a window's height is the canvas's)."""
    (c0, s0), (c1, s1) = sorted(table.items())
    return s0 + (s1 - s0) * (columns - c0) / (c1 - c0)


@dataclass(frozen=True)
class FullSizeEstimate:
    window_columns: int  # latent columns the UNet runs on (64: the whole canvas)
    whole: int  # whole-UNet calls
    shallow: int  # shallow-path calls
    unguided: int  # of those, batch-1 (the unguided tail)
    unet_s: float
    total_s: float


def full_size_window_columns(options) -> int:
    """The UNet window's width at the full-size request, by the engine's own rule (unet_window)."""
    from outpaint.engine import canvas as cv
    from outpaint.engine.fast_path import unet_window

    width, height = FULL_SIZE_CANVAS
    rgb = np.zeros((height, width // 2, 3), np.uint8)
    placed = cv.make_canvas(cv.SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], bool)), width=width,
                            height=height, mask_expand=MASK_EXPAND)
    window = unet_window(options, cv.latent_mask(placed.mask), unet_in_channels=4)
    return width // 8 if window is None else window.width


def estimate_full_size(options) -> FullSizeEstimate:
    """Seconds of the full-size benchmark outpaint with `options` (a FastPathOptions), in bf16."""
    from outpaint.engine.fast_path import unet_calls

    columns = full_size_window_columns(options)
    calls = unet_calls(options, FULL_SIZE_STEPS)
    whole, shallow = _per_call(WHOLE_S, columns), _per_call(SHALLOW_S, columns)
    # The tail is the last calls: which of them are shallow follows the interval's phase.
    tail_start = FULL_SIZE_STEPS - calls.unguided
    interval = options.feature_cache_interval
    tail_whole = sum(1 for k in range(tail_start, FULL_SIZE_STEPS) if k % interval == 0)
    tail_shallow = calls.unguided - tail_whole
    unet = (whole * (calls.whole - tail_whole * (1 - BATCH_ONE))
            + shallow * (calls.shallow - tail_shallow * (1 - BATCH_ONE)))
    return FullSizeEstimate(window_columns=columns, whole=calls.whole, shallow=calls.shallow,
                            unguided=calls.unguided, unet_s=round(unet, 1), total_s=round(unet + OTHER_S, 1))
