"""Outermost ASGI layer: a request id on every response and one metrics sample per request.

It wraps the whole FastAPI app (outside Starlette's own error middleware), so even the 500 that
an unexpected exception produces carries `x-request-id` and is counted.
"""

from __future__ import annotations

import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import UNMATCHED, Metrics

CLIENT_CLOSED = 499  # nginx's code for "the client went away before the response"


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The routes are the only path labels (metrics.py bounds every label a client chooses).
        metrics.set_routes(getattr(app, "routes", ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = CLIENT_CLOSED

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # FastAPI's own routes (/docs, /openapi.json) set no scope["route"]: their path is the
            # label. A 404 is an unknown path; any other path that is not a route (a slash redirect,
            # a 499 on a probe) is mapped to the same one label by Metrics.
            route = getattr(scope.get("route"), "path", None)
            label = route or (UNMATCHED if status == 404 else scope["path"])
            self.metrics.observe_request(label, scope["method"], status, time.perf_counter() - started)
