"""The HTTP routes: POST /v1/sd1.5-outpaint (api.md), health, readiness, metrics.

One request, in order: key (401) -> body size (413) -> content type (415) -> JSON (400) ->
fields through `OutpaintRequest.from_fields` (400) -> image decode (400/413) -> reserve the
credit (406) -> queue slot (503) -> generate in a worker -> charge as the JPEG is sent. Every
failure after the reservation refunds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

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

from .body import Disconnected, check_content_type, image_bytes, parse_object, read_body
from .config import ServerConfig
from .context import CLIENT_CLOSED, RequestContext
from .credits import CreditStore, KeyRevoked, Reservation
from .errors import ApiError, bad_request
from .gate import DeadlineExceeded, Draining, Gate, QueueFull, Ticket
from .metrics import Metrics
from .schema import error_response, request_schema

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


class ChargedImage(Response):
    """The JPEG response. `settle()` runs right before the bytes are handed to the socket: it makes
    the charge final (or refunds if the client already left: the disconnect watcher runs until
    then), so a crash can only fall in the microseconds between that commit and the write."""

    media_type = "image/jpeg"

    def __init__(
        self, content: bytes, headers: dict[str, str], settle: Callable[[], None], watcher: asyncio.Task
    ) -> None:
        super().__init__(content, headers=headers, media_type=self.media_type)
        self._settle = settle
        self._watcher = watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No await between here and the write: the watcher's last word and the charge are final.
        self._watcher.cancel()
        try:
            self._settle()
        except Exception:
            # The reservation stays open and is refunded at the next start: the client still gets
            # the image it waited for, we lose one credit rather than deliver nothing.
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

    async def reserve(self, call: Call, request_id: str) -> None:
        if self.store is None or call.key_id is None:
            return
        price = self.config.price
        try:
            call.reservation = await asyncio.to_thread(self.store.reserve, call.key_id, price, request_id)
        except KeyRevoked:
            call.key_id = None  # no longer an authenticated request: no credits header
            raise ApiError(401, "unknown or revoked API key (x-api-key)") from None
        if call.reservation is None:
            raise ApiError(406, f"not enough credits: one image costs {price}; nothing was charged")

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
        call = Call(arrived=time.monotonic())
        request_id = request.state.request_id
        try:
            return await self._outpaint(request, api_key, call, request_id)
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

    async def _outpaint(self, request: Request, api_key: str | None, call: Call, request_id: str) -> Response:
        config = self.config
        await self.authenticate(api_key, call)
        try:
            self.gate.check()  # a full queue turns requests away before their bodies take memory
        except (QueueFull, Draining) as exc:
            raise self._unavailable(str(exc)) from None
        body = await read_body(request, config.max_body_bytes)
        check_content_type(request)
        fields = parse_object(body)
        raw_image = image_bytes(fields)
        try:
            outpaint_request = OutpaintRequest.from_fields(fields, schedulers=self.pipeline.scheduler_names)
            source = await asyncio.to_thread(decode_image, raw_image, max_pixels=config.max_image_pixels)
        except InvalidRequest as exc:
            raise _from_invalid(exc) from None

        await self.reserve(call, request_id)
        try:
            self.gate.admit()
        except (QueueFull, Draining) as exc:
            raise self._unavailable(str(exc)) from None
        ticket = Ticket(deadline=call.arrived + config.timeout_s)
        watcher = asyncio.create_task(_watch_disconnect(request.receive, ticket))
        try:
            result, jpeg = await self._generate(source, outpaint_request, ticket)
            headers = {"x-seed": str(result.seed), **await self.credit_headers(call)}
        except BaseException:
            watcher.cancel()
            raise
        reservation, call.reservation = call.reservation, None  # from here on settle() owns it
        return ChargedImage(jpeg, headers, lambda: self.settle(ticket, reservation), watcher)

    async def _generate(
        self, source: SourceImage, outpaint_request: OutpaintRequest, ticket: Ticket
    ) -> tuple[OutpaintResult, bytes]:
        """Run an admitted generation; its failures as the API's errors. Releases the slot."""
        try:
            started = time.perf_counter()
            result, jpeg = await self.gate.run(source, outpaint_request, ticket, self._encode)
            self.metrics.generation_seconds.observe(time.perf_counter() - started)
            return result, jpeg
        except Cancelled:
            raise Disconnected("the client disconnected during the generation") from None
        except DeadlineExceeded:
            raise self._unavailable(f"the request did not finish within the server's time limit of "
                                    f"{self.config.timeout_s:g} s; nothing was charged") from None
        except InvalidRequest as exc:
            raise _from_invalid(exc) from None
        finally:
            self.gate.release()

    def _encode(self, result: OutpaintResult) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(result.image).save(buffer, format="JPEG", quality=self.config.jpeg_quality)
        return buffer.getvalue()

    def _unavailable(self, message: str) -> ApiError:
        return ApiError(503, message, headers={"retry-after": str(self.gate.retry_after_seconds())})


def _from_invalid(exc: InvalidRequest) -> ApiError:
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
        yield
        service.gate.shutdown()
        if store is not None:
            store.close()

    app = FastAPI(
        title="outpaint", version="0.1.0", lifespan=lifespan,
        description="Stable Diffusion 1.5 outpainting, a drop-in replacement for the hosted API "
                    "(see docs/server.md). Every error body is JSON: {\"error\": ..., \"field\": ...}.",
    )
    app.state.service = service

    @app.post(
        ROUTE,
        summary="Outpaint an image",
        response_class=Response,
        responses={
            200: {"description": "the generated image, exactly img_width x img_height",
                  "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                  "headers": {h: {"schema": {"type": "string"}} for h in ("x-seed", "x-remaining-credits",
                                                                          "x-request-id")}},
            400: error_response("malformed JSON, bad base64, not an image, a field out of range or of the wrong type"),
            401: error_response("missing or unknown x-api-key"),
            406: error_response("not enough credits (nothing charged)", headers=("x-remaining-credits",)),
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
