"""Unlimited zoom-out: chained outpaints, each one pushing the previous image deeper into the canvas.

Keyframe 0 is the source fitted to the canvas (cover, centre crop). Keyframe k is an outpaint of
keyframe k-1 placed at `scale` (0.5: half size) in the middle of a canvas of the same size, so
outside its blend band (`mask_expand` px along the inner edge) keyframe k's centre is keyframe k-1
resized, pixel for pixel: paste-back returns every source pixel past the band untouched.

The video (`render_zoom`) flies from keyframe 0 out to the last one. A frame at zoom level z (0 at
the start, k at keyframe k) shows the middle of keyframe ceil(z), and over its centre the inner
keyframes at their higher resolution, each inset by its band: where the two overlap they hold the
same picture, so the inner ones only add detail, and at every integer z the frame is exactly that
keyframe with the earlier ones inside it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from outpaint.core.errors import InvalidRequest

from .canvas import SourceImage, scaled_size
from .loop import StepEvent
from .pipeline import Outpainter, OutpaintResult, draw_seed, run_to_result
from .request import SEED_MAX, OutpaintRequest

ZOOM_SCALE_RANGE = (0.25, 0.9)
MAX_ZOOM_STEPS = 64


def check_opaque(source: SourceImage) -> None:
    if not source.known.all():
        raise InvalidRequest("image", "a zoom starts from an opaque image: this one has transparent pixels")


def video_frames(steps: int, frames_per_step: int) -> int:
    """How many frames `zoom_video` yields for `steps` zoom-outs."""
    return steps * frames_per_step + 1


def fit_to_canvas(source: SourceImage, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: the source scaled to cover the canvas and centre-cropped."""
    check_opaque(source)
    h, w = source.known.shape
    cover = max(width / w, height / h)
    box_w, box_h = width / cover, height / cover
    left, top = (w - box_w) / 2, (h - box_h) / 2
    resized = Image.fromarray(source.rgb).resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h)
    )
    return np.asarray(resized)


def zoom_request(template: OutpaintRequest, scale: float) -> OutpaintRequest:
    """`template` with the previous keyframe placed at `scale` in the middle of the same canvas."""
    width, height = template.img_width, template.img_height
    inner_w, inner_h = scaled_size(width, height, scale)
    return dataclasses.replace(template, scale=scale, offset_x=(width - inner_w) // 2,
                               offset_y=(height - inner_h) // 2)


def zoom_keyframes(
    pipeline: Outpainter,
    source: SourceImage,
    template: OutpaintRequest,
    steps: int,
    scale: float = 0.5,
    on_step: Callable[[int, StepEvent], None] | None = None,
) -> tuple[list[np.ndarray], list[OutpaintResult]]:
    """Keyframe 0 (the fitted source) and `steps` zoom-outs; and each outpaint's result.

    Outpaint k runs with seed `template.seed + k` (one seed drawn for all when it is -1), so a zoom
    is reproducible from its first seed. `on_step(k, event)` reports progress of outpaint k (0-based).
    """
    if not 1 <= steps <= MAX_ZOOM_STEPS:
        raise InvalidRequest("steps", f"must be between 1 and {MAX_ZOOM_STEPS}, got {steps}")
    low, high = ZOOM_SCALE_RANGE
    if not low <= scale <= high:
        raise InvalidRequest("scale", f"a zoom step's scale must be between {low} and {high}, got {scale}")
    first_seed = draw_seed() if template.seed == -1 else template.seed
    frames = [fit_to_canvas(source, template.img_width, template.img_height)]
    results = []
    for k in range(steps):
        request = zoom_request(dataclasses.replace(template, seed=(first_seed + k) % (SEED_MAX + 1)), scale)
        previous = SourceImage(rgb=frames[-1], known=np.ones(frames[-1].shape[:2], bool))
        result = run_to_result(pipeline, previous, request, None if on_step is None else functools.partial(on_step, k))
        frames.append(result.image)
        results.append(result)
    return frames, results


def _inner_box(width: int, height: int, scale: float) -> tuple[int, int, int, int]:
    """Where zoom_request puts the previous keyframe: (x0, y0, x1, y1) in the next one's pixels."""
    inner_w, inner_h = scaled_size(width, height, scale)
    x0, y0 = (width - inner_w) // 2, (height - inner_h) // 2
    return x0, y0, x0 + inner_w, y0 + inner_h


def render_zoom(keyframes: list[np.ndarray], z: float, scale: float = 0.5, band: int = 8) -> np.ndarray:
    """The video frame at zoom level z in [0, len(keyframes) - 1]; (H, W, 3) uint8 (module docstring).

    `band` is the outpaints' mask_expand: the ring of each keyframe's inner box that was blended,
    which the inner keyframe does not cover.
    """
    last = len(keyframes) - 1
    if not 0.0 <= z <= last:
        raise ValueError(f"zoom level {z} is outside [0, {last}]")
    height, width = keyframes[0].shape[:2]
    outer = math.ceil(z)
    # Size of the view in the outer keyframe's pixels: the whole at z == outer, its inner box at outer - 1.
    view = scale ** (outer - z)
    frame = _view(keyframes[outer], view, width, height)
    # Each inner keyframe j sits in a centred box scale**(outer - j) of the outer one; on screen that
    # is scale**(outer - j) / view of the frame.
    for j in range(outer - 1, -1, -1):
        size = scale ** (outer - j) / view
        box_w, box_h = width * size, height * size
        if box_w < 4 or box_h < 4:
            break
        # The inner keyframe's own pixels that the next keyframe kept exactly: all but its band.
        inset = math.ceil(band / scale) + 1
        if 2 * inset >= min(width, height):
            break
        left, top = (width - box_w) / 2, (height - box_h) / 2
        x0, y0 = left + inset * size, top + inset * size
        x1, y1 = left + box_w - inset * size, top + box_h - inset * size
        px0, py0, px1, py1 = math.ceil(x0), math.ceil(y0), math.floor(x1), math.floor(y1)
        if px1 <= px0 or py1 <= py0:
            break
        # Source box in keyframe j's pixels of the whole screen pixels [px0, px1) x [py0, py1).
        sx0, sy0 = (px0 - left) / size, (py0 - top) / size
        sx1, sy1 = (px1 - left) / size, (py1 - top) / size
        patch = Image.fromarray(keyframes[j]).resize(
            (px1 - px0, py1 - py0), Image.Resampling.LANCZOS, box=(sx0, sy0, sx1, sy1)
        )
        frame[py0:py1, px0:px1] = np.asarray(patch)
    return frame


def _view(image: np.ndarray, view: float, width: int, height: int) -> np.ndarray:
    """The centred `view` fraction of `image`, resized to width x height (a copy at view 1)."""
    if view >= 1.0:
        return image.copy()
    box_w, box_h = width * view, height * view
    left, top = (width - box_w) / 2, (height - box_h) / 2
    resized = Image.fromarray(image).resize(
        (width, height), Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h)
    )
    return np.array(resized)


def zoom_video(
    keyframes: list[np.ndarray], frames_per_step: int, scale: float = 0.5, band: int = 8
) -> Iterator[np.ndarray]:
    """Every frame of the zoom from keyframe 0 out to the last, `frames_per_step` per keyframe.

    Frame i is at zoom level log-linear in time (a constant zoom speed): i / frames_per_step."""
    if frames_per_step < 1:
        raise InvalidRequest("frames_per_step", f"must be at least 1, got {frames_per_step}")
    for i in range(video_frames(len(keyframes) - 1, frames_per_step)):
        yield render_zoom(keyframes, i / frames_per_step, scale, band)
