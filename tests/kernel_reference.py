"""The numpy reference of the step kernel: exactly the host loop's functions, composed.

`engine/guidance.py` (combine, unet_sample) + `engine/loop.py` (blend) + `engine/schedulers/ddim.py`
(ddim_step, DDIM.noised) are what `denoise_loop` runs for DDIM; the kernel graph must agree with
this composition.
"""

from __future__ import annotations

import numpy as np

from outpaint.engine.guidance import combine, unet_sample
from outpaint.engine.loop import blend
from outpaint.engine.schedulers.alphas import AlphaSteps
from outpaint.engine.schedulers.base import Plan
from outpaint.engine.schedulers.ddim import DDIM, ddim_step


def reference_step(
    plan: Plan[AlphaSteps],
    index: int,
    eps: np.ndarray,  # (N, 4, h, w) float32: N = 2 [uncond, cond] guided, 1 unguided
    latents: np.ndarray,  # (1, 4, h, w) float32
    *,
    guidance_scale: float,
    init_latents: np.ndarray | None = None,  # (1, 4, h, w): blend when given
    noise: np.ndarray | None = None,  # (1, 4, h, w)
    mask: np.ndarray | None = None,  # (1, 1, h, w)
    extra_channels: np.ndarray | None = None,  # (1, 5, h, w), 9-channel UNet
) -> tuple[np.ndarray, np.ndarray]:
    """(latents after step `index` and the blend, the next UNet `sample` batch)."""
    steps = plan.coefficients
    stepped = ddim_step(latents, combine(eps, guidance_scale), steps.alpha_t[index], steps.alpha_prev[index])
    if init_latents is not None:
        assert noise is not None and mask is not None, "the blend needs the request's noise and mask"
        stepped = blend(stepped, DDIM().noised(plan, index + 1, init_latents, noise), mask)
    return stepped, unet_sample(stepped, extra_channels, guided=eps.shape[0] == 2)
