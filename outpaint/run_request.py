"""Run one request from the command line: load, outpaint with a progress bar, write the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import OutpaintPipeline, OutpaintResult

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


def save_image(image, path: Path) -> None:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SystemExit(f"output {path}: use one of {', '.join(_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def run_with_progress(model: Path, backend: str, image_bytes: bytes, args, request_from_args) -> OutpaintResult:
    pipeline = OutpaintPipeline.load(model, backend)
    request = request_from_args(args, pipeline.scheduler_names)
    result = None
    with tqdm(total=None, unit="step", desc="denoising") as bar:
        for item in pipeline.generate(image_bytes, request):
            if isinstance(item, StepEvent):
                bar.total = item.total
                bar.update(1)
            else:
                result = item
    for warning in result.warnings:
        print(f"warning: {warning}")
    save_image(result.image, args.out)
    return result
