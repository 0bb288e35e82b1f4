"""Euler (Karras et al. 2022, arXiv:2206.00364, Algorithm 2 without churn), as diffusers' EulerDiscreteScheduler.

Legend, code name -> paper symbol:
    sigma, sigma_next = sigma_i, sigma_{i+1}
    eps               = epsilon_theta(x_i / sqrt(sigma_i^2 + 1); t_i), the UNet's noise prediction
    x0_pred           = D(x_i; sigma_i) = x_i - sigma_i eps, the denoised estimate
    derivative        = d_i = (x_i - D(x_i; sigma_i)) / sigma_i, the probability-flow ODE's dx/dsigma
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Denoiser, NoiseSource, Plan, steps_to_skip
from .config import NoiseScheduleConfig
from .sigmas import SigmaSpace, model_input, sigma_plan, sigma_schedule


class Euler(SigmaSpace):
    name = "Euler"
    reference = "diffusers.EulerDiscreteScheduler"

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan[None]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps, sigmas = sigma_schedule(config, num_inference_steps, karras=False, round_karras_timesteps=False)
        return sigma_plan(config, timesteps, sigmas, skip, None)

    def step(
        self,
        plan: Plan[None],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        sigma, sigma_next = plan.levels[index], plan.levels[index + 1]
        eps = denoise(model_input(latents, sigma), float(plan.timesteps[index]))
        return euler_step(latents, eps, sigma, sigma_next)


def derivative_at(latents: np.ndarray, eps: np.ndarray, sigma: np.float32) -> np.ndarray:
    """d = (x - D(x; sigma)) / sigma with D = x - sigma eps, in diffusers' order of operations
    (mathematically eps; computed through x0_pred so rounding matches the reference)."""
    x0_pred = latents - sigma * eps
    return (latents - x0_pred) / sigma


def euler_step(latents: np.ndarray, eps: np.ndarray, sigma: np.float32, sigma_next: np.float32) -> np.ndarray:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i (Algorithm 2, line 5 without the Heun correction)."""
    dt = np.float32(sigma_next - sigma)
    return (latents + derivative_at(latents, eps, sigma) * dt).astype(np.float32)
