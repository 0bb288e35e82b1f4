"""Training images: random views of training-seed scenes, rendered on the fly, with their captions."""

from __future__ import annotations

import numpy as np

from outpaint.scenes import HELD_OUT_START, View, render, scene_from_seed


def random_view(rng: np.random.Generator, aspect: float, extent: float = 1.0) -> View:
    """A view like the ones outpainting meets: the standard frame's scale give or take a zoom-out of 2,
    anywhere along x, vertically around the horizon (sky above, ground or water below). `extent` < 1
    takes that fraction of such a view (a crop at the same pixel density)."""
    height = float(rng.uniform(0.5, 2.0))
    centre_y = float(rng.uniform(0.35, 0.8)) + float(rng.uniform(-0.5, 0.5)) * height * (1 - extent)
    height *= extent
    return View(float(rng.uniform(-4.0, 4.0)), centre_y - height / 2, height * aspect, height)


def training_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, HELD_OUT_START))


def render_examples(rng: np.random.Generator, count: int, width: int, height: int,
                    native_px: int | None = None) -> tuple[np.ndarray, list[str]]:
    """`count` random views of random training scenes: (count, 3, height, width) float32 in [-1, 1]
    (the VAE's range) and each scene's caption. With `native_px`, each image is a crop of a view
    `native_px` high, so it has the pixel density of a native-size image (the VAE's small crops)."""
    extent = 1.0 if native_px is None else height / native_px
    images = np.empty((count, 3, height, width), np.float32)
    captions = []
    for i in range(count):
        scene = scene_from_seed(training_seed(rng))
        pixels = render(scene, width, height, random_view(rng, width / height, extent))
        images[i] = pixels.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
        captions.append(scene.caption())
    return images, captions

