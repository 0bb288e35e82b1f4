"""Is this process's runtime still able to generate? (Ray Serve's `check_health`, server/ray_serve.py.)

A replica answers HTTP long after its runtime broke: a CUDA context lost after an Xid error, a
TensorRT engine that throws on every call, a worker thread stuck inside a graph call. Liveness of
the event loop proves none of that, so the check asks the runtime itself:

- a generation running past its deadline by more than `stuck_margin_s` means a worker stopped
  making steps (every step checks the deadline, so a live worker ends close to it): unhealthy;
- a denoising step finished in the last `fresh_s` proves the graphs run: healthy, nothing more is
  run (the check must not compete with the work it watches);
- otherwise a real inference of the smallest graph: the text encoder on the empty prompt pair
  (a 77-token forward, milliseconds on a GPU, tens of milliseconds on a CPU), whose output must
  have the expected shape and be finite.
"""

from __future__ import annotations

import time

import numpy as np

from outpaint.engine.pipeline import Outpainter

from .gate import Gate


class RuntimeUnhealthy(RuntimeError):
    """The runtime cannot serve: the message says what failed."""


class RuntimeHealth:
    def __init__(
        self, pipeline: Outpainter, gate: Gate, *, fresh_s: float = 30.0, stuck_margin_s: float = 60.0
    ) -> None:
        self.pipeline = pipeline
        self.gate = gate
        self.fresh_s = fresh_s
        self.stuck_margin_s = stuck_margin_s
        self.probes = 0  # real inferences run by check(), for tests and logs

    def check(self) -> None:
        """Return if the runtime can generate, else raise RuntimeUnhealthy. Blocking: run it in a thread."""
        stuck = self.gate.overdue(self.stuck_margin_s)
        if stuck:
            raise RuntimeUnhealthy(f"{stuck} generations are more than {self.stuck_margin_s:g} s past their deadline: "
                                   "a worker stopped making steps")
        last = self.gate.last_step_at
        if last is not None and time.monotonic() - last < self.fresh_s:
            return
        encode_text = getattr(self.pipeline, "encode_text", None)
        if encode_text is None:  # an Outpainter without stages (a test double): nothing more to ask
            return
        self.probes += 1
        try:
            embeddings, _ = encode_text("", "")
        except Exception as exc:
            raise RuntimeUnhealthy(f"the text encoder failed on the empty prompt: {type(exc).__name__}: {exc}") from exc
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 3 or embeddings.shape[:2] != (2, 77):
            raise RuntimeUnhealthy(f"the text encoder returned shape {embeddings.shape}, expected (2, 77, D)")
        if not np.isfinite(embeddings).all():
            raise RuntimeUnhealthy("the text encoder returned NaN or infinite values")
