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

from .base import Denoiser, Plan, skip_for_strength, spaced_timesteps
from .config import NoiseScheduleConfig


class DDIM:
    name = "DDIM"
    reference = "diffusers.DDIMScheduler (eta=0)"

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if num_inference_steps > config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps {num_inference_steps} exceeds the {config.num_train_timesteps} training steps"
            )
        alphas_cumprod = config.alphas_cumprod()
        final_alpha = np.float32(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
        timesteps = spaced_timesteps(config, num_inference_steps)
        # diffusers' DDIM steps to t - T // n, which for "leading" is the next timestep.
        prev = timesteps - config.num_train_timesteps // num_inference_steps
        alpha_t = alphas_cumprod[timesteps]
        alpha_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], final_alpha).astype(np.float32)
        skip = skip_for_strength(num_inference_steps, strength)
        if skip >= num_inference_steps:
            raise ValueError(f"strength {strength} leaves no denoising step of {num_inference_steps}")
        alpha_t, alpha_prev, timesteps = alpha_t[skip:], alpha_prev[skip:], timesteps[skip:]
        return Plan(
            timesteps=timesteps.astype(np.float32),
            # Level i is alpha-bar before step i; the last level is "clean" (alpha 1 for blending).
            levels=np.concatenate([alpha_t, [np.float32(1.0)]]).astype(np.float32),
            extra={"alpha_t": alpha_t, "alpha_prev": alpha_prev},
        )

    def start(self, plan: Plan, init_latents: np.ndarray, noise: np.ndarray, pure_noise: bool) -> np.ndarray:
        if pure_noise:
            return noise.astype(np.float32, copy=True)  # init_noise_sigma is 1 for DDIM
        return self.noised(plan, 0, init_latents, noise)

    def noised(self, plan: Plan, level: int, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """q(x_t | x_0) of DDPM eq. (4): sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps."""
        if level >= plan.num_steps:
            return clean
        alpha = plan.levels[level]
        return (np.sqrt(alpha) * clean + np.sqrt(np.float32(1.0) - alpha) * noise).astype(np.float32)

    def new_state(self) -> Any:
        return None

    def step(
        self,
        plan: Plan,
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: np.random.Generator,
    ) -> np.ndarray:
        eps = denoise(latents, float(plan.timesteps[index]))
        return ddim_step(latents, eps, plan.extra["alpha_t"][index], plan.extra["alpha_prev"][index])


def ddim_step(latents: np.ndarray, eps: np.ndarray, alpha_t: np.float32, alpha_prev: np.float32) -> np.ndarray:
    """One deterministic DDIM update x_t -> x_{t-1} (eta = 0). Shapes (B, 4, h, w) float32."""
    one = np.float32(1.0)
    x0_pred = (latents - np.sqrt(one - alpha_t) * eps) / np.sqrt(alpha_t)  # formula (12), "predicted x_0"
    direction = np.sqrt(one - alpha_prev) * eps  # formula (12), "direction pointing to x_t"
    return (np.sqrt(alpha_prev) * x0_pred + direction).astype(np.float32)  # formula (12), sigma_t = 0
