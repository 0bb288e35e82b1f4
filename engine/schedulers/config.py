"""The training noise schedule, read from the model folder's scheduler_config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from outpaint.core.errors import ModelError


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
        """(T,) float32 betas, bit-identical to diffusers' torch.linspace(..., dtype=float32) schedules."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            root = torch_linspace_f32(self.beta_start**0.5, self.beta_end**0.5, n)
            return (root * root).astype(np.float32)
        return torch_linspace_f32(self.beta_start, self.beta_end, n)

    def alphas_cumprod(self) -> np.ndarray:
        """(T,) float32 cumulative products of (1 - beta): alpha-bar_t of the DDPM paper.

        torch.cumprod accumulates float32 in double on the CPU; so do we, to get diffusers' values exactly.
        """
        alphas = np.float32(1.0) - self.betas()
        return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """(steps,) float32 as torch.linspace computes it: a float32 step, fused multiply-add from both ends.

    np.linspace rounds differently in about a third of the entries; the float64 product of a float32
    step and an index below 2**29 is exact, so one rounding to float32 reproduces the fused multiply-add.
    """
    first, last = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([first], np.float32)
    step = np.float32((last - first) / np.float32(steps - 1))
    index = np.arange(steps, dtype=np.float64)
    halfway = steps // 2
    from_start = np.float64(first) + np.float64(step) * index
    from_end = np.float64(last) - np.float64(step) * (steps - 1 - index)
    return np.where(index < halfway, from_start, from_end).astype(np.float32)
