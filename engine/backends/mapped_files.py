"""Give back the resident pages of weight files a runtime keeps mapped but no longer reads.

OpenVINO's compiled model keeps the ov.Model it was compiled from (its export path serialises it),
and with it the memory-mapped fp32 weight file, while it runs on its own repacked copy of the
weights. The mapping's pages stay resident after compilation read them: 3.4 GB for the SD 1.5 UNet,
counted in the process's resident set although nothing touches them again. They are clean file
pages, so the kernel may drop them without loss (MADV_PAGEOUT); should anything read them later,
they come back from the file. Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterable
from pathlib import Path

MADV_PAGEOUT = 21  # linux/mman.h, Linux 5.4+: reclaim these pages now (clean file pages are dropped)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def read_only_mappings(files: Iterable[Path | str], maps_text: str) -> list[tuple[int, int]]:
    """(start, length) of the read-only mappings of `files` in a /proc/PID/maps text."""
    wanted = {str(Path(f).resolve()) for f in files}
    ranges = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] not in wanted or "w" in fields[1]:
            continue  # a writable mapping could hold changes of its own: never touched
        start, end = (int(v, 16) for v in fields[0].split("-"))
        ranges.append((start, end - start))
    return ranges


def page_out_mapped_files(files: Iterable[Path | str]) -> int:
    """Ask the kernel to drop this process's resident pages of read-only mappings of `files`.
    Returns the bytes advised (0 where unsupported)."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "PAGESIZE"):
        return 0
    libc = _libc()
    if libc is None:
        return 0
    try:
        maps_text = Path("/proc/self/maps").read_text()
    except OSError:
        return 0
    advised = 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in read_only_mappings(files, maps_text):
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_PAGEOUT) == 0:
            advised += length
    return advised
