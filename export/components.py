"""The four SD 1.5 networks plus tokenizer and scheduler config, as loaded from any source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Components:
    """PyTorch modules of one SD 1.5 model, ready to export.

    `tokenizer_dir` holds the tokenizer files as the source ships them; `scheduler_config` is the
    source's scheduler_config.json as a dict; `fingerprint` identifies the weights (see sources.py).
    """

    text_encoder: Any  # transformers.CLIPTextModel
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    tokenizer_dir: Path
    scheduler_config: dict[str, Any]
    fingerprint: str
    description: str
