"""DPM-Solver-2 in k-diffusion's form (`sample_dpm_2`, Karras et al. 2022 Algorithm 1 with the midpoint
instead of Heun's trapezoid), on the Karras sigma schedule, as diffusers' KDPM2DiscreteScheduler with
use_karras_sigmas=True.

One step from sigma_i to sigma_{i+1} calls the model twice: at x_i, and at the midpoint in log sigma,
sigma_mid = sqrt(sigma_i sigma_{i+1}), reached by an Euler step; the whole step then uses the midpoint's
derivative. The last step (sigma_{i+1} = 0) is a plain Euler step.

Legend, code name -> k-diffusion:
    sigma_mid     = sigma_mid = exp(lerp(log sigma_i, log sigma_{i+1}, 0.5))
    midpoint      = x_2 = x + d (sigma_mid - sigma)
    derivative    = d, derivative_mid = d_2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Denoiser, NoiseSource, Plan, steps_to_skip
from .config import NoiseScheduleConfig
from .euler import derivative_at
from .sigmas import SigmaSpace, model_input, sigma_plan, sigma_schedule, sigma_to_timestep, train_sigmas


def log_midpoints(sigma_from: np.ndarray, sigma_to: np.ndarray) -> np.ndarray:
    """float32 geometric means sqrt(from * to), 0 where `sigma_to` is 0 (the final Euler step)."""
    sigma_from = np.asarray(sigma_from, np.float64)
    sigma_to = np.asarray(sigma_to, np.float64)
    return np.sqrt(sigma_from * sigma_to).astype(np.float32)


def midpoint_timesteps(config: NoiseScheduleConfig, sigma_mid: np.ndarray) -> np.ndarray:
    """float32 fractional train timesteps of the midpoints (diffusers' `timesteps_interpol`)."""
    return sigma_to_timestep(sigma_mid, np.log(train_sigmas(config))).astype(np.float32)


@dataclass(frozen=True)
class MidpointSteps:
    """Per-step (n,) float32 midpoint of DPM2's second model call."""

    sigma_mid: np.ndarray  # its level
    mid_timesteps: np.ndarray  # its fractional train timestep


class KDPM2(SigmaSpace):
    name = "DPM2 Karras"
    reference = "diffusers.KDPM2DiscreteScheduler (use_karras_sigmas=True)"
    calls_per_step = 2  # at sigma and at the midpoint

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan[MidpointSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps, sigmas = sigma_schedule(config, num_inference_steps, karras=True, round_karras_timesteps=True)
        sigma_mid = log_midpoints(sigmas[:-1], sigmas[1:])
        return sigma_plan(config, timesteps, sigmas, skip,
                          MidpointSteps(sigma_mid, midpoint_timesteps(config, sigma_mid)))

    def step(
        self,
        plan: Plan[MidpointSteps],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        sigma, sigma_next = plan.levels[index], plan.levels[index + 1]
        sigma_mid = plan.coefficients.sigma_mid[index]
        eps = denoise(model_input(latents, sigma), float(plan.timesteps[index]))
        derivative = derivative_at(latents, eps, sigma)
        midpoint = latents + derivative * np.float32(sigma_mid - sigma)
        if sigma_next == 0:
            return midpoint.astype(np.float32)  # sigma_mid is 0 too: an Euler step to the clean latents
        eps_mid = denoise(model_input(midpoint, sigma_mid), float(plan.coefficients.mid_timesteps[index]))
        derivative_mid = derivative_at(midpoint, eps_mid, sigma_mid)
        return (latents + derivative_mid * np.float32(sigma_next - sigma)).astype(np.float32)
