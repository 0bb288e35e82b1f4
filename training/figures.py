"""Figures of a training run drawn with Pillow alone: loss curves and image strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points (the first points average what exists)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (cumulative[idx] - cumulative[lo]) / (idx - lo)


def loss_curve(path: Path, title: str, steps: np.ndarray, series: dict[str, np.ndarray], log: bool = True) -> None:
    """A line plot of each series against step (log y), smoothed over 50 steps, with min/max labels."""
    width, height, pad = 720, 360, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 10), title, fill="black")
    curves = {name: smooth(v, 50) for name, v in series.items()}
    tf = np.log10 if log else (lambda v: v)
    lo = min(float(tf(np.maximum(c, 1e-12)).min()) for c in curves.values())
    hi = max(float(tf(np.maximum(c, 1e-12)).max()) for c in curves.values())
    hi = hi if hi > lo else lo + 1
    x0, x1, y0, y1 = pad, width - 20, height - pad, 30
    draw.rectangle((x0, y1, x1, y0), outline="gray")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    s0, s1 = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    for (name, curve), colour in zip(curves.items(), colours, strict=False):
        ys = tf(np.maximum(curve, 1e-12))
        points = [(x0 + (s - s0) / (s1 - s0) * (x1 - x0), y0 - (v - lo) / (hi - lo) * (y0 - y1))
                  for s, v in zip(steps, ys, strict=True)]
        draw.line(points, fill=colour, width=2)
        draw.text((x1 - 200, y1 + 8 + 14 * list(curves).index(name)), f"{name}: last {curve[-1]:.4g}", fill=colour)
    label = (lambda v: f"{10 ** v:.3g}") if log else (lambda v: f"{v:.3g}")
    draw.text((4, y1), label(hi), fill="black")
    draw.text((4, y0 - 10), label(lo), fill="black")
    draw.text((x0, y0 + 8), f"step {int(s0)}", fill="black")
    draw.text((x1 - 70, y0 + 8), f"step {int(s1)}", fill="black")
    image.save(path)


def strip(path: Path, rows: list[list[np.ndarray]], labels: list[str]) -> None:
    """A grid of (H, W, 3) uint8 images, one row per list, column labels on top."""
    h, w = rows[0][0].shape[:2]
    gap, top = 4, 16
    cols = len(rows[0])
    sheet = Image.new("RGB", (cols * (w + gap) + gap, len(rows) * (h + gap) + gap + top), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((gap + c * (w + gap), 2), label, fill="black")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(Image.fromarray(img), (gap + c * (w + gap), top + gap + r * (h + gap)))
    sheet.save(path)
