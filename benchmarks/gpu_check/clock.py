"""Step timings from events: CUDA events on a GPU (cuda-python's, or PyTorch's), the host clock on a CPU.

Every event type here has the interface benchmarks/gpu.py's EventLog records with: `record(stream)`,
`end.elapsed_ms(start)` (waits for `end`), `close()`. A pair of CUDA events brackets the work queued
between them on one stream, so what is timed is the device's time, not Python's; results are read
after all the timed runs, one wait at the end, so reading them does not slow the runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Event(Protocol):
    def record(self, stream: Any) -> None: ...

    def elapsed_ms(self, start: Any) -> float: ...

    def close(self) -> None: ...


class WallEvent:
    """The host's monotonic clock: the CPU reference's steps (nothing is queued, so host time is the work)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def record(self, stream: Any = None) -> None:
        self.at = time.perf_counter()

    def elapsed_ms(self, start: WallEvent) -> float:
        if self.at is None or start.at is None:
            raise RuntimeError("both events must be recorded before the time between them is read")
        return (self.at - start.at) * 1e3

    def close(self) -> None:
        self.at = None


class TorchEvent:
    """torch.cuda.Event(enable_timing=True); `stream` None records on PyTorch's current stream."""

    def __init__(self) -> None:
        import torch

        self.event = torch.cuda.Event(enable_timing=True)

    def record(self, stream: Any = None) -> None:
        self.event.record(stream)

    def elapsed_ms(self, start: TorchEvent) -> float:
        self.event.synchronize()
        return float(start.event.elapsed_time(self.event))

    def close(self) -> None:
        pass


def ort_events() -> tuple[Callable[[], Event], Any, str]:
    """(event factory, stream, what times) for ONNX Runtime's GPU providers.

    ONNX Runtime synchronises its own stream before `run` returns, so events on the legacy default
    stream (handle 0) bracket the call's device work plus its launch overhead (benchmarks/gpu.py).
    cuda-python's events where it is installed (the tensorrt backend needs it anyway), else PyTorch's.
    """
    from outpaint.core.errors import BackendUnavailable
    from outpaint.engine.backends import cuda

    try:
        cuda.cudart()
        return cuda.Event, cuda.Stream(handle=0), "CUDA events (cuda-python) on the default stream"
    except BackendUnavailable:
        return TorchEvent, None, "CUDA events (torch.cuda.Event) on the default stream"


def time_with_events(fn: Callable[[], Any], warmup: int, runs: int, new_event: Callable[[], Event],
                     stream: Any = None) -> list[float]:
    """Seconds of each of `runs` calls of `fn` after `warmup` untimed ones, read after the last run."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(runs):
        start, end = new_event(), new_event()
        start.record(stream)
        fn()
        end.record(stream)
        pairs.append((start, end))
    seconds = [end.elapsed_ms(start) / 1e3 for start, end in pairs]
    for start, end in pairs:
        start.close()
        end.close()
    return seconds


def summarize(seconds: Sequence[float], clock: str) -> dict[str, Any]:
    """Median, min and max in milliseconds, the number of samples and what measured them."""
    if not seconds:
        raise ValueError("no samples to summarize")
    return {"median_ms": round(statistics.median(seconds) * 1e3, 3), "min_ms": round(min(seconds) * 1e3, 3),
            "max_ms": round(max(seconds) * 1e3, 3), "runs": len(seconds), "clock": clock}
