"""What every scheduler provides, so the denoising loop never branches on a scheduler's name.

A scheduler is a module-level object of pure functions over a `Plan` (its schedule for one request,
computed up front) and a per-request `state` (history of multistep methods; None for DDIM). Nothing
is shared between requests, so one loaded pipeline can serve concurrent calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from outpaint.core.errors import InvalidRequest

from .config import NoiseScheduleConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# eps = denoise(model_input, timestep): the guided noise prediction for a model-ready input.
Denoiser = Callable[[np.ndarray, float], np.ndarray]


class NoiseSource(Protocol):
    """Where ancestral schedulers draw fresh noise: the request's numpy Generator (the scheduler
    tests substitute one that draws what torch's generator draws, to match diffusers)."""

    def standard_normal(self, size: tuple[int, ...], dtype: type[np.float32]) -> np.ndarray: ...


C = TypeVar("C", bound="DataclassInstance | None")
UNIT_NOISE = np.float32(1.0)  # the start spread of alpha-space and DPM schedules
C_co = TypeVar("C_co", bound="DataclassInstance | None", covariant=True)


@dataclass(frozen=True)
class Plan(Generic[C_co]):
    """One request's schedule. `timesteps[i]` is the model timestep of step i; `levels` are the
    scheduler's own noise levels, one more than the steps (the last one is clean)."""

    timesteps: np.ndarray  # (n,) float32, model timesteps in running order
    levels: np.ndarray  # (n + 1,) float32, the scheduler's noise coordinate before each step, then after
    # The scheduler's own per-step arrays, typed per scheduler family (e.g. ddim.AlphaSteps); None if none.
    coefficients: C_co
    init_noise_sigma: np.float32 = UNIT_NOISE  # the spread of pure-noise start latents

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


class Scheduler(Protocol):
    name: str  # the API's name ("DDIM")
    reference: str  # the diffusers class it corresponds to
    calls_per_step: int  # UNet calls a step makes (2 for Heun and DPM2's midpoint), for cost estimates

    def plan(self, config: NoiseScheduleConfig, num_inference_steps: int, strength: float = 1.0) -> Plan[Any]: ...

    def start(self, plan: Plan[Any], init_latents: np.ndarray, noise: np.ndarray, pure_noise: bool) -> np.ndarray:
        """Latents before the first step: pure noise at the first level, or the init latents noised to it."""
        ...

    def noised(self, plan: Plan[Any], level: int, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """`clean` latents noised with `noise` to level `level` (level == num_steps returns `clean`)."""
        ...

    def new_state(self) -> Any: ...

    def step(
        self,
        plan: Plan[Any],
        state: Any,
        index: int,
        latents: np.ndarray,
        denoise: Denoiser,
        rng: NoiseSource,
    ) -> np.ndarray:
        """Latents at level index + 1, calling `denoise` as often as the method needs."""
        ...


def cut(coefficients: C, skip: int) -> C:
    """`coefficients` without the first `skip` entries of every array field: the steps strength < 1 skips."""
    if coefficients is None:
        return coefficients
    arrays = {f.name: getattr(coefficients, f.name) for f in dataclasses.fields(coefficients)}
    return dataclasses.replace(coefficients, **{k: v[skip:] for k, v in arrays.items() if isinstance(v, np.ndarray)})


def steps_to_skip(config: NoiseScheduleConfig, num_inference_steps: int, strength: float) -> int:
    """Validate a plan's inputs and return how many leading steps `strength` skips."""
    if num_inference_steps < 1:
        raise InvalidRequest("num_inference_steps", f"must be at least 1, got {num_inference_steps}")
    if num_inference_steps > config.num_train_timesteps:
        raise InvalidRequest(
            "num_inference_steps",
            f"{num_inference_steps} exceeds the {config.num_train_timesteps} training steps",
        )
    skip = skip_for_strength(num_inference_steps, strength)
    if skip >= num_inference_steps:
        raise InvalidRequest(
            "strength", f"strength {strength} leaves no denoising step of {num_inference_steps}; raise either"
        )
    return skip


def skip_for_strength(num_inference_steps: int, strength: float) -> int:
    """How many leading steps `strength` < 1 skips: steps - int(steps * strength) (pipeline.md 6)."""
    init_steps = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_steps, 0)


def spaced_timesteps(config: NoiseScheduleConfig, num_inference_steps: int) -> np.ndarray:
    """The (num_inference_steps,) int64 descending train timesteps of diffusers' spacing options."""
    n_train = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        ratio = n_train // num_inference_steps
        steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.int64)
        return steps + config.steps_offset
    if config.timestep_spacing == "trailing":
        ratio = n_train / num_inference_steps
        return (np.round(np.arange(n_train, 0, -ratio)).astype(np.int64) - 1)[:num_inference_steps]
    return np.linspace(0, n_train - 1, num_inference_steps).round()[::-1].astype(np.int64)
