"""Timing after warm-up, and the row format of results.json."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ROW_KEYS = ("system", "stage", "canvas", "median_s", "min_s", "max_s", "runs", "peak_rss_gb")
NO_CANVAS = "-"  # stages whose cost does not depend on the canvas (the text encoder)


def peak_rss_gb() -> float:
    """This process's peak resident set so far, GiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


@dataclass(frozen=True)
class Row:
    system: str
    stage: str
    canvas: str  # "WxH" in pixels, or "-"
    median_s: float
    min_s: float
    max_s: float
    runs: int
    peak_rss_gb: float  # the system's process peak up to the end of this measurement

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row_from_samples(system: str, stage: str, canvas: str, samples: Sequence[float]) -> Row:
    if not samples:
        raise ValueError(f"{system} {stage} {canvas}: no samples")
    return Row(
        system=system, stage=stage, canvas=canvas,
        median_s=round(statistics.median(samples), 5), min_s=round(min(samples), 5), max_s=round(max(samples), 5),
        runs=len(samples), peak_rss_gb=peak_rss_gb(),
    )


def time_calls(fn: Callable[[], Any], warmup: int, runs: int) -> tuple[list[float], Any]:
    """Call `fn` warmup times untimed, then `runs` times timed; the seconds and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - started)
    return samples, result
