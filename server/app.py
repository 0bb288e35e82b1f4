"""The HTTP routes: POST /v1/sd1.5-outpaint (api.md), health, readiness, metrics; the zoom and panorama
routes beside it are server/sequences.py, through the same `OutpaintService.serve`.

One request, in order: key (401) -> balance (406) -> queue slot (503) -> content type and
encoding (415) -> body size and arrival time (413/408) -> JSON and base64, off the event loop
(400) -> fields through `OutpaintRequest.from_fields` (400) -> image decode, off the event loop
(400/413) -> can it finish in time (413) -> reserve the credit (406) -> generate in a worker ->
charge as the JPEG is sent. The slot comes first so that the queue bound also bounds the bodies in
memory and the images being decoded; the balance is checked before anything is read or decoded, so
a key without credits costs the server nothing. Every failure after the reservation refunds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from outpaint.core.errors import Cancelled, InvalidImage, InvalidRequest
from outpaint.engine.canvas import SourceImage, decode_image
from outpaint.engine.pipeline import Outpainter, OutpaintResult
from outpaint.engine.request import OutpaintRequest

from .body import Disconnected, check_content_type, parse_request_body, read_body
from .config import ServerConfig
from .context import CLIENT_CLOSED, RequestContext
from .credits import LEASE_MARGIN_S, KeyRevoked, Reservation
from .docs_pages import add_offline_docs
from .errors import ApiError, bad_request
from .gate import Aborted, DeadlineExceeded, Draining, Gate, QueueFull, Ticket
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import Idempotency, Replay
from .idempotency_store import Claim, IdempotencyOutcome
from .jobs_store import JobLimits, NewJob
from .metrics import Metrics
from .playground import add_playground
from .schema import error_response, request_schema
from .store import CreditStore

log = logging.getLogger("outpaint.server")
ROUTE = "/v1/sd1.5-outpaint"
MAX_KEY_CHARS = 256
API_KEY = APIKeyHeader(name="x-api-key", auto_error=False, description="your API key (`outpaint keys create`)")


@dataclass
class Call:
    """What one outpaint request has established so far (for its error responses)."""

    arrived: float  # time.monotonic()
    key_id: int | None = None
    reservation: Reservation | None = None
    idempotency_key: str | None = None  # the client's Idempotency-Key, once checked
    idempotency: Claim | None = None  # that key with the body's fingerprint, once the body is read


@dataclass(frozen=True)
class Delivery:
    """A finished response body and its route's own headers (x-seed ...), ready to be charged and sent."""

    body: bytes
    media_type: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Job:
    """What a route's parsed body asks for: `outpaints` outpaints like `request`, run by `run` in an
    admitted slot. The price (price x outpaints), the deadline (timeout x outpaints) and the cost
    estimate (one outpaint like `request`) follow from it; `what` names it in the 406 ("one image")."""

    request: OutpaintRequest
    outpaints: int
    what: str
    run: Callable[[Ticket], Awaitable[Delivery]]


# A route's own part of a request: the validated common fields and the decoded source -> its Job.
# Raises InvalidRequest (a 400 naming the field) for what it cannot do, before anything is reserved.
Prepare = Callable[[dict[str, Any], OutpaintRequest, SourceImage], Job]


class Submitter(Protocol):
    """What a route that queues its work instead of running it does once the request passed every
    check (server/jobs.py): reserve and store it, and answer; and how it answers an Idempotency-Key
    retry of a request that was charged."""

    async def submit(self, call: Call, request_id: str, job: Job, raw_image: bytes) -> Response: ...

    async def replay(self, replay: Replay, call: Call) -> Response: ...


class ChargedImage(Response):
    """The JPEG response. `settle()` runs right before the bytes are handed to the socket: it makes
    the charge final (or refunds if the client already left: the disconnect watcher runs until
    then), so a crash can only fall in the microseconds between that commit and the write (the
    charge commits without a disk flush for that reason: credits.py). A client that sent an
    Idempotency-Key recovers even from that: its response was stored before the charge."""

    media_type = "image/jpeg"

    def __init__(
        self, content: bytes, headers: dict[str, str], settle: Callable[[], None], watcher: asyncio.Task,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type or self.media_type)
        self._settle = settle
        self._watcher = watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No await between here and the write: the watcher's last word and the charge are final.
        self._watcher.cancel()
        try:
            self._settle()
        except Exception:
            # The reservation stays open, no longer held, and the next sweep refunds it (credits.py):
            # the client still gets the image it waited for, we lose one credit rather than deliver nothing.
            log.exception("could not settle the charge of request %s", scope.get("state", {}).get("request_id"))
        await super().__call__(scope, receive, send)


class OutpaintService:
    """The state the routes share: one pipeline, its gate, the credits store, metrics."""

    def __init__(self, config: ServerConfig, pipeline: Outpainter, store: CreditStore | None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.store = store
        self.gate = Gate(pipeline, concurrency=config.concurrency, max_queue=config.max_queue,
                         on_step=lambda seconds: self.metrics.step_seconds.observe(seconds))
        self.metrics = Metrics(lambda: (self.gate.waiting, self.gate.running, self.gate.draining))
        self.idempotency = Idempotency(store, self.metrics, self.gate.retry_after_seconds)
        self.job_limits = JobLimits(per_key=config.max_jobs_per_key, total=config.max_queued_jobs,
                                    retention_s=config.job_retention_s)

    # -- credits ---------------------------------------------------------------------------------

    async def authenticate(self, key: str | None, call: Call) -> None:
        if self.store is None:
            return
        if not key:
            raise ApiError(401, "missing x-api-key header: send your API key in it")
        key_id = None if len(key) > MAX_KEY_CHARS else await asyncio.to_thread(self.store.authenticate, key)
        if key_id is None:
            raise ApiError(401, "unknown or revoked API key (x-api-key)")
        call.key_id = key_id

    async def credit_headers(self, call: Call) -> dict[str, str]:
        if self.store is None or call.key_id is None:
            return {}
        return {"x-remaining-credits": str(await asyncio.to_thread(self.store.balance, call.key_id))}

    async def reserve(self, call: Call, request_id: str, job: Job, queued: NewJob | None = None) -> None:
        """Take the whole price of `job` (price x its outpaints) at once, before any compute; with
        `queued`, store that job in the same transaction (server/jobs.py)."""
        if self.store is None or call.key_id is None:
            return
        price = self.config.price * job.outpaints
        try:
            if queued is None:
                call.reservation = await asyncio.to_thread(self.store.reserve, call.key_id, price, request_id,
                                                           claim=call.idempotency)
            else:
                call.reservation = await asyncio.to_thread(self.store.submit_job, call.key_id, price, queued,
                                                           self.job_limits, claim=call.idempotency)
        except IdempotencyOutcome as outcome:  # the key's first request finished or started meanwhile
            raise self.idempotency.answer(outcome) from None
        except KeyRevoked:
            call.key_id = None  # no longer an authenticated request: no credits header
            raise ApiError(401, "unknown or revoked API key (x-api-key)") from None
        if call.reservation is None:
            raise ApiError(406, f"not enough credits: {job.what} costs {price}; nothing was charged")

    async def check_balance(self, call: Call) -> None:
        """406 before the body is read: the reservation later is the atomic check, this one is cheap."""
        if self.store is None or call.key_id is None:
            return
        if await asyncio.to_thread(self.store.balance, call.key_id) < self.config.price:
            raise ApiError(406, f"not enough credits: one image costs {self.config.price}; nothing was charged")

    def check_feasible(self, outpaint_request: OutpaintRequest) -> None:
        """Refuse at once what cannot finish before the deadline even alone, from this server's measured
        cost. (A request delayed by the queue is stopped at the first step from which it could no longer
        finish, see Gate: the queue's length changes while it waits, so it is not judged here.)"""
        estimate = self.gate.cost.estimate(outpaint_request)
        limit = self.config.timeout_s
        if estimate is not None and estimate.seconds > limit:
            raise ApiError(413, f"this request's denoising would take about {estimate.seconds:.0f} s on this server "
                                f"({estimate.basis}), over its time limit of {limit:g} s: ask for fewer "
                                "num_inference_steps or a smaller canvas; nothing was charged")

    async def refund(self, call: Call, reason: str) -> None:
        if self.store is not None and call.reservation is not None:
            reservation, call.reservation = call.reservation, None
            if await asyncio.to_thread(self.store.refund, reservation.request_id):
                self.metrics.refunds.labels(reason).inc()

    def settle(self, ticket: Ticket, reservation: Reservation | None) -> None:
        """Synchronous on purpose (see ChargedImage): the commit sits right before the write."""
        if self.store is None or reservation is None:
            return
        if ticket.disconnected.is_set():
            if self.store.refund(reservation.request_id):
                self.metrics.refunds.labels("disconnect").inc()
        elif self.store.charge(reservation.request_id):
            self.metrics.credits_charged.inc(reservation.amount)

    # -- the request -----------------------------------------------------------------------------

    async def outpaint(self, request: Request, api_key: str | None) -> Response:
        return await self.serve(request, api_key, self.single)

    async def serve(self, request: Request, api_key: str | None, prepare: Prepare, *, fingerprint_scope: bytes = b"",
                    submitter: Submitter | None = None) -> Response:
        """One request of a generating route, whose own part is `prepare`. `fingerprint_scope` is mixed
        into the Idempotency-Key fingerprint, so a key reused with the same body on another route is
        a 422, not a replay of the other route's answer (empty: the blocking route's fingerprints).
        With a `submitter` the checked request is handed to it instead of run (the job routes)."""
        call = Call(arrived=time.monotonic())
        request_id = request.state.request_id
        try:
            return await self._serve(request, api_key, call, request_id, prepare, fingerprint_scope, submitter)
        except Replay as replay:
            if submitter is not None:
                return await submitter.replay(replay, call)
            return replay.response(await self.credit_headers(call))
        except ApiError as err:
            await self.refund(call, f"http_{err.status}")
            return err.response(await self.credit_headers(call))
        except Disconnected:
            await self.refund(call, "disconnect")
            return JSONResponse({"error": "the client disconnected"}, status_code=CLIENT_CLOSED)
        except asyncio.CancelledError:
            await asyncio.shield(self.refund(call, "cancelled"))
            raise
        except Exception:
            log.exception("request %s failed", request_id)
            await self.refund(call, "internal_error")
            message = f"internal error (request id {request_id}); nothing was charged"
            return ApiError(500, message).response(await self.credit_headers(call))

    async def _serve(
        self, request: Request, api_key: str | None, call: Call, request_id: str, prepare: Prepare,
        fingerprint_scope: bytes, submitter: Submitter | None,
    ) -> Response:
        config = self.config
        await self.authenticate(api_key, call)
        # A 406 is final (a 503 would only invite a pointless retry), so it comes before the slot; with an
        # Idempotency-Key it waits for the replay check: a retry of a charged request may find 0 credits.
        # (The price of one outpaint: what a zoom or a panorama costs is known once its body is read.)
        replayable = IDEMPOTENCY_HEADER in request.headers
        if not replayable:
            await self.check_balance(call)
        try:
            self.gate.admit()  # before the body: a full queue turns requests away before they take memory
        except (QueueFull, Draining) as exc:
            raise self._unavailable(str(exc)) from None
        try:
            call.idempotency_key = await self.idempotency.precheck(  # 409, or a replay before the balance check
                request, call.key_id, lambda: read_body(request, config.max_body_bytes, config.body_timeout_s),
                fingerprint_scope)
            if replayable:
                await self.check_balance(call)
            check_content_type(request)
            body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
            call.idempotency = await self.idempotency.claim(call.idempotency_key, body, fingerprint_scope)
            fields, raw_image = await asyncio.to_thread(parse_request_body, body)
            del body
            try:
                outpaint_request = OutpaintRequest.from_fields(fields, schedulers=self.pipeline.scheduler_names)
                source = await asyncio.to_thread(decode_image, raw_image, max_pixels=config.max_image_pixels)
                job = prepare(fields, outpaint_request, source)
            except InvalidRequest as exc:
                raise from_invalid(exc) from None
            del fields
            self.check_feasible(job.request)
            if submitter is not None:
                return await submitter.submit(call, request_id, job, raw_image)
            del raw_image
            await self.reserve(call, request_id, job)
            # A chain of outpaints gets the time limit once per outpaint (its queue wait counted once).
            limit_s = config.timeout_s * job.outpaints
            ticket = Ticket(deadline=call.arrived + limit_s)
            watcher = asyncio.create_task(_watch_disconnect(request.receive, ticket))
            try:
                delivery = await self._gated(job.run(ticket), limit_s)
                headers = {**delivery.headers, **await self.credit_headers(call)}
                # Stored before the charge: once charged, a retry with its key gets this response.
                await self.idempotency.store_response(call.idempotency, request_id,
                                                      {**headers, "content-type": delivery.media_type}, delivery.body)
            except BaseException:
                watcher.cancel()
                raise
        finally:
            self.gate.release()
        reservation, call.reservation = call.reservation, None  # from here on settle() owns it
        return ChargedImage(delivery.body, headers, lambda: self.settle(ticket, reservation), watcher,
                            delivery.media_type)

    def single(self, _fields: dict[str, Any], outpaint_request: OutpaintRequest, source: SourceImage) -> Job:
        """The blocking route: one outpaint, its JPEG."""

        async def run(ticket: Ticket) -> Delivery:
            started = time.perf_counter()
            result, jpeg = await self.gate.run(source, outpaint_request, ticket, self.encode)
            self.metrics.generation_seconds.observe(time.perf_counter() - started)
            headers = {"x-seed": str(result.seed), **seam_header(result.seam), **warning_headers(result.warnings)}
            return Delivery(jpeg, ChargedImage.media_type, headers)

        return Job(outpaint_request, 1, "one image", run)

    async def _gated(self, work: Awaitable[Delivery], limit_s: float) -> Delivery:
        """Await admitted work in the gate; its failures as the API's errors."""
        try:
            return await work
        except Cancelled:
            raise Disconnected("the client disconnected during the generation") from None
        except DeadlineExceeded:
            raise self._unavailable(f"the request would not finish within the server's time limit of "
                                    f"{limit_s:g} s, so it was stopped early; nothing was charged") from None
        except Aborted:
            raise ApiError(503, "the server is shutting down and stopped this generation; nothing was charged",
                           headers={"retry-after": "5"}) from None
        except InvalidRequest as exc:
            raise from_invalid(exc) from None

    def encode(self, result: OutpaintResult) -> bytes:
        return jpeg_bytes(result.image, self.config.jpeg_quality)

    def _unavailable(self, message: str) -> ApiError:
        return ApiError(503, message, headers={"retry-after": str(self.gate.retry_after_seconds())})


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def seam_header(seam: float | None) -> dict[str, str]:
    """`x-seam-score` (engine/seam.py): about 1 where the boundary is as smooth as the picture around
    it, well above 1 for a visible seam; absent when the image has no boundary to score. Lets a
    service retry or flag a bad result without looking at it."""
    return {} if seam is None else {"x-seam-score": f"{seam:.3f}"}


def warning_headers(warnings: list[str]) -> dict[str, str]:
    """`x-warnings`: what the engine changed about the request (a prompt cut to CLIP's 77 tokens),
    so a client learns it without reading our logs. Header values are latin-1: anything else is escaped."""
    if not warnings:
        return {}
    text = " | ".join(warnings)
    return {"x-warnings": text.encode("latin-1", "backslashreplace").decode("latin-1")}


def from_invalid(exc: InvalidRequest) -> ApiError:
    if isinstance(exc, InvalidImage) and exc.too_large:
        return ApiError(413, f"{exc.field}: {exc.message}", field=exc.field)
    return bad_request(exc.message, exc.field)


async def _watch_disconnect(receive: Receive, ticket: Ticket) -> None:
    """After the body is read, the next ASGI message can only be the client leaving."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            ticket.disconnected.set()
            return


def create_app(config: ServerConfig, pipeline: Outpainter, store: CreditStore | None) -> RequestContext:
    """The ASGI application (FastAPI inside the request-id/metrics layer)."""
    service = OutpaintService(config, pipeline, store)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if store is not None:  # renews the leases of our reservations, refunds expired ones of anyone
            store.job_retention_s = config.job_retention_s
            store.keep_leases(config.timeout_s + LEASE_MARGIN_S,
                              on_refund=lambda n: service.metrics.refunds.labels("lease_expired").inc(n))
            runner.start()  # claims queued jobs whenever a generation slot is free (server/jobs.py)
        yield
        await runner.stop()
        service.gate.shutdown()
        if store is not None:
            store.close()

    app = FastAPI(
        title="outpaint", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Stable Diffusion 1.5 outpainting, a drop-in replacement for the hosted API "
                    "(see docs/server.md). Every error body is JSON: {\"error\": ..., \"field\": ...}.",
    )
    app.state.service = service
    add_offline_docs(app)
    add_playground(app)  # GET /: try the job routes in a browser

    @app.post(
        ROUTE,
        summary="Outpaint an image",
        response_class=Response,
        responses={
            200: {"description": "the generated image, exactly img_width x img_height",
                  "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                  "headers": {h: {"schema": {"type": "string"}} for h in ("x-seed", "x-seam-score",
                                                                          "x-remaining-credits", "x-request-id")}},
            400: error_response("malformed JSON, bad base64, not an image, a field out of range or of the wrong type"),
            401: error_response("missing or unknown x-api-key"),
            406: error_response("not enough credits (nothing charged)", headers=("x-remaining-credits",)),
            409: error_response("a request with this Idempotency-Key is still running", headers=("retry-after",)),
            422: error_response("this Idempotency-Key was used with another request body"),
            413: error_response("body or decoded image larger than the configured limits"),
            415: error_response("the body is not application/json"),
            500: error_response("internal failure (the credit is refunded)"),
            503: error_response("queue full, server draining or deadline exceeded", headers=("retry-after",)),
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": request_schema(pipeline.scheduler_names)}}}},
    )
    async def outpaint(request: Request, api_key: str | None = Security(API_KEY)) -> Response:
        return await service.outpaint(request, api_key)

    from .sequences import register_sequence_routes  # it builds on this module

    register_sequence_routes(app, service)  # POST {ROUTE}/zoom and {ROUTE}/pan

    from .jobs import register_job_routes  # it builds on this module

    runner = register_job_routes(app, service)  # {ROUTE}/jobs..., GET /v1/user/balance

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the model is loaded and the server is not draining",
             responses={503: error_response("draining", headers=("retry-after",))})
    async def readyz() -> Response:
        gate = service.gate
        if gate.draining:
            return ApiError(503, "draining: the server is shutting down",
                            headers={"retry-after": str(gate.retry_after_seconds())}).response()
        return JSONResponse({"status": "ready", "running": gate.running, "waiting": gate.waiting,
                             "max_queue": gate.max_queue, "schedulers": list(pipeline.scheduler_names)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such path: {request.url.path}; the API is POST {ROUTE}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow")
            message = f"method {request.method} is not allowed on {request.url.path}" + (
                f"; allowed: {allowed}" if allowed else "")
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return bad_request(first.get("msg", "invalid request"), field).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error; nothing was charged"}, status_code=500)

    return RequestContext(app, service.metrics)
