"""The coherence pass: a short, low-strength second denoise over a band along the source's boundary
(issue "Outpainting better than the tools people use today", item 2; InvokeAI's "coherence pass").

After the main denoise, colour match and paste-back, the finished canvas is encoded again and the
band of the new area within `width` px of the source (and today's paste-back ramp on the source
side, `mask_expand` px) is denoised once more, img2img at `strength` in `steps` steps, with the
rest of the canvas blended back as known latents after every step, so the model sees the real
source and the first pass's new area on both sides of the band. The decoded band is colour matched
like the first pass and blended into the first pass's decoded image with a soft weight (1 up to
half the width, falling linearly to 0 at the width), then pasted back as before: **source pixels
past the paste-back ramp come back bit for bit, as without the pass** (zoom's exact centres hold).

`coherence_masks` is the band as pure functions of the canvas; `plan_steps` says which noise
schedule gives `steps` steps at `strength`. Cost: `steps` model evaluations more (one batched
guided UNet call each; two for the two-evaluation schedulers, Heun and KDPM2), one VAE encode (two
for a 9-channel UNet), one text encode and one VAE decode. Whether it runs by default, and at which
settings, was measured on the quality benchmark (docs/quality.md, "Coherence pass"): it is on, at
32 px, strength 0.5, 4 steps.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from outpaint.core.errors import InvalidRequest

COHERENCE_MODES = ("off", "band")
WIDTH_RANGE = (8, 256)  # px: under 8 the band is thinner than one latent cell
STEPS_RANGE = (1, 50)
STRENGTH_RANGE = (0.05, 1.0)


@dataclass(frozen=True)
class Coherence:
    """Whether and how the coherence pass runs (module docstring)."""

    mode: str = "band"
    # The best of the measured grid (docs/quality.md, "Coherence pass"): widths 16/32/64, strengths
    # 0.2/0.35/0.5, 4 or 8 steps.
    width: int = 32  # px of the new area along the source's boundary that the pass denoises again
    strength: float = 0.5  # img2img strength of the pass
    steps: int = 4  # denoising steps of the pass

    def __post_init__(self) -> None:
        if self.mode not in COHERENCE_MODES:
            raise InvalidRequest("coherence", f"must be one of {', '.join(COHERENCE_MODES)}, got {self.mode!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not (
                WIDTH_RANGE[0] <= self.width <= WIDTH_RANGE[1]):
            raise InvalidRequest("coherence_width",
                                 f"must be a whole number of pixels from {WIDTH_RANGE[0]} to {WIDTH_RANGE[1]}, "
                                 f"got {self.width!r}")
        if not (isinstance(self.strength, int | float) and STRENGTH_RANGE[0] <= self.strength <= STRENGTH_RANGE[1]):
            raise InvalidRequest("coherence_strength",
                                 f"must be from {STRENGTH_RANGE[0]} to {STRENGTH_RANGE[1]}, got {self.strength!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not (
                STEPS_RANGE[0] <= self.steps <= STEPS_RANGE[1]):
            raise InvalidRequest("coherence_steps", f"must be a whole number from {STEPS_RANGE[0]} to "
                                 f"{STEPS_RANGE[1]}, got {self.steps!r}")

    @property
    def on(self) -> bool:
        return self.mode != "off"


COHERENCE_OFF = Coherence(mode="off")
COHERENCE_DEFAULT = Coherence()  # ahead on seam, colour shift and PSNR (docs/quality.md, "Coherence pass")


def has_boundary(known: np.ndarray) -> bool:
    """Whether the canvas has both source and new pixels, so a band between them exists."""
    return bool(known.any()) and not bool(known.all())


def coherence_masks(known: np.ndarray, mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(regenerate, weight) of the band, both (H, W) float32 in [0, 1].

    known (H, W) bool: the source's pixels; mask (H, W) float32: the first pass's regenerate mask
    (the new area and the paste-back ramp into the source, engine/canvas.make_canvas).
    `regenerate` is 1 where the pass denoises again: the first pass's mask within `width` px of the
    source. `weight` is how much of the pass's decoded image replaces the first pass's before
    paste-back: 1 on the source side of the band and up to width/2 into the new area, falling
    linearly to 0 at `width`. Both are 0 wherever `mask` is 0, so paste-back still returns every
    source pixel past its ramp untouched.
    """
    if not has_boundary(known):
        zeros = np.zeros(known.shape, np.float32)
        return zeros, zeros
    to_source = np.asarray(distance_transform_edt(~known))  # 0 on the source, px to the nearest source pixel elsewhere
    regenerate = (mask > 0) & (to_source <= width)
    half = width / 2
    ramp = np.clip((width - to_source) / (width - half), 0.0, 1.0)
    weight = np.where(regenerate, ramp, 0.0)
    return regenerate.astype(np.float32), weight.astype(np.float32)


def blend_band(first: np.ndarray, second: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: `second` over `first` by `weight` ((H, W) float32); `first` exactly where weight is 0."""
    w = weight[..., None]
    mixed = np.clip(np.rint(w * second.astype(np.float32) + (1.0 - w) * first.astype(np.float32)), 0, 255)
    out = mixed.astype(np.uint8)
    untouched = weight <= 0.0
    out[untouched] = first[untouched]
    return out


def plan_steps(steps: int, strength: float) -> int:
    """The num_inference_steps of the schedule whose strength-`strength` tail has exactly `steps` steps
    (steps_to_skip keeps int(n * strength) of n)."""
    n = max(steps, math.ceil(steps / strength - 1e-9))
    while int(n * strength) < steps:
        n += 1
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--coherence`, `--coherence-width`, `--coherence-strength`, `--coherence-steps` (run, zoom, pan, serve)."""
    d = Coherence()  # the pass's measured settings, used when it is turned on
    parser.add_argument("--coherence", choices=COHERENCE_MODES, default=COHERENCE_DEFAULT.mode,
                        help="a short low-strength second denoise over the new area's band along the source "
                             f"(band) or none (off) (default {COHERENCE_DEFAULT.mode}; docs/quality.md)")
    parser.add_argument("--coherence-width", type=int, default=d.width,
                        help=f"px of the new area along the source the pass denoises again, {WIDTH_RANGE[0]} to "
                             f"{WIDTH_RANGE[1]} (default {d.width})")
    parser.add_argument("--coherence-strength", type=float, default=d.strength,
                        help=f"img2img strength of the pass, {STRENGTH_RANGE[0]:g} to {STRENGTH_RANGE[1]:g} "
                             f"(default {d.strength:g})")
    parser.add_argument("--coherence-steps", type=int, default=d.steps,
                        help=f"denoising steps of the pass, {STEPS_RANGE[0]} to {STEPS_RANGE[1]} (default {d.steps})")


def from_arguments(args: argparse.Namespace) -> Coherence:
    try:
        return Coherence(args.coherence, args.coherence_width, args.coherence_strength, args.coherence_steps)
    except InvalidRequest as exc:
        raise SystemExit(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
