"""Run one request from the command line: outpaint with a progress bar, write the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from outpaint.core.errors import Cancelled
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult
from outpaint.engine.request import OutpaintRequest

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def save_image(image: np.ndarray, path: Path) -> None:
    """Write (H, W, 3) uint8 as JPEG (quality 95), PNG or WebP, chosen by the file's suffix."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SystemExit(f"output {path}: the suffix must be one of {', '.join(_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def run_with_progress(pipeline: OutpaintPipeline, image_bytes: bytes, request: OutpaintRequest) -> OutpaintResult:
    with tqdm(total=None, unit="step", desc="denoising") as bar:
        for item in pipeline.generate(image_bytes, request):
            if isinstance(item, StepEvent):
                bar.total = item.total
                bar.update(1)
            else:
                return item
    raise Cancelled("the generation ended without a result")
