"""Scores of an outpainted image against the ground truth: fidelity over the new area (PSNR, SSIM),
the seam along the source's edges (the engine's own score), and the colour shift in the band next to
them (CIEDE2000)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from outpaint.engine.colour import ciede2000, srgb_to_lab
from outpaint.engine.seam import seam_score as engine_seam_score

BAND_PX = 32  # the colour-shift band: new-area pixels this close to the source


@dataclass(frozen=True)
class Rect:
    """The placed source on the canvas, in canvas pixels."""

    x: int
    y: int
    width: int
    height: int

    def inside(self, width: int, height: int) -> np.ndarray:
        """(height, width) bool: True on the source."""
        mask = np.zeros((height, width), bool)
        mask[max(self.y, 0):self.y + self.height, max(self.x, 0):self.x + self.width] = True
        return mask


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """dB over the pixels of `where` ((H, W) bool), 8-bit peak."""
    mse = float(np.mean((a[where].astype(np.float64) - b[where]) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, on luma) over the pixels of `where`."""
    luma = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(np.float64) @ luma, b.astype(np.float64) @ luma
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = gaussian_filter(x, 1.5), gaussian_filter(y, 1.5)
    vx = gaussian_filter(x * x, 1.5) - mx * mx
    vy = gaussian_filter(y * y, 1.5) - my * my
    cov = gaussian_filter(x * y, 1.5) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map[where].mean())


def band(source: Rect, width: int, height: int, px: int = BAND_PX) -> np.ndarray:
    """(H, W) bool: new-area pixels within `px` of the source."""
    inside = source.inside(width, height)
    return ~inside & (distance_transform_edt(~inside) <= px)


def colour_shift(image: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    """Mean CIEDE2000 between the image and the truth over `where`."""
    return float(ciede2000(srgb_to_lab(image[where]), srgb_to_lab(truth[where])).mean())


def seam_score(image: np.ndarray, source: Rect) -> float | None:
    """The engine's seam score (engine/seam.py) with the placed source as the known area."""
    return engine_seam_score(image, source.inside(image.shape[1], image.shape[0]))
