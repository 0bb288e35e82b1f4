"""Canvases well past the model's native size: compose at native size, upscale, refine at full size.

SD 1.5 was trained at 512 px. Asked for a canvas several times that, its UNet composes each
native-sized part of the latent on its own: two suns, a second horizon, a subject repeated (the
benchmark's large-canvas case shows it on the model trained here, docs/quality.md). The "upscale"
strategy keeps the composition global and the detail native:

1. The placed canvas (source pixels and their known mask) is downsampled to the native area
   (`native_canvas_size`), keeping the aspect ratio and the 64 px grid.
2. That small canvas is outpainted with the request's own prompt, seed and settings: one coherent
   composition at the size the model knows.
3. Its result is upscaled (Lanczos) to the full canvas and becomes the infill of the unknown area.
4. The full canvas is denoised from that infill at `refine_strength` (img2img, with the usual
   masked blending and paste-back): the small pass sets the layout, the refine adds full-resolution
   detail and ties the new area to the full-resolution source. At strength 0 the upscale is pasted
   back as it is.

`threshold` is the canvas area, in native areas, above which the strategy applies; both it and
`refine_strength` are measured on the quality benchmark (docs/quality.md, "Large canvases").
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from outpaint.core.errors import InvalidRequest
from outpaint.core.geometry import CANVAS_MULTIPLE

from .canvas import Canvas, SourceImage

LARGE_CANVAS_MODES = ("off", "upscale")


@dataclass(frozen=True)
class LargeCanvas:
    """When and how a canvas past the model's native size is generated (module docstring)."""

    mode: str = "upscale"
    threshold: float = 3.0  # canvas area / native area above which `mode` applies (docs/quality.md)
    refine_strength: float = 0.6  # strength of the full-size pass over the upscaled composition

    def __post_init__(self) -> None:
        if self.mode not in LARGE_CANVAS_MODES:
            raise InvalidRequest("large_canvas", f"must be one of {', '.join(LARGE_CANVAS_MODES)}, got {self.mode!r}")
        if not self.threshold >= 1.0:
            raise InvalidRequest("large_canvas_threshold",
                                 f"must be at least 1 (native areas), got {self.threshold}")
        if not 0.0 <= self.refine_strength <= 1.0:
            raise InvalidRequest("large_canvas_refine",
                                 f"must be between 0 and 1, got {self.refine_strength}")

    def applies(self, width: int, height: int, native_size: int) -> bool:
        """Whether a width x height canvas goes through the strategy (and can be made smaller)."""
        if self.mode == "off" or width * height <= self.threshold * native_size * native_size:
            return False
        small_w, small_h = native_canvas_size(width, height, native_size)
        return small_w * small_h < width * height


LARGE_CANVAS_OFF = LargeCanvas(mode="off")
LARGE_CANVAS_DEFAULT = LargeCanvas()


def _grid(pixels: float) -> int:
    return max(CANVAS_MULTIPLE, round(pixels / CANVAS_MULTIPLE) * CANVAS_MULTIPLE)


def native_canvas_size(width: int, height: int, native_size: int) -> tuple[int, int]:
    """The canvas of the same aspect ratio whose area is about native_size², on the 64 px grid."""
    ratio = math.sqrt(native_size * native_size / (width * height))
    return _grid(width * ratio), _grid(height * ratio)


def _resize(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W[, C]) float32 -> (height, width[, C]) float32, area-weighted (box) downsampling."""
    if plane.ndim == 2:
        return np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.BOX))
    return np.stack([_resize(plane[..., c], width, height) for c in range(plane.shape[2])], axis=-1)


def downsample_canvas(canvas: Canvas, width: int, height: int) -> SourceImage:
    """The placed canvas at width x height as a source of that size: source pixels averaged over the
    known part of each box (premultiplied, so the unknown area's zeros do not darken the edge);
    known only where the box was wholly known, so nothing of the unknown area counts as source."""
    known = canvas.known.astype(np.float32)
    coverage = _resize(known, width, height)
    premultiplied = _resize(canvas.rgb.astype(np.float32) * known[..., None], width, height)
    rgb = premultiplied / np.maximum(coverage, np.float32(1e-6))[..., None]
    small_known = coverage >= np.float32(1.0 - 1e-4)
    if not small_known.any():
        # A sliver of source (under one box) still anchors the composition where it covers most.
        small_known = coverage >= np.float32(0.5)
    if not small_known.any():
        raise InvalidRequest("scale", f"the source covers less than half a pixel of the {width}x{height} "
                             "native-size canvas the large-canvas strategy composes on; place it larger")
    pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    pixels[~small_known] = 0
    return SourceImage(rgb=pixels, known=small_known)


def upscale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (height, width, 3) uint8, Lanczos."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--large-canvas`, `--large-canvas-threshold`, `--large-canvas-refine` (outpaint run / serve)."""
    default = LARGE_CANVAS_DEFAULT
    parser.add_argument("--large-canvas", choices=LARGE_CANVAS_MODES, default=default.mode,
                        help="canvases well past the model's native size: compose at native size, upscale, "
                             f"refine (upscale), or denoise at full size (off) (default {default.mode}; "
                             "docs/quality.md)")
    parser.add_argument("--large-canvas-threshold", type=float, default=default.threshold,
                        help="canvas area, in native areas (native size squared, from the model), above which "
                             f"--large-canvas applies (default {default.threshold:g})")
    parser.add_argument("--large-canvas-refine", type=float, default=default.refine_strength,
                        help="strength of the full-size pass over the upscaled composition, 0 to 1 "
                             f"(default {default.refine_strength:g})")


def from_arguments(args: argparse.Namespace) -> LargeCanvas:
    try:
        return LargeCanvas(args.large_canvas, args.large_canvas_threshold, args.large_canvas_refine)
    except InvalidRequest as exc:
        raise SystemExit(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
