"""Panoramas: extend an image left and right, one window-sized outpaint at a time, to any width.

The source is scaled to the panorama's height (the request's img_height). Each outpaint is a canvas of
the request's img_width (the model's native width suits it best): `context` pixels of the panorama's
edge on one side, `chunk` new pixels on the other. The new chunk and the re-blended band of the
context (`mask_expand` px) replace the panorama's edge; every other pixel the panorama already had,
the source's included, stays as it was. Sides alternate so that the source ends up in the middle.

`plan_panorama` computes every window from the sizes alone, without the model: the HTTP service
charges the number of outpaints it lists before any runs, and `panorama` runs exactly that list.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from outpaint.core.errors import InvalidRequest
from outpaint.core.geometry import CANVAS_MULTIPLE

from .canvas import SourceImage
from .loop import StepEvent
from .pipeline import Outpainter, OutpaintResult, draw_seed, run_to_result
from .request import SEED_MAX, OutpaintRequest

MAX_PANORAMA_WIDTH = 16384


@dataclass(frozen=True)
class PanWindow:
    """One outpaint of a panorama: `context` columns of the panorama's edge on `side`, `new` columns beyond."""

    side: Literal["left", "right"]
    context: int
    new: int

    @property
    def canvas_width(self) -> int:
        return self.context + self.new


@dataclass(frozen=True)
class PanPlan:
    """Every outpaint of a panorama, in order, and where the result is cut from the grown image."""

    windows: tuple[PanWindow, ...]
    crop_left: int  # columns the left side grew past what it wanted (a rounded-up canvas): cut off
    source_columns: tuple[int, int]  # [start, stop) of the source in the final panorama


def fitted_width(source_width: int, source_height: int, height: int) -> int:
    """The source's width once scaled to the panorama's height."""
    return max(1, round(source_width * height / source_height))


def plan_panorama(source_width: int, window: int, width: int, chunk: int | None = None) -> PanPlan:
    """The outpaints that grow a `source_width`-wide image (already at the panorama's height) to
    `width` with windows of `window` columns adding `chunk` new ones each (default window / 2).

    Raises InvalidRequest naming `chunk` or `width` when they cannot work.
    """
    chunk = window // 2 if chunk is None else chunk
    if not CANVAS_MULTIPLE <= chunk <= window - CANVAS_MULTIPLE:
        raise InvalidRequest("chunk", f"must be between {CANVAS_MULTIPLE} and the window ({window}) less "
                             f"{CANVAS_MULTIPLE}, so that each outpaint sees some of the panorama; got {chunk}")
    if not source_width < width <= MAX_PANORAMA_WIDTH:
        raise InvalidRequest("width", f"must be wider than the source at the panorama's height "
                             f"({source_width} px) and at most {MAX_PANORAMA_WIDTH}, got {width}")
    # Columns still to add on each side; the left gets the smaller half.
    want = {"left": (width - source_width) // 2, "right": width - source_width - (width - source_width) // 2}
    overshoot = {"left": 0, "right": 0}  # columns a rounded-up canvas made past what a side wanted
    grown, source_start = source_width, 0  # the image's width so far, the source's first column in it
    windows = []
    while want["left"] > 0 or want["right"] > 0:
        side: Literal["left", "right"] = "right" if want["right"] >= want["left"] else "left"
        new = min(chunk, want[side])
        context = min(window - new, grown)
        canvas_w = min(window, -(-(context + new) // CANVAS_MULTIPLE) * CANVAS_MULTIPLE)
        new = canvas_w - context  # a narrow start rounds the canvas up: take what it makes
        windows.append(PanWindow(side, context, new))
        grown += new
        if side == "left":
            source_start += new
        overshoot[side] += max(0, new - want[side])
        want[side] = max(0, want[side] - new)
    start = source_start - overshoot["left"]
    return PanPlan(tuple(windows), overshoot["left"], (start, start + source_width))


def fit_to_height(source: SourceImage, height: int) -> np.ndarray:
    """(height, w, 3) uint8: the opaque source scaled to the panorama's height."""
    check_opaque(source)
    h, w = source.known.shape
    return np.asarray(Image.fromarray(source.rgb).resize((fitted_width(w, h, height), height),
                                                         Image.Resampling.LANCZOS))


def check_opaque(source: SourceImage) -> None:
    if not source.known.all():
        raise InvalidRequest("image", "a panorama starts from an opaque image: this one has transparent pixels")


def panorama(
    pipeline: Outpainter,
    source: SourceImage,
    template: OutpaintRequest,
    width: int,
    chunk: int | None = None,
    on_step: Callable[[int, StepEvent], None] | None = None,
) -> tuple[np.ndarray, tuple[int, int], list[OutpaintResult]]:
    """A (template.img_height, width, 3) uint8 panorama, the [start, stop) columns the source fills
    in it (every source pixel there is kept but the band of the first outpaint on each side), and
    each outpaint's result (one per window of `plan_panorama`).

    `chunk`: new pixels per outpaint (default half the window, img_width / 2). Outpaint k runs with
    seed `template.seed + k` (one seed drawn for all when it is -1).
    """
    check_opaque(source)
    h, w = source.known.shape
    plan = plan_panorama(fitted_width(w, h, template.img_height), template.img_width, width, chunk)
    image = fit_to_height(source, template.img_height)
    first_seed = draw_seed() if template.seed == -1 else template.seed
    results = []
    for k, step in enumerate(plan.windows):
        context, new = step.context, step.new
        edge = image[:, image.shape[1] - context:] if step.side == "right" else image[:, :context]
        request = dataclasses.replace(
            template, img_width=step.canvas_width, scale=1.0, offset_y=0,
            offset_x=0 if step.side == "right" else new, seed=(first_seed + k) % (SEED_MAX + 1),
        )
        window = SourceImage(rgb=np.ascontiguousarray(edge), known=np.ones(edge.shape[:2], bool))
        result = run_to_result(pipeline, window, request, None if on_step is None else functools.partial(on_step, k))
        if step.side == "right":
            image = np.concatenate([image[:, :image.shape[1] - context], result.image], axis=1)
        else:
            image = np.concatenate([result.image, image[:, context:]], axis=1)
        results.append(result)
    left = plan.crop_left
    return image[:, left:left + width], plan.source_columns, results
