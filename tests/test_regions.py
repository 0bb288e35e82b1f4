"""Latent boxes around the outpainting mask: bounding boxes, context margins, UNet alignment."""

from __future__ import annotations

import numpy as np

from outpaint.engine import canvas as cv
from outpaint.engine.regions import Box, active_box, grow, regenerate_box


def test_active_box_is_the_tight_bounding_box():
    grid = np.zeros((10, 12), bool)
    grid[2:5, 7:9] = True
    assert active_box(grid) == Box(2, 5, 7, 9)
    assert active_box(np.zeros((3, 3), bool)) is None


def test_grow_adds_margin_rounds_to_multiple_and_stays_inside():
    assert grow(Box(2, 5, 7, 9), margin=1, multiple=1, height=10, width=12) == Box(1, 6, 6, 10)
    # Width 2 + 2 margins = 6 -> 8 cells; there is no room to the right, so the box grows left.
    assert grow(Box(0, 8, 10, 12), margin=2, multiple=8, height=8, width=12) == Box(0, 8, 4, 12)
    # A box that would exceed the grid becomes the whole grid.
    assert grow(Box(0, 8, 1, 11), margin=2, multiple=8, height=8, width=12) == Box(0, 8, 0, 12)


def test_regenerate_box_of_a_left_half_source_covers_the_right_half_and_band():
    source = cv.SourceImage(rgb=np.zeros((512, 256, 3), np.uint8), known=np.ones((512, 256), bool))
    canvas = cv.make_canvas(source, width=512, height=512, mask_expand=8)
    mask = cv.latent_mask(canvas.mask)
    box = regenerate_box(mask, margin=0)
    assert box == Box(0, 64, 31, 64)  # the 8-pixel band reaches into latent column 31
    unet_box = regenerate_box(mask, margin=7, multiple=8)
    assert unet_box == Box(0, 64, 24, 64) and unet_box.width % 8 == 0
    ys, xs = unet_box.pixels()
    assert (ys.start, ys.stop, xs.start, xs.stop) == (0, 512, 192, 512)
    # Every pixel that is not kept exactly (mask > 0) lies in the box.
    outside = np.ones((512, 512), bool)
    outside[box.pixels()] = False
    assert not (canvas.mask[outside] > 0).any()


def test_nothing_to_regenerate_gives_the_whole_grid():
    assert regenerate_box(np.zeros((1, 1, 4, 6), np.float32), margin=2) == Box(0, 4, 0, 6)
