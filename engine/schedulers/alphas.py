"""The variance-preserving (alpha-bar) view shared by DDIM, PNDM and DDPM.

Their latents are x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (DDPM eq. 4); the UNet takes
them as they are, at integer timesteps, and pure noise starts them (init_noise_sigma = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import C, Plan, cut


def alpha_noised(alpha: np.float32, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """q(x_t | x_0) of DDPM eq. (4): sqrt(alpha-bar) x_0 + sqrt(1 - alpha-bar) eps, float32."""
    return (np.sqrt(alpha) * clean + np.sqrt(np.float32(1.0) - alpha) * noise).astype(np.float32)


@dataclass(frozen=True)
class AlphaSteps:
    """DDIM's and PNDM's per-step alpha-bars."""

    alpha_t: np.ndarray  # (n,) float32, alpha-bar at the step's timestep
    alpha_prev: np.ndarray  # (n,) float32, alpha-bar at the timestep the step moves to


class AlphaSpace:
    """start/noised/new_state of schedulers whose levels are alpha-bar (the last level, 1, is clean)."""

    calls_per_step = 1

    def start(self, plan: Plan[Any], init_latents: np.ndarray, noise: np.ndarray, pure_noise: bool) -> np.ndarray:
        if pure_noise:
            return noise.astype(np.float32, copy=True)  # init_noise_sigma is 1
        return self.noised(plan, 0, init_latents, noise)

    def noised(self, plan: Plan[Any], level: int, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        if level >= plan.num_steps:
            return clean
        return alpha_noised(plan.levels[level], clean, noise)

    def new_state(self) -> Any:
        return None


def alpha_plan(timesteps: np.ndarray, alpha_t: np.ndarray, skip: int, coefficients: C) -> Plan[C]:
    """A plan over the steps left after `skip`; the per-step `coefficients` are cut alike."""
    alpha_t = alpha_t[skip:].astype(np.float32)
    return Plan(
        timesteps=timesteps[skip:].astype(np.float32),
        levels=np.concatenate([alpha_t, [np.float32(1.0)]]).astype(np.float32),
        coefficients=cut(coefficients, skip),
    )
