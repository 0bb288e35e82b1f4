"""Outpainting-shaped masks for the inpainting UNet: the masks the engine itself builds for a source
placed on a larger canvas (engine/canvas.make_canvas), for its coherence band (engine/coherence.py),
and the whole canvas (text-to-image), drawn at random."""

from __future__ import annotations

import numpy as np

from outpaint.engine.canvas import distance_to_unknown
from outpaint.engine.coherence import coherence_masks

# mask_expand values and how often: the API's default 8 px most of the time.
EXPANDS = (0, 4, 8, 8, 8, 16)
BAND_WIDTHS = (16, 32, 32, 64)


def known_rectangle(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width) bool: where a source lands on an outpainting canvas. One of: an extension to one
    side (the source spans the other axis), to two adjacent sides (a corner), or to every side (the
    source inside, as zoom-out places it), each covering 25-85 % of the extended axis."""
    known = np.zeros((height, width), bool)
    kind = rng.integers(0, 3)

    def span(size: int) -> int:
        return int(np.clip(round(size * rng.uniform(0.25, 0.85)), 8, size - 8))

    if kind == 0:  # one side: the source keeps the full other axis
        if rng.random() < 0.5:
            w = span(width)
            x0 = 0 if rng.random() < 0.5 else width - w
            known[:, x0:x0 + w] = True
        else:
            h = span(height)
            y0 = 0 if rng.random() < 0.5 else height - h
            known[y0:y0 + h, :] = True
    elif kind == 1:  # a corner
        h, w = span(height), span(width)
        y0 = 0 if rng.random() < 0.5 else height - h
        x0 = 0 if rng.random() < 0.5 else width - w
        known[y0:y0 + h, x0:x0 + w] = True
    else:  # inside, new area on every side
        h, w = span(height), span(width)
        y0 = int(rng.integers(1, height - h)) if height - h > 1 else 0
        x0 = int(rng.integers(1, width - w)) if width - w > 1 else 0
        known[y0:y0 + h, x0:x0 + w] = True
    return known


def random_mask(rng: np.random.Generator, height: int, width: int, full_rate: float, band_rate: float) -> np.ndarray:
    """(height, width) float32 regenerate mask in {0, 1} as the engine would build it: the unknown area
    dilated by a mask_expand into the source; or a coherence band of it; or everything."""
    draw = rng.random()
    if draw < full_rate:
        return np.ones((height, width), np.float32)
    known = known_rectangle(rng, height, width)
    mask = (distance_to_unknown(known) <= EXPANDS[rng.integers(0, len(EXPANDS))]).astype(np.float32)
    if draw < full_rate + band_rate:
        regenerate, _ = coherence_masks(known, mask, BAND_WIDTHS[rng.integers(0, len(BAND_WIDTHS))])
        return regenerate
    return mask
