"""Heun's second-order method (Karras et al. 2022, arXiv:2206.00364, Algorithm 1), as diffusers' HeunDiscreteScheduler.

One step from sigma_i to sigma_{i+1} calls the model twice: an Euler predictor, then the trapezoidal
corrector with the derivative at the predicted point. The last step (sigma_{i+1} = 0) is a plain Euler
step (Algorithm 1, line 8: the derivative at sigma = 0 is undefined). diffusers spreads one such step
over two `step()` calls with duplicated timesteps; here it is one `step` with two `denoise` calls.

Legend, code name -> paper symbol:
    derivative      = d_i = (x_i - D(x_i; sigma_i)) / sigma_i
    predicted       = x_{i+1} of the Euler predictor (line 5)
    derivative_next = d'_i = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1} (line 7)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Denoiser, NoiseSource, Plan
from .euler import Euler, derivative_at
from .sigmas import model_input


class Heun(Euler):
    """Euler's schedule (inherited `plan`) with Heun's corrector in `step`."""

    name = "Heun"
    reference = "diffusers.HeunDiscreteScheduler"
    calls_per_step = 2  # the predictor and the corrector

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
        derivative = derivative_at(latents, eps, sigma)
        dt = np.float32(sigma_next - sigma)
        predicted = latents + derivative * dt  # line 5
        if sigma_next == 0:
            return predicted.astype(np.float32)  # line 8: Euler on the last step
        # The model sees the predicted point at sigma_{i+1}, with the next step's timestep (diffusers' duplicate).
        eps_next = denoise(model_input(predicted, sigma_next), float(plan.timesteps[index + 1]))
        derivative_next = derivative_at(predicted, eps_next, sigma_next)
        return (latents + (derivative + derivative_next) / np.float32(2.0) * dt).astype(np.float32)  # line 8
