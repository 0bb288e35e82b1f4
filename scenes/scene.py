"""Scenes by seed, their captions, rendering, and the split that keeps held-out seeds out of training."""

from __future__ import annotations

import numpy as np

from .landscape import Landscape
from .patterns import Pattern
from .view import View

Scene = Landscape | Pattern
LANDSCAPE_SHARE = 0.7  # of seeds; the rest are periodic patterns
# Seeds from HELD_OUT_START on are never trained on: the quality benchmark and its CI test use them.
HELD_OUT_START = 1_000_000


def scene_from_seed(seed: int) -> Scene:
    """The scene of `seed`: every parameter drawn from numpy's PCG64 generator of that seed."""
    if seed < 0:
        raise ValueError(f"a scene seed is >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    if rng.random() < LANDSCAPE_SHARE:
        return Landscape.from_rng(seed, rng)
    return Pattern.from_rng(seed, rng)


def is_held_out(seed: int) -> bool:
    return seed >= HELD_OUT_START


def training_seeds(count: int, start: int = 0) -> range:
    """`count` seeds for training; refuses to reach into the held-out ones."""
    if start < 0 or start + count > HELD_OUT_START:
        raise ValueError(f"training seeds are 0 to {HELD_OUT_START - 1}; {start} + {count} reaches past them")
    return range(start, start + count)


def held_out_seeds(count: int) -> range:
    return range(HELD_OUT_START, HELD_OUT_START + count)


def render(scene: Scene, width: int, height: int, view: View | None = None) -> np.ndarray:
    """(height, width, 3) uint8 of `view` (default: the standard frame at this aspect ratio)."""
    if width < 1 or height < 1:
        raise ValueError(f"a rendering is at least 1 x 1 pixels, got {width} x {height}")
    return scene.render(width, height, view or View.standard(width, height))
