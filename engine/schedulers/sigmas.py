"""The sigma (variance-exploding) view of SD 1.5's schedule, shared by the k-diffusion-style schedulers.

Karras et al. 2022 (arXiv:2206.00364) write the forward process as x_sigma = x_0 + sigma * eps with
sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t). The UNet was trained on the variance-preserving
x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps = x_sigma / sqrt(sigma^2 + 1), so a
sigma-space scheduler divides its latents by sqrt(sigma^2 + 1) before every model call and passes the
(possibly fractional) train timestep whose sigma that is.

Every array is built with the dtypes diffusers uses (float32 train sigmas, float64 interpolation,
float32 result), so the schedules agree with diffusers' to the last bit or the last float32 ulp.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import C, Plan, cut
from .config import NoiseScheduleConfig

KARRAS_RHO = 7.0  # the value of Karras et al. (their eq. 5), as diffusers and k-diffusion use


def train_sigmas(config: NoiseScheduleConfig) -> np.ndarray:
    """(T,) float32 sigma of every train timestep, ascending with t."""
    alphas_cumprod = config.alphas_cumprod()
    return np.sqrt((np.float32(1.0) - alphas_cumprod) / alphas_cumprod).astype(np.float32)


def discrete_timesteps(config: NoiseScheduleConfig, num_inference_steps: int) -> np.ndarray:
    """(n,) float32 descending timesteps of diffusers' Euler/Heun/LMS/KDPM2 family for the config's spacing.

    Unlike DDIM these are not rounded for "linspace" (fractional timesteps are fine for the UNet).
    """
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        return np.linspace(0, n_train - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
    if config.timestep_spacing == "leading":
        ratio = n_train // num_inference_steps
        steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.float32)
        return steps + np.float32(config.steps_offset)
    ratio = n_train / num_inference_steps
    return np.arange(n_train, 0, -ratio).round().astype(np.float32) - np.float32(1.0)


def interpolated_sigmas(config: NoiseScheduleConfig, timesteps: np.ndarray) -> np.ndarray:
    """(n,) float64 sigmas at (fractional) timesteps, linear in t between train timesteps."""
    sigmas = train_sigmas(config)
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def karras_sigmas(in_sigmas: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """(n,) float64 Karras et al. eq. (5): sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho.

    The end points are the first and last of `in_sigmas` (the spaced schedule), as in diffusers.
    """
    sigma_min, sigma_max = float(in_sigmas[-1]), float(in_sigmas[0])
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho = sigma_min ** (1 / KARRAS_RHO)
    max_inv_rho = sigma_max ** (1 / KARRAS_RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO


def sigma_to_timestep(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """Fractional train timesteps of `sigmas`: linear interpolation in log sigma between neighbours.

    Clipped to [0, T-1]; sigma 0 maps to timestep 0 (never passed to the model).
    """
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_train_sigmas[:, np.newaxis]  # (T, n)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_train_sigmas.shape[0] - 2)
    high = low + 1
    log_low, log_high = log_train_sigmas[low], log_train_sigmas[high]
    weight = np.clip((log_low - log_sigma) / (log_low - log_high), 0, 1)
    return ((1 - weight) * low + weight * high).reshape(sigmas.shape)


def sigma_schedule(
    config: NoiseScheduleConfig, num_inference_steps: int, *, karras: bool, round_karras_timesteps: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(n,) timesteps and (n + 1,) float32 sigmas ending in 0, as diffusers' `set_timesteps` computes them.

    KDPM2's two classes round the Karras timesteps to integers, Euler/Heun/LMS do not: `round_karras_timesteps`.
    """
    timesteps = discrete_timesteps(config, num_inference_steps)
    sigmas = interpolated_sigmas(config, timesteps)
    if karras:
        log_train_sigmas = np.log(train_sigmas(config))
        sigmas = karras_sigmas(sigmas, num_inference_steps)
        timesteps = sigma_to_timestep(sigmas, log_train_sigmas)
        if round_karras_timesteps:
            timesteps = timesteps.round()
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return timesteps.astype(np.float32), sigmas


def init_noise_sigma(config: NoiseScheduleConfig, sigmas: np.ndarray) -> np.float32:
    """The standard deviation of the start latents, as diffusers defines it for the config's spacing.

    For "leading" spacing (SD 1.5) diffusers uses sqrt(sigma_max^2 + 1), the spread of x_0 + sigma eps for
    unit-variance x_0, instead of sigma_max; we keep its value so seeds reproduce diffusers' images.
    """
    sigma_max = np.float32(sigmas.max())
    if config.timestep_spacing in ("linspace", "trailing"):
        return sigma_max
    return np.float32(np.sqrt(np.float64(sigma_max) ** 2 + 1.0))


def model_input(latents: np.ndarray, sigma: float) -> np.ndarray:
    """x_sigma / sqrt(sigma^2 + 1): the variance-preserving x_t the UNet expects. (B, 4, h, w) float32."""
    scale = np.float32(np.sqrt(np.float64(sigma) ** 2 + 1.0))
    return (latents / scale).astype(np.float32)


class SigmaSpace:
    """start/noised/new_state of schedulers whose latents are x_0 + sigma * noise; levels are sigmas.

    `noised(level)` is the known region at the scheduler's own level after step level - 1, so masked
    blending puts init latents + sigma * noise back, never the variance-preserving formula of DDIM.
    """

    calls_per_step = 1

    def start(self, plan: Plan[Any], init_latents: np.ndarray, noise: np.ndarray, pure_noise: bool) -> np.ndarray:
        if pure_noise:
            return (noise * plan.init_noise_sigma).astype(np.float32)
        return self.noised(plan, 0, init_latents, noise)

    def noised(self, plan: Plan[Any], level: int, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """x_0 + sigma * eps: the forward process in sigma space (Karras et al. eq. 1 with s(t) = 1)."""
        if level >= plan.num_steps:
            return clean
        return (clean + noise * plan.levels[level]).astype(np.float32)

    def new_state(self) -> Any:
        return None


def sigma_plan(
    config: NoiseScheduleConfig,
    timesteps: np.ndarray,  # (n,) float32 for the whole schedule
    sigmas: np.ndarray,  # (n + 1,) float32 ending in 0
    skip: int,
    coefficients: C,  # per-step arrays of the whole schedule
) -> Plan[C]:
    """A plan over the steps left after `skip`; the per-step `coefficients` are cut alike."""
    return Plan(
        timesteps=timesteps[skip:].astype(np.float32),
        levels=sigmas[skip:].astype(np.float32),
        coefficients=cut(coefficients, skip),
        init_noise_sigma=init_noise_sigma(config, sigmas),
    )
