"""Pixel-space geometry of outpainting: decode, place, mask, infill, latent mask, paste-back.

Conventions: images are (H, W, 3) uint8 RGB; masks are (H, W) with 1 = regenerate, 0 = keep.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from outpaint.core.errors import InvalidImage, InvalidRequest
from outpaint.core.geometry import LATENT_FACTOR

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096
INFILL_MODES = ("pushpull", "gray", "noise")


@dataclass(frozen=True)
class SourceImage:
    """A decoded source: RGB pixels and which of them are known (alpha > 0)."""

    rgb: np.ndarray  # (h, w, 3) uint8
    known: np.ndarray  # (h, w) bool


@dataclass(frozen=True)
class Canvas:
    """The source placed on the output canvas, and everything derived from the placement."""

    rgb: np.ndarray  # (H, W, 3) uint8, source pixels where known, 0 elsewhere
    known: np.ndarray  # (H, W) bool, True where a source pixel landed
    mask: np.ndarray  # (H, W) float32, 1 = regenerate (new area + band), 0 = keep
    alpha: np.ndarray  # (H, W) float32, paste-back weight of the source: 1 keep, 0 new, ramp in band

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> SourceImage:
    """Decode PNG/JPEG/WebP bytes, apply EXIF orientation, keep fully transparent pixels as unknown.

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # PIL refuses at open() past twice its own limit: too large
        raise InvalidImage(f"declares more pixels than the limit of {max_pixels}", too_large=True) from None
    except Exception as exc:  # PIL raises several unrelated types for junk input
        raise InvalidImage(f"is not a decodable image ({type(exc).__name__}); send PNG, JPEG or WebP") from None
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidImage(f"format {image.format} is not accepted; send PNG, JPEG or WebP")
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}",
            too_large=True,
        )
    try:
        image = ImageOps.exif_transpose(image)
        image.load()
    except Exception as exc:
        raise InvalidImage(f"could not be decoded ({type(exc).__name__}: {exc})") from None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        return SourceImage(rgb=np.ascontiguousarray(rgba[..., :3]), known=rgba[..., 3] > 0)
    rgb = np.asarray(image.convert("RGB"))
    return SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], dtype=bool))


def _resize(source: SourceImage, scale: float) -> SourceImage:
    if scale == 1.0:
        return source
    h, w = source.known.shape
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = Image.fromarray(source.rgb).resize((new_w, new_h), Image.Resampling.LANCZOS)
    known = Image.fromarray(source.known).resize((new_w, new_h), Image.Resampling.NEAREST)
    return SourceImage(rgb=np.asarray(rgb), known=np.asarray(known))


def place(
    source: SourceImage, *, width: int, height: int, scale: float, offset_x: int, offset_y: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize the source by `scale`, put its top-left at (offset_x, offset_y), crop to the canvas.

    Returns (rgb (H, W, 3) uint8, known (H, W) bool). A source that misses the canvas entirely
    is an error: there would be nothing to outpaint from.
    """
    scaled = _resize(source, scale)
    h, w = scaled.known.shape
    x0, y0 = offset_x, offset_y
    x1, y1 = min(width, x0 + w), min(height, y0 + h)
    if x0 >= width or y0 >= height or x1 <= x0 or y1 <= y0:
        raise InvalidRequest(
            "offset_x" if x0 >= width else "offset_y",
            f"the source ({w}x{h} after scale {scale}) placed at ({x0}, {y0}) does not overlap "
            f"the {width}x{height} canvas; offsets must be below the canvas size",
        )
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    known = np.zeros((height, width), dtype=bool)
    rgb[y0:y1, x0:x1] = scaled.rgb[: y1 - y0, : x1 - x0]
    known[y0:y1, x0:x1] = scaled.known[: y1 - y0, : x1 - x0]
    if not known.any():
        raise InvalidRequest("image", "no opaque source pixel lands on the canvas")
    rgb[~known] = 0
    return rgb, known


def distance_to_unknown(known: np.ndarray) -> np.ndarray:
    """Chessboard distance (pixels) of every pixel to the nearest unknown one; 0 on unknown pixels.

    Where nothing is unknown the distance is effectively infinite (a large constant).
    """
    if known.all():
        return np.full(known.shape, np.iinfo(np.int32).max, dtype=np.int32)
    return ndimage.distance_transform_cdt(known, metric="chessboard").astype(np.int32)


def make_canvas(
    source: SourceImage,
    *,
    width: int,
    height: int,
    scale: float = 1.0,
    offset_x: int = 0,
    offset_y: int = 0,
    mask_expand: int = 8,
) -> Canvas:
    """Place the source and derive the regenerate mask and the paste-back alpha (pipeline.md 1, 2, 9).

    The mask is the unknown area dilated by `mask_expand` pixels into the source. The alpha is 0
    on unknown pixels and rises linearly across that band to exactly 1 beyond it, so source pixels
    outside the band are returned bit for bit.
    """
    rgb, known = place(source, width=width, height=height, scale=scale, offset_x=offset_x, offset_y=offset_y)
    distance = distance_to_unknown(known)
    mask = (distance <= mask_expand).astype(np.float32)
    alpha = np.minimum(distance.astype(np.float32) / np.float32(mask_expand + 1), np.float32(1.0))
    return Canvas(rgb=rgb, known=known, mask=mask, alpha=alpha)


def _push_pull(rgb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fill zero-weight pixels from a pyramid of weighted averages (smooth edge extension).

    rgb (H, W, 3) float32, weight (H, W) float32 in {0, 1}; returns (H, W, 3) float32.
    """
    if weight.min() > 0 or min(weight.shape) <= 1:
        if weight.max() == 0:
            return np.zeros_like(rgb)
        mean = (rgb * weight[..., None]).sum((0, 1)) / weight.sum()
        return np.where(weight[..., None] > 0, rgb, mean)
    h, w = weight.shape
    ph, pw = h + h % 2, w + w % 2
    premult = np.zeros((ph, pw, 3), np.float32)
    wpad = np.zeros((ph, pw), np.float32)
    premult[:h, :w] = rgb * weight[..., None]
    wpad[:h, :w] = weight
    sum_c = premult.reshape(ph // 2, 2, pw // 2, 2, 3).sum((1, 3))
    sum_w = wpad.reshape(ph // 2, 2, pw // 2, 2).sum((1, 3))
    coarse_w = (sum_w > 0).astype(np.float32)
    coarse_rgb = np.where(sum_w[..., None] > 0, sum_c / np.maximum(sum_w, 1e-8)[..., None], 0.0)
    filled_coarse = _push_pull(coarse_rgb.astype(np.float32), coarse_w)
    # Bilinear upsampling of the coarse level keeps the extension smooth instead of blocky.
    up = np.asarray(
        [
            np.asarray(Image.fromarray(filled_coarse[..., c]).resize((pw, ph), Image.Resampling.BILINEAR))
            for c in range(3)
        ]
    ).transpose(1, 2, 0)[:h, :w]
    return np.where(weight[..., None] > 0, rgb, up).astype(np.float32)


def infill(canvas: Canvas, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Fill the unknown area before VAE encoding (pipeline.md 3); returns (H, W, 3) uint8.

    pushpull: a blurred extension of the nearest source colours (default; keeps the band and
    strength < 1 coherent). gray: mid gray (the VAE's neutral). noise: uniform noise from `rng`.
    """
    known = canvas.known
    if mode == "pushpull":
        filled = _push_pull(canvas.rgb.astype(np.float32), known.astype(np.float32))
        out = np.clip(np.rint(filled), 0, 255).astype(np.uint8)
    elif mode == "gray":
        out = np.full_like(canvas.rgb, 127)
    elif mode == "noise":
        out = rng.integers(0, 256, size=canvas.rgb.shape, dtype=np.uint8)
    else:
        raise InvalidRequest("infill", f"must be one of {', '.join(INFILL_MODES)}; got {mode!r}")
    out[known] = canvas.rgb[known]
    return out


def latent_mask(mask: np.ndarray) -> np.ndarray:
    """Area-average a (H, W) pixel mask to a soft (1, 1, H/8, W/8) float32 latent mask (pipeline.md 4)."""
    h, w = mask.shape
    if h % LATENT_FACTOR or w % LATENT_FACTOR:
        raise InvalidRequest("img_width", f"canvas {w}x{h} must be a multiple of {LATENT_FACTOR} pixels")
    blocks = mask.reshape(h // LATENT_FACTOR, LATENT_FACTOR, w // LATENT_FACTOR, LATENT_FACTOR)
    return blocks.mean(axis=(1, 3), dtype=np.float32)[None, None]


def to_model_image(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1], the VAE encoder's input."""
    return (rgb.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)[None].copy()


def from_model_image(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float32 in [-1, 1] -> (H, W, 3) uint8, rounded like diffusers' postprocess."""
    scaled = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
    return (scaled * 255).round().astype(np.uint8)


def paste_back(generated: np.ndarray, canvas: Canvas) -> np.ndarray:
    """Composite the source over the generated image with the feathered alpha (pipeline.md 9).

    Pixels with alpha 1 are taken from the source untouched, so they come back bit-identical.
    """
    alpha = canvas.alpha[..., None]
    blended = alpha * canvas.rgb.astype(np.float32) + (1.0 - alpha) * generated.astype(np.float32)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    keep = canvas.alpha >= 1.0
    out[keep] = canvas.rgb[keep]
    return out
