"""`outpaint train`: every stage in order, each resumed from its checkpoint, then the diffusers folder
and the record of the run (recipe, scaling factor, losses, held-out figures)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from outpaint.export.clip_vocab import write_clip_tokenizer_files
from outpaint.export.random_models import SD15_SCHEDULER_CONFIG
from outpaint.scenes import View, held_out_seeds, render, scene_from_seed

from .config import NATIVE_PX, Recipe
from .figures import loss_curve, strip
from .latents import build_latent_cache
from .unet import train_unet
from .vae import measure_scaling_factor, train_vae

FIGURE_SEEDS = 6


def save_diffusers_folder(out: Path, text, unet, vae, scaling_factor: float, tokenizer_dir: Path) -> None:
    """The SD 1.5 folder layout (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/),
    weights in float16 safetensors as SD 1.5's fp16 variant ships them (loaders cast them to float32)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)), unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG), safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None, requires_safety_checker=False,  # type: ignore[arg-type]
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(str(out), safe_serialization=True)
    pipe.to(torch.float32)


def vae_heldout_figure(vae, path: Path) -> list[float]:
    """Held-out scenes (standard view, 256x128) and their VAE reconstructions; PSNR of each in dB."""
    import torch

    rows, psnrs = [], []
    for seed in held_out_seeds(FIGURE_SEEDS):
        truth = render(scene_from_seed(seed), 256, 128, View.standard(256, 128))
        x = torch.from_numpy(truth.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
        recon = ((y[0].clamp(-1, 1).numpy().transpose(1, 2, 0) + 1) * 127.5 + 0.5).astype(np.uint8)
        mse = float(np.mean((recon.astype(np.float64) - truth) ** 2))
        psnrs.append(10 * np.log10(255**2 / max(mse, 1e-10)))
        rows.append([truth, recon])
    strip(path, rows, ["held-out scene", "VAE reconstruction"])
    return psnrs


def samples_figure(folder: Path, path: Path, steps: int = 25) -> None:
    """Text-to-image samples of held-out captions from the saved folder, with diffusers' own pipeline."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for seed in held_out_seeds(FIGURE_SEEDS):
        scene = scene_from_seed(seed)
        image = pipe(scene.caption(), height=NATIVE_PX, width=NATIVE_PX, num_inference_steps=steps,
                     generator=torch.Generator().manual_seed(seed), output_type="np").images[0]  # type: ignore[union-attr]
        sample = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        rows.append([render(scene, NATIVE_PX, NATIVE_PX), sample])
    strip(path, rows, ["held-out scene", "sample of its caption"])


def train(out: Path, work: Path, record: Path, recipe: Recipe) -> dict:
    """Run (or resume) every stage; write the model to `out` and the record of the run to `record`."""
    import torch

    torch.set_num_threads(recipe.threads)
    for folder in (out, work, record):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    vae, vae_history = train_vae(recipe.vae, work / "vae.pt")
    vae_done = time.monotonic()
    scaling_factor = measure_scaling_factor(vae, recipe.vae.seed)
    tokenizer_dir = work / "tokenizer"
    write_clip_tokenizer_files(tokenizer_dir)
    cache = build_latent_cache(vae, scaling_factor, tokenizer_dir, recipe.unet.cache_images, recipe.unet.cache_px,
                               recipe.unet.seed, work / "latents.npz")
    cache_done = time.monotonic()
    unet, text, unet_history = train_unet(recipe.unet, cache, work / "unet.pt")
    unet_done = time.monotonic()
    save_diffusers_folder(out, text, unet, vae, scaling_factor, tokenizer_dir)

    vae_rows, unet_rows = np.asarray(vae_history), np.asarray(unet_history)
    loss_curve(record / "loss_vae.png", "VAE: L1 reconstruction (per pixel, [-1, 1] range)", vae_rows[:, 0],
               {"L1": vae_rows[:, 1]})
    loss_curve(record / "loss_unet.png", "UNet: min-SNR weighted epsilon MSE", unet_rows[:, 0],
               {"loss": unet_rows[:, 1]})
    psnrs = vae_heldout_figure(vae, record / "vae_heldout.png")
    samples_figure(out, record / "samples_heldout.png")
    summary = {
        "recipe": recipe.as_dict(),
        "scaling_factor": scaling_factor,
        "vae_final_l1_mean_last_100": float(vae_rows[-100:, 1].mean()),
        "unet_final_loss_mean_last_200": float(unet_rows[-200:, 1].mean()),
        "vae_heldout_psnr_db": [round(p, 2) for p in psnrs],
        "model_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "seconds_this_process": {"vae": round(vae_done - started, 1), "latents": round(cache_done - vae_done, 1),
                                 "unet": round(unet_done - cache_done, 1)},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": recipe.threads},
    }
    (record / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    np.savetxt(record / "loss_vae.csv", vae_rows, delimiter=",", header="step,l1,kl", fmt="%.6g")
    np.savetxt(record / "loss_unet.csv", unet_rows, delimiter=",", header="step,loss", fmt="%.6g")
    return summary


def quick_recipe(vae_steps: int, unet_steps: int, cache_images: int) -> Recipe:
    """A recipe with fewer steps (tests, smoke runs); everything else as the real one."""
    base = Recipe()
    return replace(base, vae=replace(base.vae, steps=vae_steps, warmup=min(base.vae.warmup, vae_steps)),
                   unet=replace(base.unet, steps=unet_steps, schedule_steps=unet_steps,
                                warmup=min(base.unet.warmup, unet_steps),
                                cache_images=cache_images))
