"""Prometheus metrics of one server process, in their own registry (no global state between apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self._gate_state = gate_state

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(route, method, str(code)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        if self._gate_state is not None:
            waiting, running, draining = self._gate_state()
            self.queue_depth.set(waiting)
            self.in_progress.set(running)
            self.draining.set(1 if draining else 0)
        return generate_latest(self.registry)
