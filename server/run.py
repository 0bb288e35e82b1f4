"""Start the service: load the model once, reconcile the credits store, serve until a signal, drain.

Shutdown (SIGTERM or Ctrl-C): the server first drains: /readyz and new generations answer 503
with Retry-After while everything already admitted (running or queued) finishes; then uvicorn
closes the listeners and exits 0. A second signal exits at once; reservations left open by that
(or by SIGKILL) are refunded at the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from types import FrameType

import uvicorn

from .config import ServerConfig
from .gate import Gate

log = logging.getLogger("outpaint.server")


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain phase between the first signal and the shutdown."""

    def __init__(self, config: uvicorn.Config, gate: Gate, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.gate = gate
        self.drain_timeout_s = drain_timeout_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.gate.draining = True
            log.warning("%s: draining (%d admitted generations), then exiting; signal again to exit now",
                        signal.Signals(sig).name, self.gate.admitted)
        else:
            self.should_exit = True
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            waited = time.monotonic() - self.drain_started
            if self.gate.idle() or waited > self.drain_timeout_s:
                if not self.gate.idle():
                    log.error("drain timeout (%.0f s) with %d generations left", self.drain_timeout_s,
                              self.gate.admitted)
                self.should_exit = True
        return await super().on_tick(counter)


def serve(config: ServerConfig, *, log_level: str = "info") -> int:
    from outpaint.engine.cpu_features import resolve_backend
    from outpaint.engine.fast_path import EXACT, FastPathOptions
    from outpaint.engine.pipeline import OutpaintPipeline

    from .app import create_app
    from .credits import CreditStore

    problems = config.problems()
    if problems:
        raise SystemExit("outpaint serve: " + "; ".join(problems))
    backend, reason = resolve_backend(config.backend, config.fast)
    if reason:
        log.info("--fast: %s", reason)
    config = dataclasses.replace(config, backend=backend)
    started = time.perf_counter()
    pipeline = OutpaintPipeline.load(config.model, backend, options=FastPathOptions() if config.fast else EXACT)
    log.info("loaded %s (%s%s) in %.1f s", config.model, backend, ", fast path" if config.fast else "",
             time.perf_counter() - started)
    store = None
    if config.no_auth:
        log.warning("--no-auth: anyone who can reach %s:%d can generate, no credits are counted",
                    config.host, config.port)
    else:
        store = CreditStore(config.db)
        refunded = store.refund_orphans()
        if refunded:
            log.warning("refunded %d reservations left open by a process that stopped mid-request", refunded)
    app = create_app(config, pipeline, store)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
        # After the drain, connections still writing a response get this long to finish.
        timeout_graceful_shutdown=10,
    )
    server = DrainingServer(uv_config, app.app.state.service.gate, config.drain_timeout_s)
    server.run()
    return 0
