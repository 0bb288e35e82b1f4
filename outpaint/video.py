"""Write a sequence of frames as a video: animated WebP or GIF (engine/animation.py), or MP4 (the ffmpeg program)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from outpaint.engine.animation import encode_animation

VIDEO_SUFFIXES = (".webp", ".gif", ".mp4")


def check_video_path(path: Path) -> None:
    """SystemExit naming what is wrong with `path`, before any frame is made."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise SystemExit(f"output {path}: a video's suffix must be one of {', '.join(VIDEO_SUFFIXES)}")
    if suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise SystemExit(f"output {path}: MP4 is written by the ffmpeg program, which is not on PATH here; "
                         "install it (e.g. apt-get install ffmpeg) or write .webp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"output {path}: cannot create its folder ({exc.strerror})") from None


def write_video(frames: Iterable[np.ndarray], path: Path, fps: float) -> int:
    """Write (H, W, 3) uint8 frames to `path` (format by suffix); returns the number of frames."""
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        return _write_mp4(frames, path, fps)
    data, count = encode_animation(frames, suffix[1:], fps)
    path.write_bytes(data)
    return count


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: float) -> int:
    process = None
    count = 0
    for frame in frames:
        if process is None:
            height, width = frame.shape[:2]
            process = subprocess.Popen(
                ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                 "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", str(path)],
                stdin=subprocess.PIPE,
            )
        assert process.stdin is not None
        process.stdin.write(np.ascontiguousarray(frame).tobytes())
        count += 1
    if process is None:
        raise ValueError("a video needs at least one frame")
    assert process.stdin is not None
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path} (exit status {process.returncode})")
    return count
