"""Stage 1: the AutoencoderKL, trained on random crops of rendered scenes (L1 + edges + a small KL)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .checkpoint import load_state, save_state, step_rng, torch_generator
from .config import NATIVE_PX, VaeRecipe, vae_config
from .data import render_examples
from .optim import lr_at, optimiser_step

SAVE_EVERY_S = 120.0


def _gradient_l1(a, b):
    """L1 between the horizontal and vertical finite differences of two (B, 3, H, W) batches."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def train_vae(recipe: VaeRecipe, state_path: Path):
    """Train (or resume) the VAE; returns (model in eval mode, loss history as rows of (step, l1, kl))."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(recipe.seed)
    vae = AutoencoderKL(**vae_config())
    optimiser = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    history: list[tuple[int, float, float]] = []
    start = 0
    state = load_state(state_path)
    if state is not None:
        vae.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        history, start = state["history"], state["step"]
    vae.train()
    last_save = time.monotonic()
    bar = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc="vae", unit="step")
    for step in bar:
        images, _ = render_examples(step_rng(recipe.seed, step), recipe.batch, recipe.crop_px, recipe.crop_px,
                                    native_px=NATIVE_PX)
        x = torch.from_numpy(images)  # (B, 3, crop, crop) float32 in [-1, 1]
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample(generator=torch_generator(recipe.seed, step))).sample
        l1 = (y - x).abs().mean()
        kl = posterior.kl().mean()
        loss = l1 + recipe.gradient_weight * _gradient_l1(y, x) + recipe.kl_weight * kl
        optimiser_step(optimiser, loss, vae.parameters(), lr_at(step, recipe.lr, recipe.warmup, recipe.steps))
        history.append((step, l1.item(), kl.item()))
        bar.set_postfix(l1=f"{l1.item():.4f}")
        if time.monotonic() - last_save > SAVE_EVERY_S or step + 1 == recipe.steps:
            save_state(state_path, {"model": vae.state_dict(), "optimiser": optimiser.state_dict(),
                                    "history": history, "step": step + 1})
            last_save = time.monotonic()
    return vae.eval(), history


def measure_scaling_factor(vae, seed: int, count: int = 256) -> float:
    """1 / std of the posterior means over `count` native-size renders: SD's convention that the UNet
    sees latents of unit variance (SD 1.5's own VAE measured 0.18215 this way)."""
    import torch

    images, _ = render_examples(np.random.default_rng([seed, 10**9]), count, NATIVE_PX, NATIVE_PX)
    with torch.no_grad():
        means = torch.cat([vae.encode(torch.from_numpy(images[i:i + 32])).latent_dist.mean
                           for i in range(0, count, 32)])
    return float(1.0 / means.std())
