"""Run one request from the command line: outpaint with a progress bar, write the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from outpaint.engine.canvas import SourceImage
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult, run_to_result
from outpaint.engine.request import OutpaintRequest

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def check_output_path(path: Path) -> str:
    """The format to write `path` in; SystemExit naming what is wrong with it, before any work is done.

    Checked before the model loads: finding out after a whole generation that `x.bmp` cannot be
    written wastes minutes. The folder is created here too, so a path that cannot be made fails now.
    """
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SystemExit(f"output {path}: the suffix must be one of {', '.join(_FORMATS)}")
    if path.is_dir():
        raise SystemExit(f"output {path} is a folder; give a file name ending in one of "
                         f"{', '.join(_FORMATS)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"output {path}: cannot create its folder ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise SystemExit(f"output {path}: the folder {path.parent} is not writable")
    return fmt


def save_image(image: np.ndarray, path: Path) -> None:
    """Write (H, W, 3) uint8 as JPEG (quality 95), PNG or WebP, chosen by the file's suffix."""
    fmt = check_output_path(path)
    Image.fromarray(image).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def run_with_progress(
    pipeline: OutpaintPipeline, source: SourceImage | bytes, request: OutpaintRequest
) -> OutpaintResult:
    with tqdm(total=None, unit="step", desc="denoising") as bar:
        def advance(event: StepEvent) -> None:
            bar.total = event.total
            bar.update(1)

        return run_to_result(pipeline, source, request, advance)
