"""One structure check per scene kind, each comparing the image with the ground truth the same way:
landscapes keep their horizon's height and their number of suns or moons; patterns keep their period."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import find_objects, label

from outpaint.engine.colour import ciede2000, srgb_to_lab

BODY_COLOURS = {"sun": (255, 240, 180), "moon": (230, 230, 240)}  # as scenes/landscape.py draws them
HORIZON_TOLERANCE = 0.03  # of the canvas height
PERIOD_TOLERANCE = 0.15  # relative


def vertical_shift(image: np.ndarray, truth: np.ndarray, columns: np.ndarray) -> int:
    """Rows by which the image's vertical structure (the L* profile's gradient over `columns`) is
    displaced from the truth's: 0 where the horizon and the ridges sit at their true height."""
    def profile(img: np.ndarray) -> np.ndarray:
        p = srgb_to_lab(img[:, columns])[..., 0].mean(axis=1)
        return np.abs(np.diff(p))

    a, b = profile(image), profile(truth)
    limit = len(a) // 8
    costs = {s: float(np.abs(np.roll(a, s)[limit:-limit] - b[limit:-limit]).mean()) for s in range(-limit, limit + 1)}
    return min(costs, key=lambda s: (costs[s], abs(s)))


def count_bodies(image: np.ndarray, body: str, radius_px: float) -> int:
    """Round blobs of the sun's (or moon's) colour at least about the true disc's size."""
    target = srgb_to_lab(np.array(BODY_COLOURS[body], np.uint8))
    close = ciede2000(srgb_to_lab(image), target) < 8.0
    labels, _ = label(close)
    found = 0
    for index, box in enumerate(find_objects(labels), start=1):
        if box is None:
            continue
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        area = int((labels[box] == index).sum())
        if area >= 0.3 * np.pi * radius_px**2 and max(h, w) <= 1.8 * min(h, w) and area >= 0.5 * h * w:
            found += 1
    return found


def dominant_period(gray: np.ndarray) -> float:
    """The period in pixels of the strongest spatial frequency of a (H, W) image (Hann-windowed FFT)."""
    h, w = gray.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    spectrum = np.abs(np.fft.rfft2((gray - gray.mean()) * window))
    spectrum[0, 0] = 0
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.hypot(fy, fx)
    spectrum[radius < 2.0 / min(h, w)] = 0  # frequencies slower than two cycles over the area
    iy, ix = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    return float(1.0 / max(radius[iy, ix], 1e-6))


def period_error(image: np.ndarray, truth: np.ndarray, area: tuple[slice, slice]) -> float:
    """Relative difference of the dominant period of the image and the truth over `area`."""
    luma = np.array([0.299, 0.587, 0.114])
    p_img = dominant_period(image[area].astype(np.float64) @ luma)
    p_truth = dominant_period(truth[area].astype(np.float64) @ luma)
    return abs(p_img - p_truth) / p_truth
