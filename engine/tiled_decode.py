"""Tiled VAE decode: a canvas larger than a tile (in area) decoded in overlapping tiles, blended
linearly where they overlap, so the decoder's activations (2.3 GiB for SD 1.5 at 1024x1024) are at
most those of one tile.

A fast-path lever (`FastPathOptions.decode_tile`), because it changes pixels: each tile's GroupNorms
see only that tile, and its attention only the tile's cells. The blend hides the tiles' borders; what
it costs in the picture is measured on the quality benchmark (docs/quality.md, "The 9-channel
inpainting model and the tiled decode"), the memory it saves in benchmarks/RESULTS.md ("Memory").
diffusers' `enable_vae_tiling` does the same with 512 px tiles and a quarter of a tile's overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from outpaint.core.geometry import LATENT_FACTOR


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles of one axis begin (latent cells): as few tiles of `tile` cells as overlap by at
    least `overlap`, spread evenly from 0 to size - tile. One tile when the axis fits in one."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _axis_weights(starts: list[int], tile: int, size: int) -> list[np.ndarray]:
    """Per tile, (min(tile, size) * 8,) float32 pixel weights along one axis: a linear ramp over each
    overlap with a neighbour, 1 elsewhere. The ramps of two neighbours sum to 1 on their overlap, so
    the weights of all tiles sum to 1 at every pixel."""
    extent = min(tile, size) * LATENT_FACTOR
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(extent, np.float32)
        if i > 0:
            ramp = (starts[i - 1] + tile - start) * LATENT_FACTOR
            w[:ramp] = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        if i + 1 < len(starts):
            ramp = (start + tile - starts[i + 1]) * LATENT_FACTOR
            w[extent - ramp:] = (np.arange(ramp, 0, -1, dtype=np.float32) - 0.5) / ramp
        weights.append(w)
    return weights


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray],  # (1, 4, th, tw) latents -> (1, 3, 8th, 8tw) float32
    latents: np.ndarray,  # (1, 4, h, w) float32, already divided by the scaling factor
    tile: int,
    overlap: int,
) -> np.ndarray:
    """(1, 3, 8h, 8w) float32: `latents` decoded in tiles of at most `tile` x `tile` cells that overlap
    by at least `overlap` cells, blended. Decodes in one piece when the canvas is no larger than one
    tile in area: the decoder's memory follows the area, so such a canvas costs no more than a tile."""
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap must be from 0 to tile - 1 cells, got {overlap} for tile {tile}")
    h, w = latents.shape[2:]
    if h * w <= tile * tile:
        return decode(latents)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy, wx = _axis_weights(ys, tile, h), _axis_weights(xs, tile, w)
    out = np.zeros((1, 3, h * LATENT_FACTOR, w * LATENT_FACTOR), np.float32)
    th, tw = min(tile, h), min(tile, w)
    for y, row_weight in zip(ys, wy, strict=True):
        for x, col_weight in zip(xs, wx, strict=True):
            piece = decode(np.ascontiguousarray(latents[:, :, y:y + th, x:x + tw]))
            py, px = y * LATENT_FACTOR, x * LATENT_FACTOR
            out[:, :, py:py + th * LATENT_FACTOR, px:px + tw * LATENT_FACTOR] += (
                piece * row_weight[:, None] * col_weight[None, :])
    return out
