"""The HTTP/1.1 connection layer under the app: uvicorn's h11 protocol with the limits it lacks.

- A new connection must send its whole request head within `header_timeout_s`: a client that
  sends half a header and waits would otherwise hold a file descriptor forever (uvicorn times out
  idle keep-alive connections, not a first request that never completes). Bodies are timed by the
  app (server/body.py), which answers 408.
- At most `max_connections` are open: one more is answered 503 (JSON, Retry-After) and closed at
  once, before it can take a file descriptor for long.
- A request h11 cannot parse (a NUL in a header, a head over h11's 64 KiB) is answered with the
  API's JSON error body instead of uvicorn's text/plain one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("outpaint.server")


def _raw_response(status: int, reason: str, message: str, extra: dict[str, str] | None = None) -> bytes:
    body = json.dumps({"error": message}).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close",
               "x-request-id": uuid.uuid4().hex, **(extra or {})}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """An H11Protocol class with these limits (uvicorn instantiates it once per connection)."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("%d connections open, over the limit of %d: refusing one", len(self.connections),
                            max_connections)
                transport.write(_raw_response(503, "Service Unavailable",
                                              f"too many open connections (limit {max_connections}); retry later",
                                              {"retry-after": "1"}))
                transport.close()
                return
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_too_slow)

        def _head_too_slow(self) -> None:
            # A request head that completed created a cycle; a later idle period is keep-alive's business.
            if self.cycle is None and not self.transport.is_closing():
                self.transport.write(_raw_response(
                    408, "Request Timeout", f"the request head did not arrive within {header_timeout_s:g} s"))
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(_raw_response(400, "Bad Request", f"malformed HTTP request: {msg}"))
            self.transport.close()

    return GuardedH11Protocol
