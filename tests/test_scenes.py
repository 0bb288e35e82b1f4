"""Procedural scenes: deterministic by seed, the same picture at any size, a crop of the canvas is
the scene rendered on the crop's view (the ground truth beyond any source), held-out seeds apart."""

from __future__ import annotations

import numpy as np
import pytest

from outpaint.scenes import (
    HELD_OUT_START,
    View,
    held_out_seeds,
    is_held_out,
    render,
    scene_from_seed,
    training_seeds,
)
from outpaint.scenes.landscape import Landscape
from outpaint.scenes.patterns import Pattern

SEEDS = range(40)


def test_a_seed_always_gives_the_same_scene_and_seeds_differ():
    first = [render(scene_from_seed(s), 96, 64) for s in range(8)]
    again = [render(scene_from_seed(s), 96, 64) for s in range(8)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len({a.tobytes() for a in first}) == 8


def test_both_kinds_occur_with_captions_from_their_parameters():
    scenes = [scene_from_seed(s) for s in SEEDS]
    landscapes = [s for s in scenes if isinstance(s, Landscape)]
    patterns = [s for s in scenes if isinstance(s, Pattern)]
    assert landscapes and patterns
    for scene in landscapes:
        caption = scene.caption()
        assert ("lake" in caption) == scene.water
        assert {r.colour for r in scene.ridges} <= set(caption.replace(",", " ").split())
    for scene in patterns:
        assert all(colour in scene.caption() for colour in scene.colours)


@pytest.mark.parametrize("seed", list(SEEDS)[:12])
def test_a_crop_of_the_canvas_is_the_scene_on_the_crops_view(seed):
    """What outpainting is scored against: the canvas's pixels outside a source are the scene's."""
    scene = scene_from_seed(seed)
    canvas_view = View(-0.5, 0.0, 2.0, 1.0)
    canvas = render(scene, 512, 256, canvas_view)
    source = render(scene, 256, 128, canvas_view.crop(0.25, 0.25, 0.5, 0.5))
    difference = np.abs(canvas[64:192, 128:384].astype(int) - source.astype(int))
    assert difference.max() <= 1, difference.max()  # float rounding of the pixel centres at most


@pytest.mark.parametrize("seed", list(SEEDS)[:12])
def test_any_size_shows_the_same_picture(seed):
    scene = scene_from_seed(seed)
    small = render(scene, 128, 96).astype(np.float32)
    large = render(scene, 512, 384).astype(np.float32)
    downsampled = large.reshape(96, 4, 128, 4, 3).mean(axis=(1, 3))
    assert np.abs(downsampled - small).mean() < 4.0


def test_landscapes_go_on_beyond_the_frame_without_repeating():
    scene = next(s for s in map(scene_from_seed, SEEDS) if isinstance(s, Landscape))
    here = render(scene, 128, 128, View(0.0, 0.0, 1.0, 1.0))
    far = render(scene, 128, 128, View(37.0, 0.0, 1.0, 1.0))
    assert here.shape == far.shape and not np.array_equal(here, far)
    above = render(scene, 64, 64, View(0.0, -1.0, 1.0, 1.0))  # above the standard frame: sky
    assert above.std(axis=(0, 1)).max() < 40


def test_held_out_seeds_are_never_training_seeds():
    assert all(is_held_out(s) for s in held_out_seeds(50))
    assert not any(is_held_out(s) for s in training_seeds(1000))
    with pytest.raises(ValueError, match="reaches past"):
        training_seeds(10, start=HELD_OUT_START - 5)
    with pytest.raises(ValueError):
        scene_from_seed(-1)
