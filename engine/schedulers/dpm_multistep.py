"""DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2), as diffusers'
DPMSolverMultistepScheduler (solver_order 2, midpoint, lower_order_final, final sigma 0).

One model call per step. The second-order update reuses the previous step's data prediction, so
the per-request state holds it. The first step of a request is first order (no history), and so is
the last (its target sigma is 0, lambda = +inf: the result is the data prediction itself).

Legend, code name -> paper symbol:
    x0_pred        = x_theta(x_{t_i}, t_i), the data prediction
    h              = lambda_{t_{i+1}} - lambda_{t_i};  h_prev = lambda_{t_i} - lambda_{t_{i-1}};  r = h_prev / h
    first-order    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D0        (DPM-Solver++ 1, = DDIM)
    second-order   ... - 0.5 alpha_{i+1} (e^{-h} - 1) D1, D0 = x0_pred_i, D1 = (x0_pred_i - x0_pred_{i-1}) / r
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Denoiser, NoiseSource, Plan, steps_to_skip
from .config import NoiseScheduleConfig
from .dpm_common import (
    DPMSpace,
    VPLevels,
    alpha_sigma,
    data_prediction,
    half_log_snr,
    multistep_timesteps,
    vp_plan,
    vp_sigmas,
)


@dataclass
class MultistepState:
    previous_x0: np.ndarray | None = None  # the data prediction of the previous step of this request


@dataclass(frozen=True)
class MultistepSteps(VPLevels):
    """Per-step (n,) float32 scalars of DPM-Solver++ 2M's update."""

    ratio: np.ndarray  # sigma_{i+1} / sigma_i
    phi: np.ndarray  # alpha_{i+1} (e^{-h} - 1)
    inverse_r: np.ndarray  # h_i / h_{i-1}


def multistep_coefficients(sigmas: np.ndarray) -> MultistepSteps:
    """float32 per-step scalars of the updates from sigma_i to sigma_{i+1}; `sigmas` (n + 1,) end in 0."""
    alpha, sigma_vp = alpha_sigma(sigmas)
    lam = half_log_snr(sigmas)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = lam[1:] - lam[:-1]  # +inf on the last step (never used: that step returns x0_pred)
        h_prev = np.concatenate([[np.nan], lam[1:-1] - lam[:-2]])  # undefined for the first step
        ratio = sigma_vp[1:].astype(np.float64) / sigma_vp[:-1]
        phi = alpha[1:].astype(np.float64) * np.expm1(-h)
        inverse_r = h / h_prev
    return MultistepSteps(alpha, sigma_vp, ratio.astype(np.float32), phi.astype(np.float32),
                          inverse_r.astype(np.float32))


class DPMSolverMultistep(DPMSpace):
    name = "DPM Multi"
    reference = "diffusers.DPMSolverMultistepScheduler (DPM-Solver++ 2M)"

    def plan(
        self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0
    ) -> Plan[MultistepSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps = multistep_timesteps(config, num_inference_steps)
        sigmas = vp_sigmas(config, timesteps)
        # A step's coefficients need the sigma before it, so they come from the full schedule, then sliced.
        return vp_plan(timesteps, sigmas, multistep_coefficients(sigmas), skip)

    def new_state(self) -> MultistepState:
        return MultistepState()

    def step(
        self,
        plan: Plan[MultistepSteps],
        state: MultistepState,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        steps = plan.coefficients
        eps = denoise(latents, float(plan.timesteps[index]))
        x0_pred = data_prediction(latents, eps, steps.alpha[index], steps.sigma_vp[index])
        previous_x0, state.previous_x0 = state.previous_x0, x0_pred
        if plan.levels[index + 1] == 0:
            return x0_pred  # lambda = +inf: e^{-h} = 0 and sigma_{i+1} = 0 leave the data prediction
        ratio, phi = steps.ratio[index], steps.phi[index]
        first_order = ratio * latents - phi * x0_pred
        if previous_x0 is None:
            return first_order.astype(np.float32)
        d1 = steps.inverse_r[index] * (x0_pred - previous_x0)
        return (first_order - (np.float32(0.5) * phi) * d1).astype(np.float32)
