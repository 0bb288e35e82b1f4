"""Prometheus metrics of one server process, in their own registry (no global state between apps).

Every label value comes from a fixed set, whatever a client sends: an unauthenticated client
chooses the method and the path of its requests, and each new label value is a new time series
kept for the life of the process (20,000 made-up methods were 40,000 series, 7.9 MB of /metrics).
Methods outside `METHODS` are counted as "other", paths that are not a route of the app as
"unmatched", status codes outside 100-599 as "other".
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import BaseRoute, Mount

# RFC 9110's methods and PATCH (RFC 5789): anything else a client makes up is one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
OTHER = "other"
UNMATCHED = "unmatched"  # every path that is not a route of the app

# A request at 1024x1024 on a CPU can take minutes; one step on a GPU a few milliseconds.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, gate_state=None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "outpaint_http_requests", "HTTP requests by route, method and status code",
            ("route", "method", "code"), registry=self.registry,
        )
        self.request_seconds = Histogram(
            "outpaint_http_request_seconds", "Wall time from request to response, by route",
            ("route",), buckets=_REQUEST_BUCKETS, registry=self.registry,
        )
        self.generation_seconds = Histogram(
            "outpaint_generation_seconds", "Wall time of one generation in a worker (decode to JPEG)",
            buckets=_REQUEST_BUCKETS, registry=self.registry,
        )
        self.step_seconds = Histogram(
            "outpaint_denoise_step_seconds", "Wall time of one denoising step (UNet + scheduler)",
            buckets=_STEP_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge("outpaint_queue_depth", "Generations admitted and waiting for a worker",
                                 registry=self.registry)
        self.in_progress = Gauge("outpaint_generations_in_progress", "Generations running in a worker",
                                 registry=self.registry)
        self.credits_charged = Counter("outpaint_credits_charged", "Credits charged for delivered images",
                                       registry=self.registry)
        self.refunds = Counter("outpaint_credit_refunds", "Reservations refunded, by reason", ("reason",),
                               registry=self.registry)
        self.draining = Gauge("outpaint_draining", "1 while the server finishes its work before exiting",
                              registry=self.registry)
        self.idempotency = Counter(
            "outpaint_idempotency", "Requests with an Idempotency-Key by outcome: replayed (no second charge), "
            "conflict (409, still running), mismatch (422, another body)", ("outcome",), registry=self.registry,
        )
        self._gate_state = gate_state
        self._paths: frozenset[str] = frozenset()
        self._prefixes: tuple[str, ...] = ()

    def set_routes(self, routes: Iterable[BaseRoute]) -> None:
        """The app's routes: the only path label values besides `UNMATCHED` (a mount is one value)."""
        paths, prefixes = set(), []
        for route in routes:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue
            if isinstance(route, Mount):
                prefixes.append(path.rstrip("/") + "/")
            else:
                paths.add(path)
        self._paths, self._prefixes = frozenset(paths), tuple(prefixes)

    def route_label(self, path: str) -> str:
        if path in self._paths:
            return path
        return next((prefix.rstrip("/") for prefix in self._prefixes if path.startswith(prefix)), UNMATCHED)

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        """`route` is a path or a route's template; it is bounded here, as are `method` and `code`."""
        route = self.route_label(route)
        method_label = method if method in METHODS else OTHER
        code_label = str(code) if 100 <= code <= 599 else OTHER
        self.requests.labels(route, method_label, code_label).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        if self._gate_state is not None:
            waiting, running, draining = self._gate_state()
            self.queue_depth.set(waiting)
            self.in_progress.set(running)
            self.draining.set(1 if draining else 0)
        return generate_latest(self.registry)
