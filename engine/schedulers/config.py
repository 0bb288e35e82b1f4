"""The training noise schedule, read from the model folder's scheduler_config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """SD 1.5's values are the defaults; every field is read from the model's own config."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    timestep_spacing: str = "leading"
    prediction_type: str = "epsilon"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseScheduleConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        config = cls(**known)
        if config.beta_schedule not in ("scaled_linear", "linear"):
            raise ModelError(f"beta_schedule {config.beta_schedule!r} is not supported (scaled_linear, linear)")
        if config.prediction_type != "epsilon":
            raise ModelError(
                f"prediction_type {config.prediction_type!r} is not supported: SD 1.5 predicts epsilon"
            )
        if config.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ModelError(f"timestep_spacing {config.timestep_spacing!r} is not supported")
        return config

    @classmethod
    def load(cls, path: Path) -> NoiseScheduleConfig:
        if not path.is_file():
            raise ModelError(f"{path} is missing; re-export the model")
        return cls.from_dict(json.loads(path.read_text()))

    def betas(self) -> np.ndarray:
        """(T,) float32 betas, computed in float32 exactly as diffusers does."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            root = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float32)
            return (root * root).astype(np.float32)
        return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)

    def alphas_cumprod(self) -> np.ndarray:
        """(T,) float32 cumulative products of (1 - beta): alpha-bar_t of the DDPM paper."""
        return np.cumprod(np.float32(1.0) - self.betas(), dtype=np.float32)
