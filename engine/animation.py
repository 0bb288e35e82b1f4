"""Animated images in memory: a sequence of frames as an animated WebP or GIF file's bytes (Pillow).

Shared by the CLI (outpaint/video.py writes them to a file) and the HTTP service (which sends them).
Pillow holds every frame until it encodes (its WebP writer lists them first), so a caller bounds
frames x pixels: the service does (`--max-video-pixels`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image

# format name -> media type
ANIMATION_FORMATS = {"webp": "image/webp", "gif": "image/gif"}


def encode_animation(
    frames: Iterable[np.ndarray], fmt: str, fps: float, on_frame: Callable[[int], None] | None = None
) -> tuple[bytes, int]:
    """The (H, W, 3) uint8 `frames` as an endlessly looping animation of format `fmt` ("webp" or
    "gif") at `fps`; and the number of frames. `on_frame(i)` runs after frame i is made (a place
    to stop a long render: whatever it raises propagates)."""
    if fmt not in ANIMATION_FORMATS:
        raise ValueError(f"an animation's format must be one of {', '.join(ANIMATION_FORMATS)}, got {fmt!r}")
    images = []
    for i, frame in enumerate(frames):
        images.append(Image.fromarray(frame))
        if on_frame is not None:
            on_frame(i)
    if not images:
        raise ValueError("an animation needs at least one frame")
    duration = round(1000 / fps)
    buffer = io.BytesIO()
    if fmt == "webp":
        images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       quality=85, method=4)
    else:
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue(), len(images)
