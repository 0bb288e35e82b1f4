"""Every score of one outpainted image of one case against its ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np

from outpaint.scenes import Scene
from outpaint.scenes.landscape import SKIES, Landscape

from .cases import Case
from .metrics import band, colour_shift, psnr, seam_score, ssim
from .structure import HORIZON_TOLERANCE, PERIOD_TOLERANCE, count_bodies, period_error, vertical_shift


def structure(case: Case, scene: Scene, image: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The scene kind's structure check: {"ok": bool, plus what it measured}."""
    if isinstance(scene, Landscape):
        kind = SKIES[scene.time_of_day][2]  # "sun" or "moon"
        radius_px = scene.body[2] / case.view_height * case.height
        bodies, true_bodies = count_bodies(image, kind, radius_px), count_bodies(truth, kind, radius_px)
        out: dict[str, Any] = {"bodies": bodies, "true_bodies": true_bodies}
        ok = bodies == true_bodies
        columns = case.full_height_columns()
        if len(columns) >= 16:
            shift = vertical_shift(image, truth, columns)
            out["horizon_shift_px"] = shift
            ok = ok and abs(shift) <= HORIZON_TOLERANCE * case.height
        return {"ok": bool(ok), **out}
    error = period_error(image, truth, case.largest_strip())
    return {"ok": bool(error <= PERIOD_TOLERANCE), "period_error": round(error, 4)}


def score(case: Case, scene: Scene, image: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    new = case.new_area()
    seam = seam_score(image, case.source)
    return {
        "psnr_db": round(psnr(image, truth, new), 3),
        "ssim": round(ssim(image, truth, new), 4),
        "seam": None if seam is None else round(seam, 3),
        "ciede2000_band": round(colour_shift(image, truth, band(case.source, case.width, case.height)), 3),
        "structure": structure(case, scene, image, truth),
    }
