"""Panoramas: extend an image left and right, one window-sized outpaint at a time, to any width.

The source is scaled to the panorama's height (the request's img_height). Each outpaint is a canvas of
the request's img_width (the model's native width suits it best): `context` pixels of the panorama's
edge on one side, `chunk` new pixels on the other. The new chunk and the re-blended band of the
context (`mask_expand` px) replace the panorama's edge; every other pixel the panorama already had,
the source's included, stays as it was. Sides alternate so that the source ends up in the middle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image

from outpaint.core.errors import InvalidRequest
from outpaint.core.geometry import CANVAS_MULTIPLE

from .canvas import SourceImage
from .loop import StepEvent
from .pipeline import Outpainter, OutpaintResult, draw_seed
from .request import SEED_MAX, OutpaintRequest

MAX_PANORAMA_WIDTH = 16384


def fit_to_height(source: SourceImage, height: int) -> np.ndarray:
    """(height, w, 3) uint8: the opaque source scaled to the panorama's height."""
    if not source.known.all():
        raise InvalidRequest("image", "a panorama starts from an opaque image: this one has transparent pixels")
    h, w = source.known.shape
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(source.rgb).resize((width, height), Image.Resampling.LANCZOS))


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
    each outpaint's result.

    `chunk`: new pixels per outpaint (default half the window, img_width / 2). Outpaint k runs with
    seed `template.seed + k` (one seed drawn for all when it is -1).
    """
    window, height = template.img_width, template.img_height
    chunk = window // 2 if chunk is None else chunk
    if not CANVAS_MULTIPLE <= chunk <= window - CANVAS_MULTIPLE:
        raise InvalidRequest("chunk", f"must be between {CANVAS_MULTIPLE} and the window ({window}) less "
                             f"{CANVAS_MULTIPLE}, so that each outpaint sees some of the panorama; got {chunk}")
    image = fit_to_height(source, height)
    if not image.shape[1] < width <= MAX_PANORAMA_WIDTH:
        raise InvalidRequest("width", f"must be wider than the source at the panorama's height "
                             f"({image.shape[1]} px) and at most {MAX_PANORAMA_WIDTH}, got {width}")
    first_seed = draw_seed() if template.seed == -1 else template.seed
    # Columns still to add on each side; the left gets the smaller half.
    want = {"left": (width - image.shape[1]) // 2, "right": width - image.shape[1] - (width - image.shape[1]) // 2}
    overshoot = {"left": 0, "right": 0}  # columns a rounded-up canvas made past what a side wanted
    source_start, source_width = 0, image.shape[1]  # the source's columns in the panorama
    results = []
    k = 0
    while want["left"] > 0 or want["right"] > 0:
        side = "right" if want["right"] >= want["left"] else "left"
        new = min(chunk, want[side])
        context = min(window - new, image.shape[1])
        canvas_w = min(window, -(-(context + new) // CANVAS_MULTIPLE) * CANVAS_MULTIPLE)
        new = canvas_w - context  # a narrow start rounds the canvas up: take what it makes
        edge = image[:, image.shape[1] - context:] if side == "right" else image[:, :context]
        request = dataclasses.replace(
            template, img_width=canvas_w, scale=1.0, offset_y=0, offset_x=0 if side == "right" else new,
            seed=(first_seed + k) % (SEED_MAX + 1),
        )
        result = None
        for item in pipeline.generate(SourceImage(rgb=np.ascontiguousarray(edge), known=np.ones(edge.shape[:2], bool)),
                                      request):
            if isinstance(item, StepEvent):
                if on_step is not None:
                    on_step(k, item)
            else:
                result = item
        assert result is not None, "a generation ends with its result"
        if side == "right":
            image = np.concatenate([image[:, :image.shape[1] - context], result.image], axis=1)
        else:
            image = np.concatenate([result.image, image[:, context:]], axis=1)
            source_start += new
        overshoot[side] += max(0, new - want[side])
        want[side] = max(0, want[side] - new)
        results.append(result)
        k += 1
    left = overshoot["left"]
    start = source_start - left
    return image[:, left:left + width], (start, start + source_width), results

