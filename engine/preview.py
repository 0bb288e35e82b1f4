"""A cheap look at the latents while they denoise: a linear projection of SD 1.5's four latent
channels to RGB, one pixel per latent cell (no VAE decode).

The factors are the least-squares fit of the VAE's output colours on its latents that ComfyUI and
A1111 use for their live previews ("latent_rgb_factors" of SD 1.5). During denoising the latents are
the noisy x_t, so the early previews are mostly noise and the picture settles as the steps run; the
colours are approximate, the layout is right. A 512x512 canvas gives a 64x64 preview of a few KB.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Rows: latent channels 0..3; columns: R, G, B (applied to the scaled latents the UNet denoises).
SD15_LATENT_RGB = np.array([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
], dtype=np.float32)


def latent_rgb(latents: np.ndarray) -> np.ndarray:
    """(1, 4, h, w) or (4, h, w) latents -> (h, w, 3) uint8 RGB."""
    grid = latents[0] if latents.ndim == 4 else latents
    rgb = np.einsum("chw,cr->hwr", grid[:4].astype(np.float32), SD15_LATENT_RGB)
    return np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)


def preview_jpeg(latents: np.ndarray, quality: int = 80) -> tuple[bytes, int, int]:
    """The projection as JPEG bytes, with its width and height."""
    rgb = latent_rgb(latents)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), rgb.shape[1], rgb.shape[0]
