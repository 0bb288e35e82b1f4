"""PLMS, the pseudo linear multistep method (Liu et al. 2022, arXiv:2202.09778, PNDM with its
Runge-Kutta warm-up skipped), as diffusers' PNDMScheduler with skip_prk_steps=True (SD 1.5's own setting).

Every update is the "transfer" phi(x_t, eps, t -> t') of the paper's eq. (11) applied to a combination of
past noise predictions: the Adams-Bashforth weights of eq. (12), order 1 to 4 as history accumulates.
The first step has no history: it evaluates the model again at the point a first-order transfer reaches
and uses the mean of both predictions (a Heun-like start, two model calls, as diffusers does).

Deliberate difference from diffusers: with strength < 1, diffusers slices its call list
[t_0, t_1, t_1, t_2, ...] so that the duplicated timestep of the two-call start is lost or misplaced,
and the latents fall one step out of line with the timesteps the model is told. We start the method
afresh on the remaining steps (the two-call start at the first remaining timestep).
Also, diffusers transfers from t to t - T // n and recovers the start of the two-call step as
t_1 + T // n; with "linspace" spacing neither is a timestep of the schedule. We transfer between
consecutive timesteps of the schedule, which is the same thing for "leading" (SD 1.5) and for
"trailing" with n dividing T.

Legend, code name -> paper symbol:
    alpha_t, alpha_prev = alpha-bar_t, alpha-bar_{t - delta}
    ets                 = e_{t}, e_{t+delta}, ... : past noise predictions, newest last
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .alphas import AlphaSpace, AlphaSteps, alpha_plan
from .base import Denoiser, NoiseSource, Plan, spaced_timesteps, steps_to_skip
from .config import NoiseScheduleConfig


@dataclass
class PNDMState:
    ets: list[np.ndarray] = field(default_factory=list)  # the last noise predictions, newest last, at most 4


def transfer(latents: np.ndarray, eps: np.ndarray, alpha_t: np.float32, alpha_prev: np.float32) -> np.ndarray:
    """phi of eq. (11): x_{t-delta} = sqrt(a'/a) x_t - (a' - a) eps / (a sqrt(1 - a') + sqrt(a (1 - a) a'))."""
    one = np.float32(1.0)
    sample_coeff = np.sqrt(alpha_prev / alpha_t)
    denominator = alpha_t * np.sqrt(one - alpha_prev) + np.sqrt(alpha_t * (one - alpha_t) * alpha_prev)
    return (sample_coeff * latents - (alpha_prev - alpha_t) * eps / denominator).astype(np.float32)


def linear_multistep_eps(ets: list[np.ndarray]) -> np.ndarray:
    """eq. (12) with as many past predictions as there are (Adams-Bashforth orders 1 to 4)."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / np.float32(2)
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / np.float32(12)
    return np.float32(1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


class PNDM(AlphaSpace):
    name = "PNDM"
    reference = "diffusers.PNDMScheduler (skip_prk_steps=True)"

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan[AlphaSteps]:
        skip = steps_to_skip(config, num_inference_steps, strength)
        alphas_cumprod = config.alphas_cumprod()
        final_alpha = np.float32(1.0) if config.set_alpha_to_one else alphas_cumprod[0]
        timesteps = spaced_timesteps(config, num_inference_steps)
        alpha_t = alphas_cumprod[timesteps]
        # Each transfer lands on the next timestep of the schedule (see the module docstring on "linspace").
        alpha_prev = np.concatenate([alpha_t[1:], [final_alpha]]).astype(np.float32)
        return alpha_plan(timesteps, alpha_t, skip, AlphaSteps(alpha_t.astype(np.float32), alpha_prev))

    def new_state(self) -> PNDMState:
        return PNDMState()

    def step(
        self,
        plan: Plan[AlphaSteps],
        state: PNDMState,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        alpha_t, alpha_prev = plan.coefficients.alpha_t[index], plan.coefficients.alpha_prev[index]
        eps = denoise(latents, float(plan.timesteps[index]))
        first = not state.ets
        state.ets.append(eps)
        del state.ets[:-4]
        if not first or index + 1 >= plan.num_steps:
            return transfer(latents, linear_multistep_eps(state.ets), alpha_t, alpha_prev)
        # The start: predict with eps, evaluate the model there, transfer again with the mean prediction.
        predicted = transfer(latents, eps, alpha_t, alpha_prev)
        eps_predicted = denoise(predicted, float(plan.timesteps[index + 1]))
        return transfer(latents, (eps_predicted + eps) / np.float32(2), alpha_t, alpha_prev)
