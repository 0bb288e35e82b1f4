"""Classifier-free guidance: how one model evaluation becomes one UNet call, written once.

The host loop (`guided_denoiser`), the device loop (`engine/device_loop.py`, which uploads the
first batch and lets the step kernel build the next ones) and the step kernel's numpy reference
all build the UNet's batch and combine its output with these functions:

    sample     = [x ++ extra, x ++ extra]       (2, C, h, w): C = 4, or 9 with the inpainting channels
    embeddings = [uncond, cond]                 (2, 77, D)
    eps        = eps_u + g (eps_c - eps_u)

At guidance exactly 1 the formula reduces to eps_c, so the uncond half is not run at all (batch 1,
docs/decisions.md); so are the timesteps of an unguided tail (FastPathOptions.unguided_tail_steps).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np

from outpaint.core.graphs import ENCODER_HIDDEN_STATES, OUT_SAMPLE, SAMPLE, TIMESTEP

from .schedulers import Denoiser

# A UNet graph as the loop calls it: feeds by tensor name -> outputs by tensor name.
UNetFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def is_guided(guidance_scale: float) -> bool:
    return guidance_scale != 1.0


def guide(eps_uncond: np.ndarray, eps_cond: np.ndarray, guidance_scale: float) -> np.ndarray:
    """eps_u + g (eps_c - eps_u). Shapes (B, 4, h, w) float32."""
    return (eps_uncond + np.float32(guidance_scale) * (eps_cond - eps_uncond)).astype(np.float32)


def unet_sample(latents: np.ndarray, extra_channels: np.ndarray | None, guided: bool) -> np.ndarray:
    """(1, 4, h, w) latents -> the UNet's (N, C, h, w) float32 `sample`: N = 2 guided, else 1."""
    single = latents if extra_channels is None else np.concatenate([latents, extra_channels], axis=1)
    batch = np.concatenate([single, single], axis=0) if guided else single
    return np.ascontiguousarray(batch, dtype=np.float32)


def unet_embeddings(text_embeddings: np.ndarray, guided: bool) -> np.ndarray:
    """(2, 77, D) [uncond, cond] -> the UNet's (N, 77, D) float32 `encoder_hidden_states`."""
    return np.ascontiguousarray(text_embeddings if guided else text_embeddings[1:], dtype=np.float32)


def combine(eps: np.ndarray, guidance_scale: float) -> np.ndarray:
    """The UNet's (N, 4, h, w) output -> the guided (1, 4, h, w) noise prediction."""
    return guide(eps[:1], eps[1:], guidance_scale) if eps.shape[0] == 2 else eps


def guided_denoiser(
    unet: UNetFn,
    text_embeddings: np.ndarray,  # (2, 77, D) float32: [uncond, cond]
    guidance_scale: float,
    extra_channels: np.ndarray | None = None,  # (1, 5, h, w): mask + masked-image latents, 9-channel UNet only
    unguided_timesteps: Collection[float] = (),  # timesteps that run the prompt half alone (eps = eps_c)
) -> Denoiser:
    """eps(x, t) for a scheduler: one UNet call per model evaluation, guided as above."""
    guided = is_guided(guidance_scale)
    embeddings = {True: unet_embeddings(text_embeddings, True), False: unet_embeddings(text_embeddings, False)}

    def denoise(model_input: np.ndarray, timestep: float) -> np.ndarray:
        guided_now = guided and timestep not in unguided_timesteps
        eps = unet({
            SAMPLE: unet_sample(model_input, extra_channels, guided_now),
            TIMESTEP: np.array([timestep], dtype=np.float32),
            ENCODER_HIDDEN_STATES: embeddings[guided_now],
        })[OUT_SAMPLE]
        return combine(eps, guidance_scale)

    return denoise
