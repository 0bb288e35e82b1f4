"""The numpy reference of the step kernel: exactly the host loop's functions, composed.

`engine/loop.py` (guide, blend) + `engine/schedulers/ddim.py` (ddim_step, DDIM.noised) are what
`denoise_loop` runs for DDIM; the kernel graph must agree with this composition.
"""

from __future__ import annotations

import numpy as np

from outpaint.engine.loop import blend, guide
from outpaint.engine.schedulers.base import Plan
from outpaint.engine.schedulers.ddim import DDIM, ddim_step


def reference_step(
    plan: Plan,
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
    guided = eps.shape[0] == 2
    eps_guided = guide(eps[:1], eps[1:], guidance_scale) if guided else eps
    stepped = ddim_step(latents, eps_guided, plan.extra["alpha_t"][index], plan.extra["alpha_prev"][index])
    if init_latents is not None:
        stepped = blend(stepped, DDIM().noised(plan, index + 1, init_latents, noise), mask)
    sample = stepped if extra_channels is None else np.concatenate([stepped, extra_channels], axis=1)
    return stepped, (np.concatenate([sample, sample], axis=0) if guided else sample)
