"""Giving the C heap's free pages back to the system once a server has nothing running.

A generation allocates and frees gigabytes of intermediate buffers (OpenVINO's, released after each
graph run: OutpaintPipeline.release_memory). glibc keeps freed heap memory mapped for reuse, so a fast
path server's resident set crept from 4.10 GiB after its first 512x512 request to 5.12 GiB over a dozen
requests at other canvases; returning the free pages once nothing runs (10-50 ms) holds it at 4.0-4.4
GiB, and the later requests' peaks no longer climb with it (benchmarks/RESULTS.md, "Memory between
requests"). That is memory a second process on the same machine can use.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def can_return_free_heap() -> bool:
    return _malloc_trim() is not None


def return_free_heap() -> bool:
    """Return the free pages of every malloc arena to the system (`malloc_trim(0)`). True when some
    memory was released; False when none was, or the C library cannot do it."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
