"""Euler ancestral (k-diffusion `sample_euler_ancestral`), as diffusers' EulerAncestralDiscreteScheduler.

Each step goes down to sigma_down with an Euler step, then adds fresh noise of standard deviation
sigma_up, where sigma_down^2 + sigma_up^2 = sigma_next^2 (eta = 1): the sample lands at sigma_next.
The fresh noise comes from the request's seeded generator, so a seed still fixes the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Denoiser, NoiseSource, Plan, steps_to_skip
from .config import NoiseScheduleConfig
from .euler import derivative_at
from .sigmas import SigmaSpace, model_input, sigma_plan, sigma_schedule


def ancestral_split(sigma_from: np.ndarray, sigma_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigma_down, sigma_up) of k-diffusion's get_ancestral_step with eta = 1, float32."""
    sigma_from = np.asarray(sigma_from, np.float64)
    sigma_to = np.asarray(sigma_to, np.float64)
    sigma_up = np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
    sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down.astype(np.float32), sigma_up.astype(np.float32)


@dataclass(frozen=True)
class AncestralSteps:
    """Per-step (n,) float32 split of each step into a deterministic part and fresh noise."""

    sigma_down: np.ndarray  # the level the deterministic part moves to
    sigma_up: np.ndarray  # the spread of the fresh noise added after it


class EulerAncestral(SigmaSpace):
    name = "Euler a"
    reference = "diffusers.EulerAncestralDiscreteScheduler"

    def plan(
        self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0
    ) -> Plan[AncestralSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps, sigmas = sigma_schedule(config, num_inference_steps, karras=False, round_karras_timesteps=False)
        sigma_down, sigma_up = ancestral_split(sigmas[:-1], sigmas[1:])
        return sigma_plan(config, timesteps, sigmas, skip, AncestralSteps(sigma_down, sigma_up))

    def step(
        self,
        plan: Plan[AncestralSteps],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        sigma = plan.levels[index]
        eps = denoise(model_input(latents, sigma), float(plan.timesteps[index]))
        dt = np.float32(plan.coefficients.sigma_down[index] - sigma)
        down = latents + derivative_at(latents, eps, sigma) * dt
        # Drawn on every step, the last (sigma_up = 0) included, to consume the generator as diffusers does.
        fresh = rng.standard_normal(latents.shape, dtype=np.float32)
        return (down + fresh * plan.coefficients.sigma_up[index]).astype(np.float32)
