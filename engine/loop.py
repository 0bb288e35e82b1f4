"""The denoising loop (pipeline.md 7) as a generator that yields after every step.

Yielding instead of taking callbacks gives progress bars, cancellation (stop iterating, or
`close()` the generator) and per-step timing for free, and keeps the loop free of I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from .schedulers import Denoiser, Plan, Sampler

UNetFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class StepEvent:
    index: int  # 0-based step just finished
    total: int
    timestep: float
    latents: np.ndarray  # (1, 4, h, w) float32 after the step and the blend
    seconds: float  # wall time of this step (model calls + sampler arithmetic)


def guide(eps_uncond: np.ndarray, eps_cond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """Classifier-free guidance: eps_u + g (eps_c - eps_u). Shapes (B, 4, h, w) float32."""
    return (eps_uncond + np.float32(guidance_scale) * (eps_cond - eps_uncond)).astype(np.float32)


def blend(latents: np.ndarray, known: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked latent blending: (1 - m) known + m latents. mask (1, 1, h, w) soft, 1 = regenerate."""
    return ((np.float32(1.0) - mask) * known + mask * latents).astype(np.float32)


def guided_denoiser(
    unet: UNetFn,
    text_embeddings: np.ndarray,  # (2, 77, D) float32: [uncond, cond]
    guidance_scale: float,
    extra_channels: np.ndarray | None = None,  # (1, 5, h, w): mask + masked-image latents, 9-channel UNet only
) -> Denoiser:
    """eps(x, t) for the sampler: one UNet call on the batch [x, x] with [uncond, cond].

    At guidance 1 the formula reduces to eps_c, so the uncond half is not computed at all.
    """
    only_cond = guidance_scale == 1.0
    embeddings = np.ascontiguousarray(text_embeddings[1:] if only_cond else text_embeddings)

    def denoise(model_input: np.ndarray, timestep: float) -> np.ndarray:
        sample = model_input if extra_channels is None else np.concatenate([model_input, extra_channels], axis=1)
        batch = sample if only_cond else np.concatenate([sample, sample], axis=0)  # (2B, C, h, w)
        eps = unet({
            "sample": batch,
            "timestep": np.array([timestep], dtype=np.float32),
            "encoder_hidden_states": embeddings,
        })["out_sample"]
        if only_cond:
            return eps
        return guide(eps[:1], eps[1:], guidance_scale)

    return denoise


def denoise_loop(
    *,
    sampler: Sampler,
    plan: Plan,
    latents: np.ndarray,  # (1, 4, h, w) float32 start latents
    denoise: Denoiser,
    rng: np.random.Generator,  # the request's generator, for ancestral samplers
    init_latents: np.ndarray | None,  # (1, 4, h, w) clean latents of the canvas; None: no blending
    noise: np.ndarray,  # (1, 4, h, w) the request's noise, re-applied to init_latents for the blend
    mask: np.ndarray,  # (1, 1, h, w) soft latent mask, 1 = regenerate
) -> Iterator[StepEvent]:
    """Run every step of `plan`; after each, put the known region back at the next noise level."""
    state = sampler.new_state()
    for index in range(plan.num_steps):
        started = time.perf_counter()
        latents = sampler.step(plan, state, index, latents, denoise, rng)
        if init_latents is not None:
            known = sampler.noised(plan, index + 1, init_latents, noise)
            latents = blend(latents, known, mask)
        yield StepEvent(
            index=index,
            total=plan.num_steps,
            timestep=float(plan.timesteps[index]),
            latents=latents,
            seconds=time.perf_counter() - started,
        )
