"""The denoising loop (pipeline.md 7) as a generator that yields after every step.

Yielding instead of taking callbacks gives progress bars, cancellation (stop iterating, or
`close()` the generator) and per-step timing for free, and keeps the loop free of I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .schedulers import Denoiser, NoiseSource, Plan, Scheduler


@dataclass(frozen=True)
class StepEvent:
    index: int  # 0-based step just finished
    total: int
    timestep: float
    seconds: float  # wall time of this step (model calls + scheduler arithmetic)
    # Returns the (1, 4, h, w) float32 latents after the step and the blend. A device loop's reader
    # copies them to the host only when called, and only until the loop moves on (device_loop.py).
    read_latents: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @property
    def latents(self) -> np.ndarray:  # (1, 4, h, w) float32
        return self.read_latents()


def held(latents: np.ndarray) -> Callable[[], np.ndarray]:
    """The reader of latents that are already host arrays."""
    return lambda: latents


@dataclass(frozen=True)
class KnownRegion:
    """What masked blending puts back after every step (4-channel UNet only: the 9-channel one
    inpaints by itself): the canvas's clean latents re-noised with the request's noise to the
    scheduler's next level, weighted by 1 - mask."""

    init_latents: np.ndarray  # (1, 4, h, w) float32, VAE mean x scaling factor
    noise: np.ndarray  # (1, 4, h, w) float32, the request's noise
    mask: np.ndarray  # (1, 1, h, w) float32 soft latent mask, 1 = regenerate


def blend(latents: np.ndarray, known: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked latent blending: (1 - m) known + m latents. mask (1, 1, h, w) soft, 1 = regenerate."""
    return ((np.float32(1.0) - mask) * known + mask * latents).astype(np.float32)


def denoise_loop(
    *,
    scheduler: Scheduler,
    plan: Plan,
    latents: np.ndarray,  # (1, 4, h, w) float32 start latents
    denoise: Denoiser,
    rng: NoiseSource,  # the request's generator, for ancestral schedulers
    known: KnownRegion | None,  # None: no blending
) -> Iterator[StepEvent]:
    """Run every step of `plan`; after each, put the known region back at the next noise level."""
    state = scheduler.new_state()
    for index in range(plan.num_steps):
        started = time.perf_counter()
        latents = scheduler.step(plan, state, index, latents, denoise, rng)
        if known is not None:
            renoised = scheduler.noised(plan, index + 1, known.init_latents, known.noise)
            latents = blend(latents, renoised, known.mask)
        yield StepEvent(
            index=index,
            total=plan.num_steps,
            timestep=float(plan.timesteps[index]),
            seconds=time.perf_counter() - started,
            read_latents=held(latents),
        )
