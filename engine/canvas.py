"""Pixel-space geometry of outpainting: decode, place, mask, infill, latent mask, paste-back.

Conventions: images are (H, W, 3) uint8 RGB; masks are (H, W) with 1 = regenerate, 0 = keep.
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps
from scipy import ndimage

from outpaint.core.errors import InvalidImage, InvalidRequest
from outpaint.core.geometry import LATENT_FACTOR

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096
INFILL_MODES = ("pushpull", "gray", "noise")

log = logging.getLogger("outpaint")


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
    bomb costs nothing. A truncated image, or a JPEG whose data is too short for the size its
    header declares, is an error (never a partly grey picture). Every pixel mode these formats
    produce (16-bit grey, palette with transparency, CMYK, ...) becomes 8-bit RGB; an animated
    image gives its first frame.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Something in this process turned on PIL's lenient mode, in which a cut-off upload decodes
        # "fine" with the missing rows grey. Uploads are untrusted: truncation must stay an error.
        log.warning("PIL's ImageFile.LOAD_TRUNCATED_IMAGES was on; turned it off for decoding uploads")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    jpeg_shortfall = check_structure(data)  # before PIL, which parses chunks and segments in Python
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
    if jpeg_shortfall is not None:
        raise InvalidImage(jpeg_shortfall)
    try:
        image = ImageOps.exif_transpose(image)
        image.load()
    except Exception as exc:
        raise InvalidImage(f"is truncated or corrupt and could not be decoded ({type(exc).__name__}: {exc})") from None
    return source_from_image(image)


# Modes that hold one wide sample per pixel: PNG's 16-bit grey opens as I;16 (older Pillow: I).
# Their samples are 16-bit (0..65535); PIL's own convert() clips them at 255, which turned a
# 16-bit grey photo into a white page.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def source_from_image(image: Image.Image) -> SourceImage:
    """8-bit RGB pixels and the known mask (alpha > 0, or not the tRNS colour) of a decoded image."""
    transparency = image.info.get("transparency")
    if image.mode in _WIDE_GREY_MODES:
        values = np.asarray(image)
        known = values != transparency if isinstance(transparency, int) else np.ones(values.shape, dtype=bool)
        # 65535 / 257 = 255: the full 16-bit range onto the full 8-bit one, rounded. Values outside
        # it (possible only in I and F) are clipped.
        grey = np.rint(np.clip(values.astype(np.float32), 0, 65535) / np.float32(257)).astype(np.uint8)
        return SourceImage(rgb=np.repeat(grey[..., None], 3, axis=2), known=known)
    try:
        if image.mode in _ALPHA_MODES or transparency is not None:
            # PIL applies P's per-index alpha and the tRNS colour of L and RGB when converting to RGBA.
            rgba = np.asarray(image.convert("RGBA"))
            return SourceImage(rgb=np.ascontiguousarray(rgba[..., :3]), known=rgba[..., 3] > 0)
        rgb = np.asarray(image.convert("RGB"))  # 1, L, P, RGB, CMYK, YCbCr
    except (ValueError, OSError) as exc:
        raise InvalidImage(f"has pixel mode {image.mode}, which cannot be read as RGB ({exc})") from None
    return SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], dtype=bool))


# PIL walks a PNG's chunks and a JPEG's header segments in Python, about 10 us each: 12 MB of empty
# chunks (1 M of them) held a worker for 12-16 s, 3 M empty JPEG comments for 16 s. Real files have a
# few dozen segments, and PNG encoders write IDAT chunks of 8 KB or more (12 MB: ~1500 chunks).
MAX_PNG_CHUNKS = 65_536
MAX_JPEG_SEGMENTS = 4_096
# Fill bytes (FF runs before a marker) cost libjpeg ~0.2 us each, 7x a real JPEG's decode per byte:
# 12 MB of them took 2.6 s. Encoders write none.
MAX_JPEG_FILL = 65_536
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_structure(data: bytes) -> str | None:
    """Refuse a PNG or JPEG with more chunks or segments than any real one has, before PIL parses it.

    Returns why a JPEG's data cannot hold the pixels its header declares (jpeg_data_shortfall), or None;
    the caller reports that after the pixel limit, which a lying header may exceed too.
    """
    if data.startswith(_PNG_SIGNATURE):
        pos, size, count = len(_PNG_SIGNATURE), len(data), 0
        while pos + 8 <= size:
            count += 1
            if count > MAX_PNG_CHUNKS:
                raise InvalidImage(f"is a PNG of more than {MAX_PNG_CHUNKS} chunks; real PNGs have far fewer")
            if data[pos + 4 : pos + 8] == b"IEND":
                break
            pos += 12 + int.from_bytes(data[pos : pos + 4], "big")  # length, type, data, CRC
        return None
    if data.startswith(b"\xff\xd8"):
        return jpeg_data_shortfall(data)
    return None


# Start-of-frame markers of Huffman-coded JPEGs (baseline, extended, progressive, lossless, and their
# differential forms). Arithmetic-coded ones (C9-CB, CD-CF) can spend well under a bit per block.
_HUFFMAN_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))
_ANY_SOF = _HUFFMAN_SOF | {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_FILL = re.compile(rb"\xff+")


def _jpeg_markers(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Where markers may start (an FF followed by neither a stuffed 00, a restart code nor another FF),
    and which bytes are fill (an FF followed by FF). Vectorised: a regex took 3 s over 12 MB of FF."""
    pixels = np.frombuffer(data, dtype=np.uint8)
    ff, following = pixels[:-1] == 0xFF, pixels[1:]
    fill = ff & (following == 0xFF)
    restart = (following >= 0xD0) & (following <= 0xD7)
    return np.flatnonzero(ff & (following != 0) & ~fill & ~restart), fill


def jpeg_data_shortfall(data: bytes) -> str | None:
    """Why a JPEG's compressed data cannot hold the pixels its header declares, or None.

    libjpeg decodes a JPEG whose data ends early (with its end marker present) without an error:
    the rest of the picture comes out flat grey. A Huffman-coded JPEG spends at least one bit on
    every block of its first scan (a DC code is at least one bit), so fewer bits than MCUs (minimum
    coded units, one or more 8x8 blocks each) means the header lies or the data was cut. The walk
    reads only marker headers and finds where each scan's data ends from one vectorised pass; more
    than MAX_JPEG_SEGMENTS markers or MAX_JPEG_FILL fill bytes is an InvalidImage.
    """
    pos, size, entropy_bytes, segments, fill_bytes = 2, len(data), 0, 0, 0
    markers, fill_at = _jpeg_markers(data)
    frame: tuple[int, int, int, int, bool] | None = None  # width, height, max h and v sampling, huffman
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None  # not where a marker must be: the decoder reports a damaged stream itself
        if data[pos + 1] == 0xFF:  # fill bytes before a marker: skip the run at once
            fill = _FILL.match(data, pos)
            end = fill.end() - 1 if fill else pos + 1
            fill_bytes += end - pos
            pos = end
            continue
        marker = data[pos + 1]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InvalidImage(f"is a JPEG of more than {MAX_JPEG_SEGMENTS} segments; real JPEGs have far fewer")
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if marker in _ANY_SOF and len(segment) >= 6:
            components = [segment[7 + 3 * i] for i in range(segment[5]) if 7 + 3 * i < len(segment)]
            h_max = max((c >> 4 for c in components), default=1) or 1
            v_max = max((c & 15 for c in components), default=1) or 1
            frame_height, frame_width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            frame = (frame_width, frame_height, h_max, v_max, marker in _HUFFMAN_SOF)
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows up to the next marker
            following = int(np.searchsorted(markers, pos))
            scan_end = int(markers[following]) if following < len(markers) else size
            entropy_bytes += scan_end - pos
            fill_bytes += int(np.count_nonzero(fill_at[pos:scan_end]))
            pos = scan_end
        if fill_bytes > MAX_JPEG_FILL:
            raise InvalidImage(f"is a JPEG with more than {MAX_JPEG_FILL} fill bytes; encoders write none")
    if frame is None or not frame[4] or frame[1] == 0:  # arithmetic coding, or a height set by DNL
        return None
    width, height, h_max, v_max, _ = frame
    mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    if entropy_bytes * 8 >= mcus:
        return None
    return (
        f"is a JPEG whose header declares {width}x{height} pixels ({mcus} coded units, at least one bit "
        f"each), but whose compressed data has only {entropy_bytes} bytes: it is truncated or damaged"
    )


# Lanczos reads 3 source pixels either side of an output pixel's centre, times the downscale factor
# (PIL's support). A crop of the source that keeps this many more pixels beyond the box mapped onto
# the canvas feeds the filter exactly what the whole source would.
_LANCZOS_SUPPORT = 3.0


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size of a width x height source after `scale` (at least 1x1), as the placement uses it."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def _scaled_part(source: SourceImage, scale: float, out_w: int, out_h: int) -> SourceImage:
    """The top-left out_w x out_h pixels of the source resized by `scale`, without building the rest.

    The whole scaled source can be 100x the canvas (scale 10 on a 4096x4096 source is 1.6 G pixels);
    only the part that lands on the canvas is computed: PIL resizes the source-space box that maps
    onto it, to exactly out_w x out_h, with the same filter coefficients as a whole-image resize, so
    the pixels are those of resize-then-crop. Every intermediate is at most out_w x (source rows
    the box reads) or out_w x out_h.
    """
    h, w = source.known.shape
    new_w, new_h = scaled_size(w, h, scale)
    if (new_w, new_h) == (w, h):
        return SourceImage(rgb=source.rgb[:out_h, :out_w], known=source.known[:out_h, :out_w])
    step_x, step_y = w / new_w, h / new_h  # source pixels per scaled pixel
    box_w, box_h = out_w * step_x, out_h * step_y
    # Only the source pixels the filter reads: the box plus the filter's support, clipped to the source.
    crop_w = min(w, math.ceil(box_w + _LANCZOS_SUPPORT * max(1.0, step_x)) + 2)
    crop_h = min(h, math.ceil(box_h + _LANCZOS_SUPPORT * max(1.0, step_y)) + 2)
    box = (0.0, 0.0, box_w, box_h)
    rgb = Image.fromarray(np.ascontiguousarray(source.rgb[:crop_h, :crop_w]))
    rgb = rgb.resize((out_w, out_h), Image.Resampling.LANCZOS, box=box)
    known = source.known[np.ix_(_nearest_rows(h, new_h, out_h), _nearest_rows(w, new_w, out_w))]
    return SourceImage(rgb=np.asarray(rgb), known=known)


def _nearest_rows(size: int, new_size: int, count: int) -> np.ndarray:
    """Source index of each of the first `count` pixels of a nearest-neighbour resize size -> new_size.

    PIL's rule (a running sum of the step from half a step in, truncated), so the mask is bit for bit
    what resizing the whole mask gave; PIL's own box resize computes the step in float32 and moves
    tie pixels.
    """
    steps = np.full(count, size / new_size)
    steps[0] *= 0.5
    return np.minimum(np.add.accumulate(steps).astype(np.intp), size - 1)


def place(
    source: SourceImage, *, width: int, height: int, scale: float, offset_x: int, offset_y: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize the source by `scale`, put its top-left at (offset_x, offset_y), crop to the canvas.

    Returns (rgb (H, W, 3) uint8, known (H, W) bool). A source that misses the canvas entirely
    is an error: there would be nothing to outpaint from. Only the part of the scaled source that
    lands on the canvas is ever computed, so memory is bounded by the canvas, whatever the scale.
    """
    w, h = scaled_size(source.known.shape[1], source.known.shape[0], scale)
    x0, y0 = offset_x, offset_y
    x1, y1 = min(width, x0 + w), min(height, y0 + h)
    if x0 >= width or y0 >= height or x1 <= x0 or y1 <= y0:
        raise InvalidRequest(
            "offset_x" if x0 >= width else "offset_y",
            f"the source ({w}x{h} after scale {scale}) placed at ({x0}, {y0}) does not overlap "
            f"the {width}x{height} canvas; offsets must be below the canvas size",
        )
    scaled = _scaled_part(source, scale, x1 - x0, y1 - y0)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    known = np.zeros((height, width), dtype=bool)
    rgb[y0:y1, x0:x1] = scaled.rgb
    known[y0:y1, x0:x1] = scaled.known
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
