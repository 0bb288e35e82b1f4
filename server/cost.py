"""What a generation costs on this server, learned from the steps it has run, for admission.

A request whose work cannot finish within the server's time limit is refused at once (413, naming
the estimate) instead of being computed for minutes and then thrown away. The estimate is the
measured seconds per UNet call at the request's canvas, times the calls its steps make; a canvas
not seen yet is scaled from the nearest measured one by its pixel count (exact for the convolutions,
an underestimate for attention, which grows faster: the first request of a larger canvas may still
run out of time, and its own steps then correct the estimate). Before the first generation nothing
is known and every request is admitted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from outpaint.engine.request import OutpaintRequest
from outpaint.engine.schedulers import get_scheduler
from outpaint.engine.schedulers.base import skip_for_strength

SMOOTHING = 0.3  # weight of the newest step in the running mean (steps of one canvas vary little)


def unet_calls(request: OutpaintRequest) -> int:
    """How many UNet calls the request's denoising makes (strength < 1 skips the first steps)."""
    steps = request.num_inference_steps - skip_for_strength(request.num_inference_steps, request.strength)
    return max(steps, 1) * get_scheduler(request.scheduler).calls_per_step


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str  # how it was made, for the refusal's message


class StepCost:
    """Seconds per UNet call by canvas (width, height), a running mean of observed steps. Thread-safe:
    the worker threads record, the event loop estimates."""

    def __init__(self) -> None:
        self._per_call: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()

    def record(self, request: OutpaintRequest, step_seconds: float) -> None:
        canvas = (request.img_width, request.img_height)
        seconds = step_seconds / get_scheduler(request.scheduler).calls_per_step
        with self._lock:
            known = self._per_call.get(canvas)
            self._per_call[canvas] = seconds if known is None else (1 - SMOOTHING) * known + SMOOTHING * seconds

    def estimate(self, request: OutpaintRequest) -> Estimate | None:
        """The denoising time of `request` alone, or None before anything was measured."""
        canvas = (request.img_width, request.img_height)
        calls = unet_calls(request)
        with self._lock:
            if canvas in self._per_call:
                per_call = self._per_call[canvas]
                return Estimate(calls * per_call, f"{per_call:.2f} s per UNet call measured at {canvas[0]}x{canvas[1]}")
            if not self._per_call:
                return None
            pixels = canvas[0] * canvas[1]
            (w, h), per_call = min(self._per_call.items(), key=lambda item: abs(item[0][0] * item[0][1] - pixels))
        scaled = per_call * pixels / (w * h)
        return Estimate(calls * scaled, f"{per_call:.2f} s per UNet call measured at {w}x{h}, scaled by pixels")
