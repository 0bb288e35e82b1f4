"""What DPM-Solver++ multistep and singlestep share: their schedules, the VP view of a sigma, and noising.

DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) works on the variance-preserving latents
x_t = alpha_t x_0 + sigma_t eps (init_noise_sigma 1, no input scaling) in the half-log-SNR
lambda_t = log(alpha_t / sigma_t). diffusers keeps a VE sigma per step, s = sigma_t / alpha_t, and
derives alpha_t = 1 / sqrt(s^2 + 1), sigma_t = s alpha_t, lambda_t = -log s; the levels of our plans
are that s, ending in 0 (lambda = +inf: the last step returns the data prediction itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import C, Plan, cut
from .config import NoiseScheduleConfig
from .sigmas import interpolated_sigmas


def multistep_timesteps(config: NoiseScheduleConfig, num_inference_steps: int) -> np.ndarray:
    """(n,) int64 timesteps of DPMSolverMultistepScheduler: n + 1 points spaced over [0, T), the last dropped.

    Note "leading" divides T by n + 1 (not n as DDIM does): 10 steps give 901, 811, ..., 91.
    """
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        points = np.linspace(0, n_train - 1, num_inference_steps + 1).round()[::-1][:-1]
        return points.astype(np.int64)
    if config.timestep_spacing == "leading":
        ratio = n_train // (num_inference_steps + 1)
        points = (np.arange(0, num_inference_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64)
        return points + config.steps_offset
    ratio = n_train / num_inference_steps
    return np.arange(n_train, 0, -ratio).round().astype(np.int64) - 1


def singlestep_timesteps(config: NoiseScheduleConfig, num_inference_steps: int) -> np.ndarray:
    """(n,) int64 timesteps of DPMSolverSinglestepScheduler, which always spaces linearly
    (it has no timestep_spacing option): round(linspace(0, T - 1, n + 1)) descending, the last dropped."""
    points = np.linspace(0, config.num_train_timesteps - 1, num_inference_steps + 1).round()[::-1][:-1]
    return points.astype(np.int64)


def vp_sigmas(config: NoiseScheduleConfig, timesteps: np.ndarray) -> np.ndarray:
    """(n + 1,) float32 VE sigmas at the timesteps, then 0 (diffusers' final_sigmas_type "zero")."""
    return np.concatenate([interpolated_sigmas(config, timesteps), [0.0]]).astype(np.float32)


def alpha_sigma(sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (alpha_t, sigma_t) = (1 / sqrt(s^2 + 1), s / sqrt(s^2 + 1)) of VE sigmas s."""
    s = np.asarray(sigmas, np.float64)
    alpha = 1.0 / np.sqrt(s**2 + 1.0)
    return alpha.astype(np.float32), (s * alpha).astype(np.float32)


def half_log_snr(sigmas: np.ndarray) -> np.ndarray:
    """float64 lambda = log(alpha_t / sigma_t) = -log s; +inf at s = 0."""
    with np.errstate(divide="ignore"):
        return -np.log(np.asarray(sigmas, np.float64))


@dataclass(frozen=True)
class VPLevels:
    """The variance-preserving coefficients at each level: x = alpha x_0 + sigma_vp eps."""

    alpha: np.ndarray  # (n + 1,) float32
    sigma_vp: np.ndarray  # (n + 1,) float32


class DPMSpace:
    """start/noised of the DPM-Solver++ schedulers: alpha_t x_0 + sigma_t eps at the plan's VE sigma."""

    calls_per_step = 1

    def start(self, plan: Plan[VPLevels], init_latents: np.ndarray, noise: np.ndarray, pure_noise: bool) -> np.ndarray:
        if pure_noise:
            return noise.astype(np.float32, copy=True)  # init_noise_sigma is 1
        return self.noised(plan, 0, init_latents, noise)

    def noised(self, plan: Plan[VPLevels], level: int, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        if level >= plan.num_steps:
            return clean
        alpha, sigma = plan.coefficients.alpha[level], plan.coefficients.sigma_vp[level]
        return (alpha * clean + sigma * noise).astype(np.float32)


def data_prediction(latents: np.ndarray, eps: np.ndarray, alpha: np.float32, sigma: np.float32) -> np.ndarray:
    """x0_pred = (x_t - sigma_t eps) / alpha_t: DPM-Solver++ integrates the data prediction (its eq. 4)."""
    return ((latents - sigma * eps) / alpha).astype(np.float32)


def vp_plan(timesteps: np.ndarray, sigmas: np.ndarray, coefficients: C, skip: int) -> Plan[C]:
    """The plan of a DPM-Solver++ schedule with `strength`'s first `skip` steps cut off.

    Coefficients need the sigma before each step, so callers compute them on the full schedule.
    """
    return Plan(
        timesteps=timesteps[skip:].astype(np.float32),
        levels=sigmas[skip:],
        coefficients=cut(coefficients, skip),
    )
