"""Resumable stages: a stage's state (weights, optimiser, step, losses) saved atomically every few
minutes, and random numbers drawn from (seed, step) so that a resumed run draws what an
uninterrupted one would."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The data generator of one step: independent of how many steps ran before in this process."""
    return np.random.default_rng([seed, step])


def torch_generator(seed: int, step: int):
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_state(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def load_state(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
