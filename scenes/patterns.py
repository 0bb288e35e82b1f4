"""Periodic patterns in random colours: stripes at an angle, checkerboards, tiles with grout.

The easiest continuation there is, and an exact one: a model that has learnt the pattern extends it
to the pixel, so these cases separate "continues the structure" from "makes up something plausible".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .palette import rgb, two_names
from .view import View

KINDS = ("stripes", "checkerboard", "tiles")


@dataclass(frozen=True)
class Pattern:
    seed: int
    kind: str
    colours: tuple[str, str]  # the two colours (tiles: tile and grout)
    period: float  # scene units
    angle_deg: float  # stripes and checkerboards are rotated by this much

    @classmethod
    def from_rng(cls, seed: int, rng: np.random.Generator) -> Pattern:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        angle = float(rng.choice([0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 150.0])) if kind != "tiles" else 0.0
        return cls(seed, kind, two_names(rng), float(rng.uniform(0.08, 0.3)), angle)

    def caption(self) -> str:
        first, second = self.colours
        if self.kind == "stripes":
            return f"{first} and {second} stripes at {self.angle_deg:g} degrees"
        if self.kind == "checkerboard":
            turned = f", turned {self.angle_deg:g} degrees" if self.angle_deg else ""
            return f"a {first} and {second} checkerboard{turned}"
        return f"{first} tiles with {second} grout"

    def render(self, width: int, height: int, view: View) -> np.ndarray:
        x, y, pixel = view.grid(width, height)
        theta = np.deg2rad(self.angle_deg)
        u = (x * np.cos(theta) + y * np.sin(theta)) / self.period  # along the pattern, in periods
        v = (-x * np.sin(theta) + y * np.cos(theta)) / self.period
        soft = pixel / self.period  # one pixel, in periods: edges stay one pixel wide at any size
        if self.kind == "stripes":
            weight = _square_wave(u, soft)
        elif self.kind == "checkerboard":
            weight = _square_wave(u, soft) * _square_wave(v, soft) + (1 - _square_wave(u, soft)) * (
                1 - _square_wave(v, soft))
        else:
            grout = 0.08  # of a period
            inside_u = np.clip((0.5 - grout / 2 - np.abs(np.mod(u, 1.0) - 0.5)) / soft + 0.5, 0, 1)
            inside_v = np.clip((0.5 - grout / 2 - np.abs(np.mod(v, 1.0) - 0.5)) / soft + 0.5, 0, 1)
            weight = inside_u * inside_v
        first, second = rgb(self.colours[0]), rgb(self.colours[1])
        image = weight[..., None] * first + (1 - weight[..., None]) * second
        return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _square_wave(t: np.ndarray, soft: float) -> np.ndarray:
    """1 on the first half of every period, 0 on the second, with edges `soft` periods wide."""
    phase = np.mod(t, 1.0)
    distance = 0.25 - np.abs(phase - 0.25)  # > 0 inside [0, 0.5), signed distance to the nearer edge
    distance = np.where(phase > 0.75, phase - 1.0, distance)  # the wrap-around edge at 1 = 0
    return np.clip(distance / max(soft, 1e-9) + 0.5, 0.0, 1.0)
