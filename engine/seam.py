"""The seam score of a finished image: how much more the picture changes across the source's
boundary than beside it (issue "Outpainting better than the tools people use today", item 5).

One definition for the response header `x-seam-score`, the CLI and the quality benchmark.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from .colour import lightness

BAND_PX = 8  # either side of the boundary: covers the paste-back ramp (mask_expand 8) and a sharp step alike
REFERENCE_PX = (12, 24)  # the lines beside the seam it is compared with, either side
SMOOTH_PX = 3.0  # Gaussian sigma: texture averages out, a jump that runs along the boundary stays


def seam_score(image: np.ndarray, known: np.ndarray) -> float | None:
    """Mean |d L*/d normal| within BAND_PX of the known/new boundary over that 12-24 px from it.

    The gradient is taken along the boundary's normal and smoothed over SMOOTH_PX first, so texture
    (which changes sign along the boundary) averages out and what remains is change that runs along
    the boundary: a step or a ramp of brightness or colour. About 1 where the boundary is as smooth
    as the picture around it; a visible seam scores well above 1. image (H, W, 3) uint8, known
    (H, W) bool (True on source pixels). None when there is no boundary or nothing beside it.
    """
    if known.all() or not known.any():
        return None
    # Signed distance to the other side: negative in the source, positive in the new area.
    signed = np.where(known, -distance_transform_edt(known), distance_transform_edt(~known))
    ny, nx = np.gradient(signed)
    norm = np.maximum(np.hypot(nx, ny), 1e-6)
    gy, gx = np.gradient(lightness(image))
    across = gaussian_filter((gx * nx + gy * ny) / norm, SMOOTH_PX)
    distance = np.abs(signed)
    band = distance <= BAND_PX
    lo, hi = REFERENCE_PX
    reference = (distance >= lo) & (distance <= hi)
    if not band.any() or not reference.any():
        return None
    return float(np.abs(across[band]).mean() / max(float(np.abs(across[reference]).mean()), 0.02))
