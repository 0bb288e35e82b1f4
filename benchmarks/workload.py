"""The inputs every system is measured on, built identically in every worker process."""

from __future__ import annotations

import numpy as np

from .config import BenchConfig, parse_canvas

PROMPT = "a photo of a street in italy, sunny afternoon"
NEGATIVE_PROMPT = "blurry"
UNET_TIMESTEP = 501.0  # a mid-schedule timestep; the cost does not depend on it
TEXT_TOKENS = 77


def source_rgb(width: int, height: int) -> np.ndarray:
    """(height, width / 2, 3) uint8: a smooth synthetic photo-like source for the left half of the canvas."""
    y, x = np.mgrid[0:height, 0 : width // 2].astype(np.float32)
    r = 128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 96 + 80 * np.cos((x + y) / 47.0)
    b = 160 + 60 * np.sin(y / 19.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def outpaint_request(config: BenchConfig):
    from outpaint.engine.request import OutpaintRequest

    width, height = parse_canvas(config.outpaint_canvas)
    return OutpaintRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=config.steps, img_width=width,
        img_height=height, guidance_scale=config.guidance, seed=config.seed, strength=1.0, mask_expand=8,
    )


def source_image(config: BenchConfig):
    from outpaint.engine.canvas import SourceImage

    width, height = parse_canvas(config.outpaint_canvas)
    rgb = source_rgb(width, height)
    return SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], dtype=bool))


def seeded_noise(seed: int, width: int, height: int) -> np.ndarray:
    """(1, 4, H/8, W/8) float32: the initial noise OutpaintPipeline draws for `seed` (its first draw
    from numpy's generator of that seed), to give diffusers the same start."""
    return np.random.default_rng(seed).standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)


def outpaint_noise(config: BenchConfig) -> np.ndarray:
    """(1, 4, H/8, W/8) float32: the engine's own seeded draw, given to diffusers too."""
    width, height = parse_canvas(config.outpaint_canvas)
    return seeded_noise(config.seed, width, height)


def unet_inputs(canvas: str, hidden: int, in_channels: int = 4) -> dict[str, np.ndarray]:
    """Guidance-doubled UNet inputs (batch 2) at `canvas`, the same in every process."""
    width, height = parse_canvas(canvas)
    rng = np.random.default_rng([width, height])
    return {
        "sample": rng.standard_normal((2, in_channels, height // 8, width // 8), dtype=np.float32),
        "timestep": np.array([UNET_TIMESTEP], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, TEXT_TOKENS, hidden), dtype=np.float32),
    }


def vae_inputs(canvas: str) -> tuple[np.ndarray, np.ndarray]:
    """((1, 3, H, W) image in [-1, 1], (1, 4, H/8, W/8) unscaled latent), the same in every process."""
    width, height = parse_canvas(canvas)
    rng = np.random.default_rng([width, height, 8])
    image = rng.uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    latent = (rng.standard_normal((1, 4, height // 8, width // 8)) / 0.18215).astype(np.float32)
    return image, latent


def psnr_db(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR of two uint8 images (peak 255), over the pixels `where` (H, W) bool, or all of them."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if where is not None:
        diff = diff[where]
    mse = float(diff.mean())
    return 999.0 if mse == 0 else round(float(10 * np.log10(255.0**2 / mse)), 2)  # a float, not np.float64
