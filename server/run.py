"""Start the service: load the model once, reconcile the credits store, serve until a signal, drain.

Shutdown (SIGTERM or Ctrl-C): the server first drains: /readyz and new generations answer 503
with Retry-After while everything already admitted (running or queued) finishes; then uvicorn
closes the listeners and exits 0. A second signal, or the drain timeout, stops the generations
still running at their next step: each answers 503 (JSON, with its request id and credits headers)
and is refunded, and the server exits once they have answered (at most ABORT_GRACE_S later).
Reservations left open by SIGKILL are refunded when their lease expires.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from .config import ServerConfig
from .gate import Gate
from .protocol import guarded_protocol

log = logging.getLogger("outpaint.server")
ABORT_GRACE_S = 10.0  # after an abort, how long stopped generations get to send their 503s


class RedactQuery(logging.Filter):
    """uvicorn's access log writes the path with its query string; a client that puts its key there
    (it is refused: keys go in x-api-key) must not find it in the log in plain text."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].partition("?")[0] + "?<query redacted>", *args[3:])
        return True


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain phase between the first signal and the shutdown."""

    def __init__(self, config: uvicorn.Config, gate: Gate, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.gate = gate
        self.drain_timeout_s = drain_timeout_s
        self.drain_started: float | None = None
        self.abort_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.gate.draining = True
            log.warning("%s: draining (%d admitted generations), then exiting; signal again to stop them",
                        signal.Signals(sig).name, self.gate.admitted)
        elif self.abort_started is None:
            self.abort("a second signal")
        else:
            self.should_exit = True
            self.force_exit = True

    def abort(self, why: str) -> None:
        self.abort_started = time.monotonic()
        log.error("%s with %d generations left: stopping them (503, refunded)", why, self.gate.admitted)
        self.gate.abort_all()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            now = time.monotonic()
            if self.abort_started is None and now - self.drain_started > self.drain_timeout_s:
                self.abort(f"drain timeout ({self.drain_timeout_s:.0f} s)")
            if self.gate.idle() or (self.abort_started is not None and now - self.abort_started > ABORT_GRACE_S):
                self.should_exit = True
        return await super().on_tick(counter)


def serve(config: ServerConfig, *, log_level: str = "info") -> int:
    from .app import create_app
    from .loading import load_pipeline, open_serving_store

    problems = config.problems()
    if problems:
        raise SystemExit("outpaint serve: " + "; ".join(problems))
    config, pipeline = load_pipeline(config)
    store = open_serving_store(config)
    app = create_app(config, pipeline, store)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
        http=guarded_protocol(config.header_timeout_s, config.max_connections),
        # After the drain, connections still writing a response get this long to finish.
        timeout_graceful_shutdown=10,
    )
    logging.getLogger("uvicorn.access").addFilter(RedactQuery())
    server = DrainingServer(uv_config, app.app.state.service.gate, config.drain_timeout_s)
    server.run()
    return 0
