"""`outpaint demo`: outpaint a held-out scene with the small model trained here, beside its truth.

The model (weights/scenes, trained by `outpaint train`, docs/training.md) has SD 1.5's architecture
and was trained on procedural landscapes and patterns; the demo's scene was never trained on, so the
picture shows the model continuing a scene it has not seen, next to what is really there.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from outpaint.core.manifest import MANIFEST
from outpaint.engine.request import OutpaintRequest
from outpaint.scenes import HELD_OUT_START, View, render, scene_from_seed

DEMO_SCENE = HELD_OUT_START + 3  # a held-out landscape: sun, ridges, water


def ensure_model(weights: Path, model: Path) -> float:
    """Export the trained weights to `model` unless done already; seconds it took."""
    started = time.perf_counter()
    if not (model / MANIFEST).is_file():
        from outpaint.export.run import export_model

        print(f"exporting the trained model {weights} to {model} (once, about a minute) ...")
        export_model(str(weights), model)
    return time.perf_counter() - started


def comparison(source_on_canvas: np.ndarray, result: np.ndarray, truth: np.ndarray) -> Image.Image:
    """Three panels: the source on its canvas (new area gray), the outpainting, the ground truth."""
    h, w = result.shape[:2]
    sheet = Image.new("RGB", (3 * w + 4 * 8, h + 28), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, panel) in enumerate((("source (gray: to fill)", source_on_canvas), ("outpainted", result),
                                        ("ground truth", truth))):
        sheet.paste(Image.fromarray(panel), (8 + i * (w + 8), 24))
        draw.text((8 + i * (w + 8), 6), label, fill="black")
    return sheet


def run_demo(weights: Path, model: Path, out: Path, *, width: int, height: int, steps: int, seed: int) -> None:
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.run_request import save_image

    export_seconds = ensure_model(weights, model)
    load_started = time.perf_counter()
    pipeline = OutpaintPipeline.load(model)
    load_seconds = time.perf_counter() - load_started

    # The source is the middle half of the canvas; the truth is the whole canvas of the same scene.
    scene = scene_from_seed(DEMO_SCENE)
    canvas_view = View.standard(width, height)
    truth = render(scene, width, height, canvas_view)
    x0, y0 = width // 4, 0
    source = truth[y0:, x0:x0 + width // 2].copy()
    request = OutpaintRequest(prompt=scene.caption(), num_inference_steps=steps, img_width=width, img_height=height,
                              offset_x=x0, offset_y=y0, seed=seed)
    from outpaint.engine.canvas import SourceImage

    result = pipeline(SourceImage(rgb=source, known=np.ones(source.shape[:2], bool)), request)
    save_image(result.image, out)
    placed = np.full_like(truth, 128)
    placed[y0:, x0:x0 + width // 2] = source
    compare = out.with_name(out.stem + "-compare.jpg")
    comparison(placed, result.image, truth).save(compare, quality=92)

    print(f"wrote {out} ({width}x{height}, seed {result.seed}, prompt {request.prompt!r}) and {compare}")
    print("The model is SD 1.5's architecture trained here on procedural scenes, not SD 1.5's knowledge:")
    print("it continues skies, ridges, water and patterns; see README, 'The small trained model'.")
    rows = [("model export (first run only)", export_seconds), ("load sessions", load_seconds)]
    rows += [(stage, seconds) for stage, seconds in result.timings.items()]
    for stage, seconds in rows:
        print(f"  {stage:<30} {seconds:8.3f} s")
    print(f"  {'per denoising step (median)':<30} {float(np.median(result.step_seconds)):8.3f} s")
