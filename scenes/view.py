"""Which part of a scene's unbounded plane an image shows, and at what resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class View:
    """A rectangle of the plane in scene units: x to the right, y downwards. The standard frame of a
    landscape is y in [0, 1] (sky at the top, its horizon inside); x is unbounded both ways."""

    x0: float
    y0: float
    width: float  # scene units
    height: float

    @classmethod
    def standard(cls, width_px: int, height_px: int, x0: float = 0.0) -> View:
        """The frame one unit high at the image's aspect ratio."""
        return cls(x0, 0.0, width_px / height_px, 1.0)

    def grid(self, width_px: int, height_px: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Pixel-centre coordinates (1, W) x and (H, 1) y, float64, and one pixel's size in scene units."""
        xs = self.x0 + (np.arange(width_px) + 0.5) * (self.width / width_px)
        ys = self.y0 + (np.arange(height_px) + 0.5) * (self.height / height_px)
        return xs[None, :], ys[:, None], self.height / height_px

    def crop(self, left: float, top: float, width: float, height: float) -> View:
        """The sub-view of fractions (left, top, width, height) of this one, e.g. a source inside a canvas."""
        return View(self.x0 + left * self.width, self.y0 + top * self.height, width * self.width,
                    height * self.height)
