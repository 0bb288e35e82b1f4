"""Linear multistep (k-diffusion `sample_lms`, order 4), as diffusers' LMSDiscreteScheduler.

x_{i+1} = x_i + sum_j c_{i,j} d_{i-j}: the probability-flow ODE integrated over [sigma_i, sigma_{i+1}]
with the Lagrange polynomial through the last `order` derivatives. The coefficients depend only on the
schedule, so the plan holds them (exact polynomial integrals; diffusers integrates the same polynomials
numerically with scipy.integrate.quad). The per-request state is the list of past derivatives.

Deliberate difference from diffusers: with strength < 1, diffusers picks the order from the absolute step
index (min(step_index + 1, 4)) although no derivative of the skipped steps exists, and then pairs a
fourth-order coefficient with the single derivative it has; we count the steps this request has taken
(k-diffusion's behaviour), so the first remaining step is an Euler step, the next second order, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Denoiser, NoiseSource, Plan, steps_to_skip
from .config import NoiseScheduleConfig
from .euler import derivative_at
from .sigmas import SigmaSpace, model_input, sigma_plan, sigma_schedule

LMS_ORDER = 4


@dataclass
class LMSState:
    derivatives: list[np.ndarray] = field(default_factory=list)  # newest last, at most LMS_ORDER


def lms_coefficient(sigmas: np.ndarray, i: int, order: int, j: int) -> float:
    """integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node sigma_{i-j}
    among the nodes sigma_i, ..., sigma_{i-order+1}."""
    nodes = [float(sigmas[i - k]) for k in range(order)]
    basis = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            basis = basis * np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
    antiderivative = basis.integ()
    return float(antiderivative(float(sigmas[i + 1])) - antiderivative(float(sigmas[i])))


def lms_coefficients(sigmas: np.ndarray) -> np.ndarray:
    """(n, LMS_ORDER) float32; row i holds the coefficients for the i-th step *of the request*, whose
    order is min(i + 1, LMS_ORDER). `sigmas` (n + 1,) are the remaining steps' levels."""
    steps = len(sigmas) - 1
    table = np.zeros((steps, LMS_ORDER), np.float32)
    for i in range(steps):
        order = min(i + 1, LMS_ORDER)
        for j in range(order):
            table[i, j] = lms_coefficient(sigmas, i, order, j)
    return table


@dataclass(frozen=True)
class LMSSteps:
    table: np.ndarray  # (n, LMS_ORDER) float32 of lms_coefficients, over the request's own steps


class LMS(SigmaSpace):
    name = "LMS"
    reference = "diffusers.LMSDiscreteScheduler"

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan[LMSSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        timesteps, sigmas = sigma_schedule(config, num_inference_steps, karras=False, round_karras_timesteps=False)
        plan = sigma_plan(config, timesteps, sigmas, skip, None)
        # The coefficients depend on how many steps this request has taken, so on the remaining levels only.
        return Plan(plan.timesteps, plan.levels, LMSSteps(lms_coefficients(plan.levels)), plan.init_noise_sigma)

    def new_state(self) -> LMSState:
        return LMSState()

    def step(
        self,
        plan: Plan[LMSSteps],
        state: LMSState,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        sigma = plan.levels[index]
        eps = denoise(model_input(latents, sigma), float(plan.timesteps[index]))
        state.derivatives.append(derivative_at(latents, eps, sigma))
        del state.derivatives[:-LMS_ORDER]
        coefficients = plan.coefficients.table[index]
        update = sum(c * d for c, d in zip(coefficients, reversed(state.derivatives), strict=False))
        return (latents + update).astype(np.float32)
