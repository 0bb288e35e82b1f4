"""DDIM (Song et al. 2020, arXiv:2010.02502), deterministic (eta = 0), as diffusers' DDIMScheduler.

Legend, code name -> paper symbol:
    alpha_t      = alpha_t in the paper = alpha-bar_t of DDPM (cumulative product)
    alpha_prev   = alpha_{t-1}, at the next (lower) timestep; the final one is alpha_0 (set_alpha_to_one false)
    eps          = epsilon_theta(x_t)
    x0_pred      = "predicted x_0" of formula (12)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .alphas import AlphaSpace, AlphaSteps, alpha_plan
from .base import Denoiser, NoiseSource, Plan, spaced_timesteps, steps_to_skip
from .config import NoiseScheduleConfig


class DDIM(AlphaSpace):
    name = "DDIM"
    reference = "diffusers.DDIMScheduler (eta=0)"

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan[AlphaSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        alphas_cumprod = config.alphas_cumprod()
        final_alpha = np.float32(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
        timesteps = spaced_timesteps(config, num_inference_steps)
        # diffusers' DDIM steps to t - T // n, which for "leading" is the next timestep.
        prev = timesteps - config.num_train_timesteps // num_inference_steps
        alpha_t = alphas_cumprod[timesteps]
        alpha_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], final_alpha).astype(np.float32)
        # Level i is alpha-bar before step i; the last level is "clean" (alpha 1 for blending).
        return alpha_plan(timesteps, alpha_t, skip, AlphaSteps(alpha_t.astype(np.float32), alpha_prev))

    def step(
        self,
        plan: Plan[AlphaSteps],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        eps = denoise(latents, float(plan.timesteps[index]))
        steps = plan.coefficients
        return ddim_step(latents, eps, steps.alpha_t[index], steps.alpha_prev[index])


def ddim_step(latents: np.ndarray, eps: np.ndarray, alpha_t: np.float32, alpha_prev: np.float32) -> np.ndarray:
    """One deterministic DDIM update x_t -> x_{t-1} (eta = 0). Shapes (B, 4, h, w) float32."""
    one = np.float32(1.0)
    x0_pred = (latents - np.sqrt(one - alpha_t) * eps) / np.sqrt(alpha_t)  # formula (12), "predicted x_0"
    direction = np.sqrt(one - alpha_prev) * eps  # formula (12), "direction pointing to x_t"
    return (np.sqrt(alpha_prev) * x0_pred + direction).astype(np.float32)  # formula (12), sigma_t = 0
