"""The benchmark's fixed cases: a canvas, where the source lands on it, and the scene's view.

A case's ground truth is the scene rendered over the whole canvas; its source is the same scene
rendered over the source's part of the view (at the source's own resolution when it is scaled), so
what lies outside the source is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from outpaint.scenes import Scene, View, render

from .metrics import Rect


@dataclass(frozen=True)
class Case:
    name: str
    width: int  # canvas, pixels
    height: int
    source: Rect  # the placed source, canvas pixels
    scale: float = 1.0  # the request's scale: the source image is source.width / scale pixels wide
    view_height: float = 1.0  # scene units the canvas spans vertically (1: the standard frame)
    scenes: int = 8  # held-out scenes it runs on

    def view(self) -> View:
        """The canvas's view: centred on the standard frame's middle, `view_height` units high."""
        top = 0.5 - self.view_height / 2
        return View(0.5 * self.width / self.height * (1 - self.view_height), top,
                    self.view_height * self.width / self.height, self.view_height)

    def truth(self, scene: Scene) -> np.ndarray:
        """(height, width, 3) uint8: the whole canvas as the scene really is."""
        return render(scene, self.width, self.height, self.view())

    def source_image(self, scene: Scene) -> np.ndarray:
        """(h, w, 3) uint8: what the user brings, at its own resolution."""
        s = self.source
        part = self.view().crop(s.x / self.width, s.y / self.height, s.width / self.width, s.height / self.height)
        return render(scene, round(s.width / self.scale), round(s.height / self.scale), part)

    def new_area(self) -> np.ndarray:
        """(height, width) bool: what the outpainting adds."""
        return ~self.source.inside(self.width, self.height)

    def full_height_columns(self) -> np.ndarray:
        """Indices of canvas columns with no source pixel (the horizon check reads these)."""
        s = self.source
        return np.array([x for x in range(self.width) if not s.x <= x < s.x + s.width], dtype=np.int64)

    def largest_strip(self) -> tuple[slice, slice]:
        """The largest new-area rectangle beside the source (the period check reads it)."""
        s, w, h = self.source, self.width, self.height
        strips = [(slice(0, h), slice(0, s.x)), (slice(0, h), slice(s.x + s.width, w)),
                  (slice(0, s.y), slice(0, w)), (slice(s.y + s.height, h), slice(0, w))]
        return max(strips, key=lambda r: (r[0].stop - r[0].start) * (r[1].stop - r[1].start))


SQUARE = Rect(0, 0, 256, 256)
CASES: tuple[Case, ...] = (
    Case("right_25", 320, 256, SQUARE),
    Case("right_50", 384, 256, SQUARE),
    Case("right_100", 512, 256, SQUARE),
    Case("left_50", 384, 256, Rect(128, 0, 256, 256)),
    Case("up_50", 256, 384, Rect(0, 128, 256, 256)),
    Case("down_50", 256, 384, SQUARE),
    Case("all_sides", 384, 384, Rect(64, 64, 256, 256)),
    # The hosted API's zoom-out: a 256 px image at scale 0.5 in the middle of the canvas.
    Case("zoom_out", 256, 256, Rect(64, 64, 128, 128), scale=0.5),
    # Twice the native 256 px per side at the large case's pixel density: the analogue of the hosted
    # API's default 1024x1024 canvas for SD 1.5 (native 512).
    Case("large_512", 512, 512, Rect(128, 128, 256, 256), view_height=4 / 3, scenes=4),
    # Three times the native 256 px per side, twice the standard frame's extent: the large-canvas
    # case (SD 1.5 at 1536 px). Fewer scenes: it costs nine native canvases per image.
    Case("large_768", 768, 768, Rect(256, 256, 256, 256), view_height=2.0, scenes=4),
)


def case_by_name(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    raise ValueError(f"unknown case {name!r}; the cases are {', '.join(c.name for c in CASES)}")
