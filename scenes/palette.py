"""Named colours: scenes draw from these so that a caption can name what it shows."""

from __future__ import annotations

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (240, 210, 50),
    "green": (50, 150, 60),
    "teal": (30, 140, 140),
    "blue": (40, 80, 190),
    "purple": (120, 60, 160),
    "pink": (230, 120, 170),
    "brown": (120, 80, 45),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
NAMES = tuple(COLOURS)


def rgb(name: str) -> np.ndarray:
    """(3,) float32 in [0, 1]."""
    return np.array(COLOURS[name], np.float32) / 255.0


def two_names(rng: np.random.Generator) -> tuple[str, str]:
    first, second = rng.choice(len(NAMES), size=2, replace=False)
    return NAMES[int(first)], NAMES[int(second)]
