"""Where outpainting's work actually is: boxes on the latent grid around the area to regenerate.

An outpainting mask is usually one-sided (the source fills part of the canvas), so most of the
VAE decode and part of the UNet work lands on pixels that are thrown away: paste-back returns the
source bit for bit wherever the paste-back alpha is 1, which is everywhere the mask is 0.

Boxes are half-open, in latent cells (one cell = 8 x 8 pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from outpaint.core.geometry import LATENT_FACTOR


@dataclass(frozen=True)
class Box:
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def pixels(self) -> tuple[slice, slice]:
        """The same box on the pixel grid."""
        f = LATENT_FACTOR
        return slice(self.y0 * f, self.y1 * f), slice(self.x0 * f, self.x1 * f)

    def covers(self, height: int, width: int) -> bool:
        return self.y0 == 0 and self.x0 == 0 and self.y1 == height and self.x1 == width


def active_box(active: np.ndarray) -> Box | None:
    """Bounding box of the True cells of a (h, w) bool grid; None when nothing is active."""
    rows = np.flatnonzero(active.any(axis=1))
    cols = np.flatnonzero(active.any(axis=0))
    if rows.size == 0:
        return None
    return Box(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _grow_axis(lo: int, hi: int, margin: int, multiple: int, limit: int) -> tuple[int, int]:
    lo, hi = max(0, lo - margin), min(limit, hi + margin)
    size = -(-(hi - lo) // multiple) * multiple  # round the size up to the multiple
    if size >= limit:
        return 0, limit
    hi = lo + size
    if hi > limit:  # no room after the box: grow it backwards instead
        lo, hi = limit - size, limit
    return lo, hi


def grow(box: Box, margin: int, multiple: int, height: int, width: int) -> Box:
    """`box` with `margin` cells of context on every side, sizes rounded up to `multiple`, inside the grid."""
    y0, y1 = _grow_axis(box.y0, box.y1, margin, multiple, height)
    x0, x1 = _grow_axis(box.x0, box.x1, margin, multiple, width)
    return Box(y0, y1, x0, x1)


def regenerate_box(latent_mask: np.ndarray, margin: int, multiple: int = 1) -> Box:
    """The latent cells touched by the mask (soft mask > 0) plus `margin` cells of context.

    latent_mask (1, 1, h, w) float32. A mask with nothing to regenerate gets the whole grid.
    """
    grid = latent_mask[0, 0]
    h, w = grid.shape
    box = active_box(grid > 0)
    if box is None:
        return Box(0, h, 0, w)
    return grow(box, margin, multiple, h, w)
