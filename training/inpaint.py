"""The inpainting variant of the small model: a 9-channel UNet (noisy latents, latent mask, masked
image latents, diffusers' order) made from the trained 4-channel one and fine-tuned on outpainting
masks, with the trained VAE and text encoder frozen (docs/training.md, "The inpainting model")."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import cast

import numpy as np
from tqdm import tqdm

from outpaint.engine.canvas import latent_mask
from outpaint.engine.cpu_features import has_native_bf16

from .checkpoint import load_state, save_state, step_rng, torch_generator
from .config import NATIVE_PX, InpaintRecipe
from .data import render_examples
from .figures import loss_curve
from .latents import ENCODE_BATCH, tokenize
from .masks import random_mask
from .optim import ema_update, lr_at, optimiser_step
from .unet import SAVE_EVERY_S, min_snr_loss, noised, sd15_alphas_cumprod

# uint8 127, the engine's blank for the masked image (engine/pipeline.condition), in the VAE's range.
BLANK = 127 / 127.5 - 1
SHARED_PARTS = ("scheduler", "text_encoder", "tokenizer", "vae")


def nine_channel_unet(four_channel):
    """A 9-channel copy of a 4-channel UNet: conv_in gains five input channels with zero weights, so
    it starts out computing exactly what the 4-channel UNet computes."""
    import torch
    from diffusers import UNet2DConditionModel

    config = dict(four_channel.config)
    config["in_channels"] = 9
    unet = cast(UNet2DConditionModel, UNet2DConditionModel.from_config(config))  # typed as a union with a tuple
    state = four_channel.state_dict()
    weight = state["conv_in.weight"]  # (C, 4, 3, 3)
    state["conv_in.weight"] = torch.cat([weight, torch.zeros(weight.shape[0], 5, *weight.shape[2:])], dim=1)
    unet.load_state_dict(state)
    return unet


class VaeEncoder:
    """The frozen VAE's encoder compiled by OpenVINO for any batch and size: (B, 3, H, W) float32 in
    [-1, 1] -> (B, 4, H/8, W/8) posterior means x scaling factor. The fine-tune encodes every batch's
    masked images, and on 2 cores torch's fp32 encoder (0.9 s a batch) cost as much as the UNet's
    forward and backward; OpenVINO's fp32 is 1.3x faster and its bf16 (where native) 4.4x, 0.03 off
    in latents of magnitude 4.6 (the rounding the fast path applies at inference)."""

    def __init__(self, vae, precision: str) -> None:
        import openvino as ov
        import torch

        class Encode(torch.nn.Module):
            def __init__(self, vae) -> None:
                super().__init__()
                self.vae = vae

            def forward(self, x):
                return self.vae.encode(x).latent_dist.mean

        example = torch.zeros(1, 3, 64, 64)
        model = ov.convert_model(Encode(vae), example_input=example, input=[ov.PartialShape([-1, 3, -1, -1])])
        self.compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                               "INFERENCE_NUM_THREADS": 2})
        self.scaling_factor = float(vae.config["scaling_factor"])
        self.precision = precision

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(images)[0], np.float32) * np.float32(self.scaling_factor)


def build_pixel_cache(encoder: VaeEncoder, tokenizer_dir: Path, count: int, seed: int, path: Path) -> dict:
    """`count` random training views rendered at the native size: pixels (N, 256, 256, 3) uint8, their
    latents (N, 4, 32, 32) float32 (encoded in fp32), the captions' token ids (N, 77) and the empty
    prompt's. An existing cache of the same count is reused."""
    if path.is_file():
        cached = dict(np.load(path))
        if cached["pixels"].shape[0] == count:
            return cached
    pixels, latents, captions = [], [], []
    for start in tqdm(range(0, count, ENCODE_BATCH), desc="pixel cache", unit="batch"):
        n = min(ENCODE_BATCH, count - start)
        images, batch_captions = render_examples(np.random.default_rng([seed, start]), n, NATIVE_PX, NATIVE_PX)
        latents.append(encoder(images))
        pixels.append(np.rint((images.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8))
        captions += batch_captions
    cache = {"pixels": np.concatenate(pixels), "latents": np.concatenate(latents),
             "token_ids": tokenize(tokenizer_dir, captions), "empty_ids": tokenize(tokenizer_dir, [""])[0]}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **cache)
    tmp.replace(path)
    return cache


def inpaint_batch(cache: dict, encoder: VaeEncoder, recipe: InpaintRecipe, rng: np.random.Generator,
                  height: int, width: int, count: int):
    """Random crops `height` x `width` latents big of cached views, each with a random outpainting
    mask: (latents (B, 4, h, w), extra (B, 5, h, w): the latent mask then the masked image's latents,
    token ids (B, 77) with the empty prompt at the recipe's dropout rate), torch tensors."""
    import torch

    n, _, full_h, full_w = cache["latents"].shape
    index = rng.integers(0, n, count)
    top = rng.integers(0, full_h - height + 1, count)
    left = rng.integers(0, full_w - width + 1, count)
    places = list(zip(index, top, left, strict=True))
    latents = np.stack([cache["latents"][i, :, y:y + height, x:x + width] for i, y, x in places])
    pixels = np.stack([cache["pixels"][i, 8 * y:8 * (y + height), 8 * x:8 * (x + width)]
                       for i, y, x in places])  # (B, H, W, 3) uint8
    masks = np.stack([random_mask(rng, height * 8, width * 8, recipe.full_mask_rate, recipe.band_mask_rate)
                      for _ in range(count)])  # (B, H, W) float32
    blanked = np.where(masks[..., None] >= 0.5, np.uint8(127), pixels)  # as engine/pipeline.condition blanks
    masked_latents = encoder((blanked.astype(np.float32) / np.float32(127.5) - 1).transpose(0, 3, 1, 2))
    mask_latents = np.concatenate([latent_mask(m) for m in masks])  # (B, 1, h, w)
    ids = cache["token_ids"][index].copy()
    ids[rng.random(count) < recipe.prompt_dropout] = cache["empty_ids"]
    extra = np.concatenate([mask_latents, masked_latents], axis=1)
    return torch.from_numpy(latents), torch.from_numpy(extra), torch.from_numpy(ids)


def train_inpainting(recipe: InpaintRecipe, base: Path, state_path: Path):
    """Fine-tune (or resume); returns (EMA 9-channel UNet, history rows of (step, loss))."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(recipe.seed)
    vae = AutoencoderKL.from_pretrained(str(base / "vae"), torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(str(base / "text_encoder"), torch_dtype=torch.float32).eval()
    cache = build_pixel_cache(VaeEncoder(vae, "f32"), base / "tokenizer", recipe.cache_images, recipe.seed,
                              state_path.with_name("inpaint_pixels.npz"))
    encoder = VaeEncoder(vae, "bf16" if has_native_bf16() else "f32")
    unet = nine_channel_unet(UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=torch.float32))
    unet_ema = nine_channel_unet(UNet2DConditionModel.from_pretrained(str(base / "unet"),
                                                                      torch_dtype=torch.float32)).eval()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=1e-2)
    history: list[tuple[int, float]] = []
    start = 0
    state = load_state(state_path)
    if state is not None:
        unet.load_state_dict(state["unet"])
        unet_ema.load_state_dict(state["unet_ema"])
        optimiser.load_state_dict(state["optimiser"])
        history, start = state["history"], state["step"]
    unet.train()
    alphas_cumprod = sd15_alphas_cumprod()
    last_save = time.monotonic()
    bar = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc="inpaint", unit="step")
    for step in bar:
        height, width, count = recipe.shapes[step % len(recipe.shapes)]
        latents, extra, ids = inpaint_batch(cache, encoder, recipe, step_rng(recipe.seed, step), height, width,
                                            count)
        noisy, noise, timesteps, a = noised(latents, alphas_cumprod, torch_generator(recipe.seed, step))
        with torch.no_grad():
            context = text(ids)[0]  # (B, 77, hidden), the frozen encoder's last hidden state
        predicted = unet(torch.cat([noisy, extra], dim=1), timesteps, context).sample
        loss = min_snr_loss(predicted, noise, a, recipe.min_snr_gamma)
        optimiser_step(optimiser, loss, unet.parameters(), lr_at(step, recipe.lr, recipe.warmup, recipe.steps))
        ema_update(unet_ema, unet, recipe.ema_decay, step)
        history.append((step, loss.item()))
        bar.set_postfix(loss=f"{np.mean([h[1] for h in history[-50:]]):.4f}")
        if time.monotonic() - last_save > SAVE_EVERY_S or step + 1 == recipe.steps:
            save_state(state_path, {"unet": unet.state_dict(), "unet_ema": unet_ema.state_dict(),
                                    "optimiser": optimiser.state_dict(), "history": history, "step": step + 1})
            last_save = time.monotonic()
    return unet_ema, history


def save_inpainting_folder(out: Path, base: Path, unet) -> None:
    """A diffusers folder for StableDiffusionInpaintPipeline: the 9-channel UNet in float16 safetensors,
    the base model's VAE, text encoder, tokenizer and scheduler as relative symlinks (the very parts
    it was trained with, stored once)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    unet.to(torch.float16).save_pretrained(str(out / "unet"), safe_serialization=True)
    unet.to(torch.float32)
    for part in SHARED_PARTS:
        link = out / part
        if link.is_symlink() or link.exists():
            continue
        link.symlink_to(os.path.relpath(base.resolve() / part, out.resolve()))
    index = json.loads((base / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def train_inpainting_model(out: Path, base: Path, work: Path, record: Path, recipe: InpaintRecipe) -> dict:
    """Run (or resume) the fine-tune; write the folder to `out` and its record to `record`."""
    import torch

    torch.set_num_threads(recipe.threads)
    for folder in (out, work, record):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    unet, history = train_inpainting(recipe, base, work / "inpaint.pt")
    save_inpainting_folder(out, base, unet)
    rows = np.asarray(history)
    loss_curve(record / "loss_inpaint.png", "Inpainting UNet: min-SNR weighted epsilon MSE", rows[:, 0],
               {"loss": rows[:, 1]})
    np.savetxt(record / "loss_inpaint.csv", rows, delimiter=",", header="step,loss", fmt="%.6g")
    summary = {
        "recipe": asdict(recipe),
        "base": str(base),
        "final_loss_mean_last_200": float(rows[-200:, 1].mean()),
        "first_loss_mean_first_50": float(rows[:50, 1].mean()),
        "unet_bytes": sum(p.stat().st_size for p in (out / "unet").rglob("*") if p.is_file()),
        "seconds_this_process": round(time.monotonic() - started, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": recipe.threads},
    }
    (record / "training_inpaint.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
