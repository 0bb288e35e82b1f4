"""Stage 3: the UNet and the text encoder together, on cached latents, with SD 1.5's noise schedule,
epsilon prediction and the empty prompt dropped in at a fixed rate (classifier-free guidance)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from outpaint.export.random_models import SD15_SCHEDULER_CONFIG

from .checkpoint import load_state, save_state, step_rng, torch_generator
from .config import UnetRecipe, text_encoder_config, unet_config
from .optim import ema_update, lr_at, optimiser_step

SAVE_EVERY_S = 120.0


def sd15_alphas_cumprod():
    """(1000,) float32 cumulative alphas of SD 1.5's scaled-linear schedule."""
    import torch

    c = SD15_SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, c["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def noised(latents, alphas_cumprod, generator):
    """SD 1.5's forward process at random timesteps: (noisy latents, the noise, the timesteps (B,), the
    cumulative alphas (B, 1, 1, 1)), drawn from `generator` (noise first, then timesteps)."""
    import torch

    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, len(alphas_cumprod), (latents.shape[0],), generator=generator)
    a = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise, noise, timesteps, a


def min_snr_loss(predicted, noise, a, gamma: float):
    """Epsilon MSE per image weighted by min(SNR, gamma) / SNR (Hang et al. 2023), averaged."""
    import torch

    snr = a.view(-1) / (1 - a.view(-1))
    weight = torch.clamp(snr, max=gamma) / snr
    return (weight * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def batch_of_crops(cache: dict[str, np.ndarray], rng: np.random.Generator, height: int, width: int, count: int,
                   prompt_dropout: float) -> tuple[np.ndarray, np.ndarray]:
    """(count, 4, height, width) latent crops at random places of random cached images, and their
    (count, 77) token ids with the empty prompt in place of a caption at rate `prompt_dropout`."""
    latents = cache["latents"]
    n, _, full_h, full_w = latents.shape
    index = rng.integers(0, n, count)
    top = rng.integers(0, full_h - height + 1, count)
    left = rng.integers(0, full_w - width + 1, count)
    crops = np.stack([latents[i, :, y:y + height, x:x + width] for i, y, x in zip(index, top, left, strict=True)])
    ids = cache["token_ids"][index].copy()
    ids[rng.random(count) < prompt_dropout] = cache["empty_ids"]
    return crops, ids


def train_unet(recipe: UnetRecipe, cache: dict[str, np.ndarray], state_path: Path):
    """Train (or resume); returns (EMA UNet, EMA text encoder, history rows of (step, loss))."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(recipe.seed)
    unet = UNet2DConditionModel(**unet_config())
    text = CLIPTextModel(CLIPTextConfig(**text_encoder_config()))
    unet_ema, text_ema = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    params = list(unet.parameters()) + list(text.parameters())
    optimiser = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=1e-2)
    history: list[tuple[int, float]] = []
    start = 0
    state = load_state(state_path)
    if state is not None:
        for module, key in ((unet, "unet"), (text, "text"), (unet_ema, "unet_ema"), (text_ema, "text_ema")):
            module.load_state_dict(state[key])
        optimiser.load_state_dict(state["optimiser"])
        history, start = state["history"], state["step"]
    unet.train()
    text.train()
    alphas_cumprod = sd15_alphas_cumprod()
    last_save = time.monotonic()
    bar = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc="unet", unit="step")
    for step in bar:
        height, width, count = recipe.shapes[step % len(recipe.shapes)]
        crops, ids = batch_of_crops(cache, step_rng(recipe.seed, step), height, width, count, recipe.prompt_dropout)
        noisy, noise, timesteps, a = noised(torch.from_numpy(crops), alphas_cumprod,
                                            torch_generator(recipe.seed, step))
        context = text(torch.from_numpy(ids))[0]  # (B, 77, hidden) last hidden state, as SD 1.5 uses it
        predicted = unet(noisy, timesteps, context).sample
        loss = min_snr_loss(predicted, noise, a, recipe.min_snr_gamma)
        optimiser_step(optimiser, loss, params, lr_at(step, recipe.lr, recipe.warmup, recipe.schedule_steps))
        ema_update(unet_ema, unet, recipe.ema_decay, step)
        ema_update(text_ema, text, recipe.ema_decay, step)
        history.append((step, loss.item()))
        bar.set_postfix(loss=f"{np.mean([h[1] for h in history[-50:]]):.4f}")
        if time.monotonic() - last_save > SAVE_EVERY_S or step + 1 == recipe.steps:
            save_state(state_path, {"unet": unet.state_dict(), "text": text.state_dict(),
                                    "unet_ema": unet_ema.state_dict(), "text_ema": text_ema.state_dict(),
                                    "optimiser": optimiser.state_dict(), "history": history, "step": step + 1})
            last_save = time.monotonic()
    return unet_ema, text_ema, history
