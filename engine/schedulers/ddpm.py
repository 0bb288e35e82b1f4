"""DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239) on a spaced schedule, as diffusers'
DDPMScheduler with variance_type "fixed_small" (sigma_t^2 = beta-tilde_t) and clip_sample off (SD 1.5).

Each step samples x_{t'} ~ q(x_{t'} | x_t, x_0 = x0_pred), the posterior of eq. (6)-(7) between two
spaced timesteps t > t', with fresh noise from the request's seeded generator.

Legend, code name -> paper symbol:
    alpha_t, alpha_prev = alpha-bar_t, alpha-bar_{t'} (1 after the last step)
    beta_t, beta_prev   = 1 - alpha-bar_t, 1 - alpha-bar_{t'}
    current_alpha       = alpha_t / alpha_prev (alpha_t of eq. 7 for the spaced pair), current_beta = 1 - it
    variance            = beta-tilde = beta_prev / beta_t * current_beta (eq. 7)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .alphas import AlphaSpace, alpha_plan
from .base import Denoiser, NoiseSource, Plan, spaced_timesteps, steps_to_skip
from .config import NoiseScheduleConfig

MIN_VARIANCE = 1e-20  # diffusers clamps beta-tilde here (it is 0 on the last step)


@dataclass(frozen=True)
class PosteriorSteps:
    """Per-step (n,) float32 coefficients of eq. (7): mean = coeff_x0 x0_pred + coeff_xt x_t, and std."""

    alpha_t: np.ndarray
    coeff_x0: np.ndarray
    coeff_xt: np.ndarray
    std: np.ndarray


def posterior_coefficients(alpha_t: np.ndarray, alpha_prev: np.ndarray) -> PosteriorSteps:
    one = np.float32(1.0)
    beta_t, beta_prev = one - alpha_t, one - alpha_prev
    current_alpha = alpha_t / alpha_prev
    current_beta = one - current_alpha
    variance = np.maximum(beta_prev / beta_t * current_beta, np.float32(MIN_VARIANCE))
    return PosteriorSteps(
        alpha_t=alpha_t.astype(np.float32),
        coeff_x0=(np.sqrt(alpha_prev) * current_beta / beta_t).astype(np.float32),
        coeff_xt=(np.sqrt(current_alpha) * beta_prev / beta_t).astype(np.float32),
        std=np.sqrt(variance).astype(np.float32),
    )


class DDPM(AlphaSpace):
    name = "DDPM"
    reference = "diffusers.DDPMScheduler (variance_type fixed_small, clip_sample False)"

    def plan(
        self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0
    ) -> Plan[PosteriorSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        alphas_cumprod = config.alphas_cumprod()
        timesteps = spaced_timesteps(config, num_inference_steps)
        alpha_t = alphas_cumprod[timesteps]
        # diffusers' DDPM steps to the next timestep of the schedule, and to alpha-bar = 1 after the last.
        alpha_prev = np.concatenate([alpha_t[1:], [np.float32(1.0)]]).astype(np.float32)
        return alpha_plan(timesteps, alpha_t, skip, posterior_coefficients(alpha_t, alpha_prev))

    def step(
        self,
        plan: Plan[PosteriorSteps],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        timestep = plan.timesteps[index]
        steps = plan.coefficients
        alpha_t = steps.alpha_t[index]
        eps = denoise(latents, float(timestep))
        x0_pred = (latents - np.sqrt(np.float32(1.0) - alpha_t) * eps) / np.sqrt(alpha_t)  # eq. (15)
        mean = steps.coeff_x0[index] * x0_pred + steps.coeff_xt[index] * latents
        if timestep <= 0:
            return mean.astype(np.float32)  # x_0 is returned without noise (Algorithm 2, z = 0 at t = 1)
        fresh = rng.standard_normal(latents.shape, dtype=np.float32)
        return (mean + steps.std[index] * fresh).astype(np.float32)
