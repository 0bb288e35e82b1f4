"""The small model's architecture and the training recipe: every number the training run depends on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from outpaint.export.clip_vocab import VOCAB_SIZE

# The largest images the UNet trains at (its native size; it also trains on crops down to half of
# it), and the latent grid of that size. 256 px is the API's smallest canvas.
NATIVE_PX = 256
NATIVE_LATENT = NATIVE_PX // 8


def text_encoder_config() -> dict[str, Any]:
    """CLIPTextModel over the real 49408-token vocabulary; narrow and shallow."""
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 64,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def unet_config() -> dict[str, Any]:
    """UNet2DConditionModel with SD 1.5's topology: four resolutions, cross-attention in the first three."""
    return {
        "sample_size": NATIVE_LATENT,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": (32, 64, 128, 128),
        "layers_per_block": 1,
        "cross_attention_dim": text_encoder_config()["hidden_size"],
        "attention_head_dim": 8,
        # 4 channels a group at the first level (SD 1.5: 10). With one channel a group, GroupNorm is an
        # instance norm that erases each channel's image-wide level, so flat colours cannot pass.
        "norm_num_groups": 8,
    }


def vae_config(scaling_factor: float = 0.18215) -> dict[str, Any]:
    """AutoencoderKL with SD 1.5's factor-8 downsampling and 4 latent channels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 64, 64, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        # 8 channels a group at the first level; with 32 groups (one channel each) the reconstruction
        # stalled at the dataset's mean colour (L1 0.40 after 100 steps, against 0.34 with 4 groups).
        "norm_num_groups": 4,
        "sample_size": NATIVE_PX,
        "scaling_factor": scaling_factor,
    }


@dataclass(frozen=True)
class VaeRecipe:
    steps: int = 2500
    batch: int = 16
    crop_px: int = 64  # the VAE is convolutional: small crops train it for any size
    lr: float = 2e-3
    warmup: int = 100
    kl_weight: float = 1e-6
    gradient_weight: float = 0.5  # L1 on image gradients: keeps ridges and stripes sharp
    seed: int = 1


@dataclass(frozen=True)
class UnetRecipe:
    steps: int = 3000
    # The cosine runs over this many steps and training stops at `steps`: the session's time budget
    # cut the run short after it had started with 4000 (the learning rate ends at 25 % of its peak).
    schedule_steps: int = 4000
    # (latent height, latent width, batch): the same number of latent pixels each, so every step
    # costs about the same: 128 px crops teach the scenes' detail, the native 256 px and the
    # oblong shapes teach the canvases outpainting asks for.
    shapes: tuple[tuple[int, int, int], ...] = ((16, 16, 32), (32, 32, 8), (16, 32, 16), (32, 16, 16), (24, 24, 14))
    lr: float = 5e-4
    warmup: int = 200
    prompt_dropout: float = 0.1  # the empty prompt this often, so classifier-free guidance works
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023): faster convergence
    ema_decay: float = 0.999
    cache_images: int = 4000
    cache_px: int = NATIVE_PX  # rendered size of the latent cache; the shapes above are crops of it
    seed: int = 2


@dataclass(frozen=True)
class Recipe:
    vae: VaeRecipe = field(default_factory=VaeRecipe)
    unet: UnetRecipe = field(default_factory=UnetRecipe)
    threads: int = 2  # results are bitwise reproducible for a fixed thread count

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InpaintRecipe:
    """The 9-channel inpainting UNet (docs/training.md, "The inpainting model"): the trained 4-channel
    UNet with five zero-initialised input channels (the latent mask and the masked image's latents),
    fine-tuned on outpainting-shaped masks, as SD 1.5's inpainting model was made from SD 1.2's. The
    VAE and the text encoder are the trained model's, frozen."""

    steps: int = 1800
    shapes: tuple[tuple[int, int, int], ...] = UnetRecipe().shapes
    lr: float = 3e-4
    warmup: int = 100
    prompt_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.998
    # Of every batch: this share has the whole image masked (text-to-image: the large-canvas
    # strategy's native composition and the far side of big extensions), this share a coherence-pass
    # band (engine/coherence.py), the rest an outpainting canvas (the source on one, two or every side).
    full_mask_rate: float = 0.1
    band_mask_rate: float = 0.15
    cache_images: int = 2000  # native-size views, pixels and latents; the steps crop them
    threads: int = 2
    seed: int = 3
