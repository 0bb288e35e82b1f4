"""Colour harmonisation of the generated area to the source (issue "Outpainting better ...", item 1).

Two ways of matching L*a*b* statistics (mean and standard deviation per channel, Reinhard et al.
2001), both over a band along the source's boundary and applied to the new area only:

- "decoded": the decoder's rendering of the source band against the source's real pixels there.
  What the VAE and the generation shifted in colour is measured where the truth is known, and the
  same correction is applied to the new area.
- "band": the new area's band against the source's band (Krita AI Diffusion's default colour
  match): assumes the picture continues across the boundary in the same colours.

Which one runs by default, if any, is decided by the quality benchmark (docs/quality.md).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.ndimage import distance_transform_edt

from .colour import lab_to_srgb, srgb_to_lab

MODES = ("off", "decoded", "band")
COLOUR_MATCH_DEFAULT = "band"  # ahead of "off" on PSNR, seam and colour shift (docs/quality.md)
BAND_PX = 32
SCALE_LIMITS = (0.5, 2.0)  # on the std ratio: a band of flat sky must not blow up the new area's contrast


def _stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lab.mean(axis=0), lab.std(axis=0)


def match_colours(decoded: np.ndarray, source_rgb: np.ndarray, known: np.ndarray, mode: str) -> np.ndarray:
    """Return `decoded` ((H, W, 3) uint8, before paste-back) with its new area's colours matched.

    source_rgb (H, W, 3) uint8 is the placed source (valid where `known`, (H, W) bool).
    """
    if mode not in MODES:
        raise ValueError(f"colour match must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or known.all() or not known.any():
        return decoded
    source_band = known & (distance_transform_edt(known) <= BAND_PX)
    new = ~known
    lab = srgb_to_lab(decoded)
    if mode == "decoded":
        mu_from, sd_from = _stats(lab[source_band])
    else:
        new_band = new & (distance_transform_edt(new) <= BAND_PX)
        mu_from, sd_from = _stats(lab[new_band])
    mu_to, sd_to = _stats(srgb_to_lab(source_rgb[source_band]))
    scale = np.clip(sd_to / np.maximum(sd_from, 1e-3), *SCALE_LIMITS)
    out = decoded.copy()
    out[new] = lab_to_srgb((lab[new] - mu_from) * scale + mu_to)
    return out


def add_argument(parser: argparse.ArgumentParser) -> None:
    """`--colour-match` (outpaint run / zoom / pan / serve)."""
    parser.add_argument("--colour-match", default=COLOUR_MATCH_DEFAULT, choices=MODES,
                        help="harmonise the new area's colours to the source before paste-back: band (statistics "
                             "of the band each side of the boundary, Krita's way), decoded (of the whole decoded "
                             f"source area) or off (default {COLOUR_MATCH_DEFAULT}; docs/quality.md)")
