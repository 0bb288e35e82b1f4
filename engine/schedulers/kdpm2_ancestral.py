"""Ancestral DPM-Solver-2 (k-diffusion `sample_dpm_2_ancestral`) on the Karras sigma schedule, as diffusers'
KDPM2AncestralDiscreteScheduler with use_karras_sigmas=True.

Like DPM2, but the deterministic part of each step only goes down to sigma_down (midpoint in log sigma
between sigma_i and sigma_down), then fresh noise of standard deviation sigma_up lifts the sample to
sigma_{i+1}. The last step is a plain Euler step to 0 without noise (no noise is drawn there, as in
diffusers, which draws it only in the second half of a step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Denoiser, NoiseSource, Plan, steps_to_skip
from .config import NoiseScheduleConfig
from .euler import derivative_at
from .euler_ancestral import ancestral_split
from .kdpm2 import log_midpoints, midpoint_timesteps
from .sigmas import SigmaSpace, model_input, sigma_plan, sigma_schedule


@dataclass(frozen=True)
class AncestralMidpointSteps:
    """Per-step (n,) float32: DPM2's midpoint on the way down, then fresh noise (see AncestralSteps)."""

    sigma_down: np.ndarray
    sigma_up: np.ndarray
    sigma_mid: np.ndarray
    mid_timesteps: np.ndarray


class KDPM2Ancestral(SigmaSpace):
    name = "DPM2 a Karras"
    reference = "diffusers.KDPM2AncestralDiscreteScheduler (use_karras_sigmas=True)"
    calls_per_step = 2  # at sigma and at the midpoint

    def plan(
        self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0
    ) -> Plan[AncestralMidpointSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps, sigmas = sigma_schedule(config, num_inference_steps, karras=True, round_karras_timesteps=True)
        sigma_down, sigma_up = ancestral_split(sigmas[:-1], sigmas[1:])
        sigma_mid = log_midpoints(sigmas[:-1], sigma_down)
        sigma_mid[-1] = 0.0  # the last step is Euler to 0
        steps = AncestralMidpointSteps(sigma_down, sigma_up, sigma_mid, midpoint_timesteps(config, sigma_mid))
        return sigma_plan(config, timesteps, sigmas, skip, steps)

    def step(
        self,
        plan: Plan[AncestralMidpointSteps],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        sigma = plan.levels[index]
        steps = plan.coefficients
        sigma_mid = steps.sigma_mid[index]
        eps = denoise(model_input(latents, sigma), float(plan.timesteps[index]))
        derivative = derivative_at(latents, eps, sigma)
        midpoint = latents + derivative * np.float32(sigma_mid - sigma)
        if sigma_mid == 0:
            return midpoint.astype(np.float32)
        eps_mid = denoise(model_input(midpoint, sigma_mid), float(steps.mid_timesteps[index]))
        derivative_mid = derivative_at(midpoint, eps_mid, sigma_mid)
        down = latents + derivative_mid * np.float32(steps.sigma_down[index] - sigma)
        fresh = rng.standard_normal(latents.shape, dtype=np.float32)
        return (down + fresh * steps.sigma_up[index]).astype(np.float32)
