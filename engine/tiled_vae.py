"""Tiled VAE encode and decode: a canvas larger than a tile (in area) run through the VAE in
overlapping tiles, blended linearly where they overlap, so the VAE's activations are at most those of
one tile. For SD 1.5 at 1024x1024 in bf16 the decoder's would be 2.3 GiB, the encoder's 1.5 GiB, on
top of the 4.5 GiB a server holds between requests.

Fast-path levers (`FastPathOptions.decode_tile`, `.encode_tile`), because they change pixels: each
tile's GroupNorms see only that tile, and its attention only the tile's cells. The blend hides the
tiles' borders; what it costs in the picture is measured on the quality benchmark (docs/quality.md,
"Tiled VAE"), the memory it saves in benchmarks/RESULTS.md ("Memory"). diffusers'
`enable_vae_tiling` does the same, with 512 px tiles and a quarter of a tile's overlap, blending the
encoder's tiles in latent space as here.
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


def _axis_weights(starts: list[int], tile: int, size: int, scale: int) -> list[np.ndarray]:
    """Per tile, (min(tile, size) * scale,) float32 weights along one axis, `scale` samples a latent
    cell (8 for the decoder's pixels, 1 for the encoder's latents): a linear ramp over each overlap
    with a neighbour, 1 elsewhere. The ramps of two neighbours sum to 1 on their overlap, so the
    weights of all tiles sum to 1 at every sample."""
    extent = min(tile, size) * scale
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(extent, np.float32)
        if i > 0:
            ramp = (starts[i - 1] + tile - start) * scale
            w[:ramp] = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        if i + 1 < len(starts):
            ramp = (start + tile - starts[i + 1]) * scale
            w[extent - ramp:] = (np.arange(ramp, 0, -1, dtype=np.float32) - 0.5) / ramp
        weights.append(w)
    return weights


def _check(tile: int, overlap: int) -> None:
    if not 0 <= overlap < tile:
        raise ValueError(f"the overlap must be from 0 to tile - 1 cells, got {overlap} for tile {tile}")


def _blend_tiles(
    run: Callable[[np.ndarray], np.ndarray],
    grid: tuple[int, int],  # (h, w) latent cells of the whole canvas
    tile: int,
    overlap: int,
    cut: Callable[[int, int, int, int], np.ndarray],  # (y, x, th, tw) cells -> the tile's input
    out_channels: int,
    scale: int,  # output samples per latent cell
) -> np.ndarray:
    """(1, out_channels, h * scale, w * scale) float32: `run` over every tile, blended."""
    h, w = grid
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    wy, wx = _axis_weights(ys, tile, h, scale), _axis_weights(xs, tile, w, scale)
    out = np.zeros((1, out_channels, h * scale, w * scale), np.float32)
    th, tw = min(tile, h), min(tile, w)
    for y, row_weight in zip(ys, wy, strict=True):
        for x, col_weight in zip(xs, wx, strict=True):
            piece = run(np.ascontiguousarray(cut(y, x, th, tw)))
            oy, ox = y * scale, x * scale
            out[:, :, oy:oy + th * scale, ox:ox + tw * scale] += piece * row_weight[:, None] * col_weight[None, :]
    return out


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray],  # (1, 4, th, tw) latents -> (1, 3, 8th, 8tw) float32
    latents: np.ndarray,  # (1, 4, h, w) float32, already divided by the scaling factor
    tile: int,
    overlap: int,
) -> np.ndarray:
    """(1, 3, 8h, 8w) float32: `latents` decoded in tiles of at most `tile` x `tile` cells that overlap
    by at least `overlap` cells, blended. Decodes in one piece when the canvas is no larger than one
    tile in area: the decoder's memory follows the area, so such a canvas costs no more than a tile."""
    _check(tile, overlap)
    h, w = latents.shape[2:]
    if h * w <= tile * tile:
        return decode(latents)
    return _blend_tiles(decode, (h, w), tile, overlap,
                        lambda y, x, th, tw: latents[:, :, y:y + th, x:x + tw], 3, LATENT_FACTOR)


def encode_tiled(
    encode: Callable[[np.ndarray], np.ndarray],  # (1, 3, 8th, 8tw) image -> (1, C, th, tw) float32 latents
    image: np.ndarray,  # (1, 3, H, W) float32 model image, H and W multiples of 8
    tile: int,
    overlap: int,
    latent_channels: int = 4,
) -> np.ndarray:
    """(1, latent_channels, H/8, W/8) float32: `image` encoded in tiles of at most `tile` x `tile`
    latent cells (8 * tile pixels a side) that overlap by at least `overlap` cells, the tiles' latents
    blended. Encodes in one piece when the canvas is no larger than one tile in area."""
    _check(tile, overlap)
    h, w = image.shape[2] // LATENT_FACTOR, image.shape[3] // LATENT_FACTOR
    if h * w <= tile * tile:
        return encode(image)

    def cut(y: int, x: int, th: int, tw: int) -> np.ndarray:
        f = LATENT_FACTOR
        return image[:, :, y * f:(y + th) * f, x * f:(x + tw) * f]

    return _blend_tiles(encode, (h, w), tile, overlap, cut, latent_channels, 1)
