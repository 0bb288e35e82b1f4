"""`outpaint demo`: build the tiny random model if missing, outpaint a sample image, report the stages."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from outpaint.core.manifest import MANIFEST
from outpaint.engine.request import OutpaintRequest


def sample_image(width: int = 256, height: int = 256) -> bytes:
    """A small synthetic scene (sky gradient, sun, hills) as PNG bytes: no file to ship or download."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = (np.array([70, 130, 220]) * (1 - y) + np.array([230, 200, 160]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.6, height * 0.12, width * 0.8, height * 0.32), fill=(255, 220, 90))
    draw.polygon([(0, height), (width * 0.35, height * 0.55), (width * 0.7, height), ], fill=(60, 120, 60))
    draw.polygon([(width * 0.4, height), (width * 0.8, height * 0.6), (width, height * 0.8), (width, height)],
                 fill=(40, 95, 50))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run_demo(model: Path, out: Path, *, width: int, height: int, steps: int, seed: int) -> None:
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.run_request import save_image

    started = time.perf_counter()
    if not (model / MANIFEST).is_file():
        from outpaint.export.run import export_model

        print(f"building the tiny random-weight SD 1.5 model in {model} ...")
        export_model(None, model, random="tiny")
    export_seconds = time.perf_counter() - started

    load_started = time.perf_counter()
    pipeline = OutpaintPipeline.load(model)
    load_seconds = time.perf_counter() - load_started
    source = sample_image(width // 2, height // 2)
    request = OutpaintRequest(
        prompt="a valley with a river, golden hour", negative_prompt="blurry", num_inference_steps=steps,
        img_width=width, img_height=height, offset_x=width // 4, offset_y=height // 4, seed=seed,
    )
    result = pipeline(source, request)
    save_image(result.image, out)
    Image.open(io.BytesIO(source)).save(out.with_name(out.stem + "-source.png"))

    print(f"wrote {out} ({width}x{height}, seed {result.seed}); source at {out.with_name(out.stem + '-source.png')}")
    print("The new area is noise: the demo model's weights are random. See README for real weights.")
    rows = [("model build (first run only)", export_seconds), ("load sessions", load_seconds)]
    rows += [(stage, seconds) for stage, seconds in result.timings.items()]
    steps_ms = 1000 * float(np.median(result.step_seconds))
    for stage, seconds in rows:
        print(f"  {stage:<30} {seconds:8.3f} s")
    print(f"  {'per denoising step (median)':<30} {steps_ms / 1000:8.3f} s")
