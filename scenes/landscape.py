"""Landscapes: a sky by time of day, a sun or a moon, cloud bands, one to three mountain ridges
(hazier with distance), and water with a reflection or textured ground below the horizon.

Every element is a function of scene coordinates, defined for every x: ridges and clouds are sums
of sinusoids at random phases over octaves (a fractal 1-D profile that never repeats within any
view we draw), so whatever lies beyond a crop is determined by the same parameters. Edges are
smoothed over one pixel, so a scene looks the same at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .palette import rgb
from .view import View

# Sky top and bottom colour by time of day, and whether the sun or the moon is out.
SKIES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "dawn": ((90, 110, 180), (250, 190, 150), "sun"),
    "noon": ((40, 110, 220), (170, 210, 245), "sun"),
    "sunset": ((70, 50, 120), (250, 130, 90), "sun"),
    "dusk": ((25, 30, 80), (140, 90, 130), "moon"),
    "night": ((5, 8, 30), (30, 40, 80), "moon"),
}
SKY_WORDS = {"dawn": "a pale dawn", "noon": "a clear noon sky", "sunset": "a pink sunset", "dusk": "a violet dusk",
             "night": "a night sky"}
RIDGE_COLOURS = ("blue", "green", "purple", "brown", "gray", "teal")
NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
OCTAVES = 6


@dataclass(frozen=True)
class Profile:
    """A fractal 1-D profile: sum over octaves of amplitude 2^-k sinusoids at frequency 2^k."""

    base_frequency: float
    phases: tuple[float, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        total = np.zeros_like(x)
        for k, phase in enumerate(self.phases):
            total += 0.5**k * np.sin(2 * np.pi * self.base_frequency * 2**k * x + phase)
        return total / 2.0  # within [-1, 1]


@dataclass(frozen=True)
class Ridge:
    colour: str
    height: float  # mean y of its crest (smaller is higher up)
    amplitude: float  # scene units of crest variation
    haze: float  # 0 = its own colour, 1 = the sky's horizon colour
    profile: Profile


@dataclass(frozen=True)
class Landscape:
    seed: int
    time_of_day: str
    horizon: float  # y of the horizon (water line or ground line)
    body: tuple[float, float, float]  # sun or moon: x, y, radius
    clouds: tuple[tuple[float, float, float, float], ...]  # (y, thickness, opacity, phase) per band
    ridges: tuple[Ridge, ...]  # farthest first
    water: bool  # a lake below the horizon, else textured ground
    ground: str  # the ground's colour when there is no water

    @classmethod
    def from_rng(cls, seed: int, rng: np.random.Generator) -> Landscape:
        time_of_day = str(rng.choice(list(SKIES)))
        horizon = float(rng.uniform(0.6, 0.75))
        # The sun or moon is inside the standard frame's first 1.4 units, so its caption shows it there.
        body = (float(rng.uniform(0.1, 1.4)), float(rng.uniform(0.12, 0.4)), float(rng.uniform(0.04, 0.08)))
        clouds = tuple((float(rng.uniform(0.05, 0.45)), float(rng.uniform(0.02, 0.06)), float(rng.uniform(0.3, 0.7)),
                        float(rng.uniform(0, 2 * np.pi))) for _ in range(int(rng.integers(0, 4))))
        count = int(rng.integers(1, 4))
        ridges = []
        for i in range(count):
            depth = (count - i) / count  # 1 = farthest
            ridges.append(Ridge(
                colour=RIDGE_COLOURS[int(rng.integers(len(RIDGE_COLOURS)))],
                height=horizon - 0.08 - 0.12 * depth * float(rng.uniform(0.7, 1.0)),
                amplitude=float(rng.uniform(0.04, 0.1)),
                haze=0.55 * depth if count > 1 else 0.2,
                profile=Profile(float(rng.uniform(0.3, 0.8)),
                                tuple(float(p) for p in rng.uniform(0, 2 * np.pi, OCTAVES))),
            ))
        ground = str(rng.choice(["green", "brown", "yellow"]))
        return cls(seed, time_of_day, horizon, body, clouds, tuple(ridges), bool(rng.random() < 0.5), ground)

    def caption(self) -> str:
        ridges = self.ridges
        colours = sorted({r.colour for r in ridges})
        colour = colours[0] if len(colours) == 1 else ", ".join(colours[:-1]) + " and " + colours[-1]
        noun = "ridge" if len(ridges) == 1 else "ridges"
        below = "a lake" if self.water else f"{self.ground} fields"
        moon = SKIES[self.time_of_day][2] == "moon"
        extra = " and a moon" if moon else ""
        return f"{SKY_WORDS[self.time_of_day]} over {NUMBER_WORDS[len(ridges)]} {colour} {noun}, {below}{extra}"

    def render(self, width: int, height: int, view: View) -> np.ndarray:
        x, y, pixel = view.grid(width, height)
        top, bottom, body_kind = SKIES[self.time_of_day]
        top_c, bottom_c = np.array(top, np.float32) / 255, np.array(bottom, np.float32) / 255
        # Sky: a vertical gradient to the horizon colour; above y = 0 it keeps the top colour.
        t = np.clip(y / self.horizon, 0.0, 1.0)[..., None]
        image = np.broadcast_to((1 - t) * top_c + t * bottom_c, (height, width, 3)).astype(np.float32).copy()
        bx, by, radius = self.body
        body_colour = np.array((255, 240, 180) if body_kind == "sun" else (230, 230, 240), np.float32) / 255
        disc = _smooth_step(radius - np.hypot(x - bx, y - by), pixel)[..., None]
        image = image * (1 - disc) + body_colour * disc
        for cy, thickness, opacity, phase in self.clouds:
            wave = cy + 0.02 * np.sin(2.3 * x + phase) + 0.01 * np.sin(7.1 * x + 2 * phase)
            band = np.exp(-(((y - wave) / thickness) ** 2)) * opacity
            image = image * (1 - band[..., None]) + np.float32(0.95) * band[..., None]
        for ridge in self.ridges:
            crest = ridge.height + ridge.amplitude * ridge.profile(x)
            inside = _smooth_step(y - crest, pixel)[..., None]
            colour = (1 - ridge.haze) * rgb(ridge.colour) + ridge.haze * bottom_c
            shade = 1 - 0.25 * np.clip((y - crest) / 0.3, 0, 1)[..., None]  # darker towards the foot
            image = image * (1 - inside) + colour * shade * inside
        below = _smooth_step(y - self.horizon, pixel)[..., None]
        if self.water:
            mirror = np.clip(2 * self.horizon - y, 0, None)  # the sky reflected about the horizon
            tr = np.clip(mirror / self.horizon, 0, 1)[..., None]
            ripple = 0.04 * np.sin(40 * y + 3 * np.sin(5 * x))[..., None]
            water = (0.75 * ((1 - tr) * top_c + tr * bottom_c) + 0.25 * np.array((0.1, 0.2, 0.35), np.float32) + ripple)
            glint = _smooth_step(radius * 0.6 - np.abs(x - bx), pixel)[..., None] * 0.5
            water = water * (1 - glint) + body_colour * glint
            image = image * (1 - below) + water * below
        else:
            texture = 0.08 * (np.sin(31 * x + 7 * np.sin(3 * y)) * np.sin(23 * y + 5 * np.sin(2 * x)))[..., None]
            ground = rgb(self.ground) * (0.8 + 0.3 * np.clip((y - self.horizon) / 0.4, 0, 1))[..., None] + texture
            image = image * (1 - below) + ground * below
        return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _smooth_step(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """0 outside, 1 inside, a linear edge one pixel wide (the same look at every resolution)."""
    return np.clip(signed_distance / pixel + 0.5, 0.0, 1.0).astype(np.float32)
