"""SD-1.5-architecture models with seeded random weights: `tiny` for tests and the demo, `full` for benchmarks.

Both keep SD 1.5's topology (four UNet resolutions with cross-attention in the first three, a VAE
with a factor-8 latent, a CLIP text transformer over the real 49408-token vocabulary); `tiny`
shrinks the widths and depths so that a 512x512 outpaint runs in seconds on a CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .clip_vocab import VOCAB_SIZE, write_clip_tokenizer_files
from .components import Components

# SD 1.5's scheduler/scheduler_config.json (runwayml/stable-diffusion-v1-5).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

SIZES = ("tiny", "full")


def _configs(size: str, unet_in_channels: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(text encoder, unet, vae) configurations of SD 1.5 (full) or its shrunken twin (tiny)."""
    full = size == "full"
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 768 if full else 32,
        "intermediate_size": 3072 if full else 64,
        "num_hidden_layers": 12 if full else 2,
        "num_attention_heads": 12 if full else 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768 if full else 32,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    unet = {
        "sample_size": 64 if full else 32,
        "in_channels": unet_in_channels,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": (320, 640, 1280, 1280) if full else (32, 32, 64, 64),
        "layers_per_block": 2 if full else 1,
        "cross_attention_dim": text["hidden_size"],
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512) if full else (32, 32, 64, 64),
        "layers_per_block": 2 if full else 1,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512 if full else 256,
        "scaling_factor": 0.18215,
    }
    return text, unet, vae


def build_random_components(
    size: str, *, seed: int = 0, unet_in_channels: int = 4, workdir: Path | None = None
) -> Components:
    """Build SD-1.5-architecture modules with weights drawn from `seed` (same seed, same weights).

    `unet_in_channels=9` builds the inpainting variant (mask and masked-image latents as input).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    text_cfg, unet_cfg, vae_cfg = _configs(size, unet_in_channels)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()
    unet = UNet2DConditionModel(**unet_cfg).eval()
    vae = AutoencoderKL(**vae_cfg).eval()
    tokenizer_dir = (workdir or Path(tempfile.mkdtemp(prefix="outpaint-tok-"))) / "tokenizer"
    write_clip_tokenizer_files(tokenizer_dir)
    return Components(
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        tokenizer_dir=tokenizer_dir,
        scheduler_config=dict(SD15_SCHEDULER_CONFIG),
        fingerprint=f"random:{size}:seed={seed}:in_channels={unet_in_channels}",
        description=f"SD 1.5 architecture ({size}), random weights, seed {seed}",
    )
