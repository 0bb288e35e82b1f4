"""Singlestep DPM-Solver++(2S) (Lu et al. 2022, arXiv:2211.01095, Algorithm 1 with the midpoint taken on the
schedule), as diffusers' DPMSolverSinglestepScheduler (solver_order 2, midpoint, final sigma 0).

The schedule is walked in pairs of steps with orders [1, 2, 1, 2, ..., 1]: the order-1 step is a
first-order update to the pair's intermediate sigma (its output is a valid, if rougher, sample at that
level, which masked blending and previews can use); the order-2 step restarts from the latents the pair
started from and goes to the pair's end with both data predictions. The state keeps those latents and
the previous data prediction. The last step is always first order (its target sigma is 0).

Legend, code name -> paper symbol (second order from s = t_{i-1} over the intermediate u = t_i to t = t_{i+1}):
    h = lambda_t - lambda_s;  r = (lambda_u - lambda_s) / h
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0 - 0.5 alpha_t (e^{-h} - 1) D1,
    D0 = x0_pred(s), D1 = (x0_pred(u) - x0_pred(s)) / r
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
    singlestep_timesteps,
    vp_plan,
    vp_sigmas,
)


@dataclass
class SinglestepState:
    previous_x0: np.ndarray | None = None  # the data prediction of the previous step of this request
    pair_start: np.ndarray | None = None  # the latents the current order-1/order-2 pair started from


def singlestep_orders(num_inference_steps: int) -> np.ndarray:
    """(n,) int orders of diffusers' get_order_list for solver_order 2 with lower_order_final."""
    if num_inference_steps % 2 == 0:
        orders = [1, 2] * (num_inference_steps // 2 - 1) + [1, 1]
    else:
        orders = [1, 2] * (num_inference_steps // 2) + [1]
    orders[-1] = 1  # final sigma 0
    return np.array(orders, np.int64)


@dataclass(frozen=True)
class SinglestepSteps(VPLevels):
    """Per-step (n,) float32 scalars of DPM-Solver++ 2S's first- and second-order updates, and each
    step's order (int64)."""

    ratio1: np.ndarray
    phi1: np.ndarray
    ratio2: np.ndarray
    phi2: np.ndarray
    inverse_r: np.ndarray
    orders: np.ndarray


def singlestep_coefficients(sigmas: np.ndarray, orders: np.ndarray) -> SinglestepSteps:
    """float32 per-step scalars; `sigmas` (n + 1,) end in 0. First order covers [sigma_i, sigma_{i+1}],
    second order [sigma_{i-1}, sigma_{i+1}] with sigma_i as the intermediate point."""
    alpha, sigma_vp = alpha_sigma(sigmas)
    lam = half_log_snr(sigmas)
    with np.errstate(invalid="ignore", divide="ignore"):
        h1 = lam[1:] - lam[:-1]
        ratio1 = sigma_vp[1:].astype(np.float64) / sigma_vp[:-1]
        phi1 = alpha[1:].astype(np.float64) * np.expm1(-h1)
        lam_before = np.concatenate([[np.nan], lam[:-2]])  # lambda_{i-1}, undefined for the first step
        sigma_before = np.concatenate([[np.nan], sigma_vp[:-2].astype(np.float64)])
        h2 = lam[1:] - lam_before
        ratio2 = sigma_vp[1:].astype(np.float64) / sigma_before
        phi2 = alpha[1:].astype(np.float64) * np.expm1(-h2)
        inverse_r = h2 / (lam[:-1] - lam_before)
    scalars = (v.astype(np.float32) for v in (ratio1, phi1, ratio2, phi2, inverse_r))
    return SinglestepSteps(alpha, sigma_vp, *scalars, orders=orders)


class DPMSolverSinglestep(DPMSpace):
    name = "DPM Single"
    reference = "diffusers.DPMSolverSinglestepScheduler (DPM-Solver++ 2S)"

    def plan(
        self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0
    ) -> Plan[SinglestepSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps = singlestep_timesteps(config, num_inference_steps)
        sigmas = vp_sigmas(config, timesteps)
        coefficients = singlestep_coefficients(sigmas, singlestep_orders(num_inference_steps))
        return vp_plan(timesteps, sigmas, coefficients, skip)

    def new_state(self) -> SinglestepState:
        return SinglestepState()

    def step(
        self,
        plan: Plan[SinglestepSteps],
        state: SinglestepState,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        steps = plan.coefficients
        eps = denoise(latents, float(plan.timesteps[index]))
        x0_pred = data_prediction(latents, eps, steps.alpha[index], steps.sigma_vp[index])
        previous_x0, state.previous_x0 = state.previous_x0, x0_pred
        # Without a previous prediction (the first step left by strength < 1) a pair's second half falls back.
        second_order = steps.orders[index] == 2 and previous_x0 is not None
        if not second_order:
            state.pair_start = latents
            if plan.levels[index + 1] == 0:
                return x0_pred  # lambda = +inf: the data prediction itself
            return (steps.ratio1[index] * latents - steps.phi1[index] * x0_pred).astype(np.float32)
        phi = steps.phi2[index]
        d1 = steps.inverse_r[index] * (x0_pred - previous_x0)
        update = steps.ratio2[index] * state.pair_start - phi * previous_x0 - (np.float32(0.5) * phi) * d1
        return update.astype(np.float32)
