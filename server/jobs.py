"""Asynchronous jobs over HTTP: submit, status, events (Server-Sent Events), result, cancel; the
worker that runs them; and GET /v1/user/balance.

`POST {ROUTE}/jobs` takes the blocking route's body through the very same `serve` (app.py): key,
balance, queue slot for the body, content type, size, JSON, fields, image decode, feasibility and
Idempotency-Key, each with the same error. Then, instead of running, the request (seed resolved)
and its source image file are stored as a queued job with its credit reservation, in one
transaction (jobs_store.py), and the answer is 202 with the job's status and its Location.

Each server process (each Ray Serve replica too) runs a `JobRunner`: whenever its gate has a free
generation slot (no blocking request waiting for one), it claims the oldest queued job of the store,
whichever process took it in, and runs it in that slot like a blocking request (same pipeline, same
deadline per run, same JPEG), writing its progress to the row and publishing every step's preview
to the event streams of this process. The image is stored and charged in one transaction; a failure
or a cancel refunds. The row is the source of truth: an event stream on another process follows
the row (at the pace of its progress writes), one on the process running the job gets every step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse, Response, StreamingResponse

from outpaint.core.errors import Cancelled, InvalidRequest
from outpaint.engine.canvas import decode_image
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import draw_seed
from outpaint.engine.preview import preview_jpeg
from outpaint.engine.request import OutpaintRequest
from outpaint.engine.schedulers.base import skip_for_strength

from .app import API_KEY, ROUTE, Call, Job, OutpaintService, from_invalid, seam_header, warning_headers
from .errors import ApiError
from .gate import Aborted, DeadlineExceeded, Ticket
from .idempotency import ORIGINAL_REQUEST_ID, REPLAYED, Replay
from .jobs_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    ClaimedJob,
    JobRow,
    NewJob,
    TooManyJobs,
    release_local,
)
from .schema import error_response, request_schema

log = logging.getLogger("outpaint.server.jobs")
JOBS_ROUTE = ROUTE + "/jobs"
BALANCE_ROUTE = "/v1/user/balance"
IDLE_POLL_S = 1.0  # how often an idle runner looks for jobs other processes queued
BUSY_POLL_S = 0.2  # how often a runner whose slots are taken looks for a free one
STREAM_POLL_S = 1.0  # how often an event stream re-reads its job's row
KEEPALIVE_S = 15.0  # a comment line on a quiet event stream, so proxies keep it open
PROGRESS_EVERY_S = 0.5  # the row's step and preview are written at most this often (and on the last step)
MAX_QUEUED_EVENTS = 256  # per event stream; past that the oldest step events are dropped
NO_STORE = ("asynchronous jobs live in the credits store: this server runs with --no-auth, without one; "
            "start it with --db to use them")


# -- the status object ---------------------------------------------------------------------------


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def links(job_id: str) -> dict[str, str]:
    base = f"{JOBS_ROUTE}/{job_id}"
    return {"self": base, "events": base + "/events", "result": base + "/result", "cancel": base + "/cancel"}


def status_object(row: JobRow) -> dict[str, Any]:
    return {
        "id": row.id, "status": row.status, "step": row.step, "steps": row.steps, "seed": row.seed,
        "width": row.width, "height": row.height, "created_at": iso(row.created_at),
        "started_at": iso(row.started_at), "finished_at": iso(row.finished_at), "expires_at": iso(row.expires_at),
        "seam_score": row.seam_score, "attempts": row.attempts,
        "error": None if row.error is None else {"error": row.error, "status": row.error_status},
        "links": links(row.id),
    }


_TIME = {"type": ["string", "null"], "format": "date-time"}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "step": {"type": "integer", "description": "denoising steps done"},
        "steps": {"type": "integer", "description": "denoising steps of the whole request (both passes of a "
                                                    "large canvas, numbered as the step events number them)"},
        "seed": {"type": "integer", "description": "the seed used (a -1 of the request is drawn at submit)"},
        "width": {"type": "integer"}, "height": {"type": "integer"},
        "created_at": _TIME, "started_at": _TIME, "finished_at": _TIME,
        "expires_at": {**_TIME, "description": "when the job and its result are deleted (null until finished)"},
        "seam_score": {"type": ["number", "null"], "description": "as x-seam-score, once succeeded"},
        "attempts": {"type": "integer", "description": "runs started (a run a stopped server left is re-run once)"},
        "error": {"type": ["object", "null"],
                  "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                  "description": "why it failed: the message and the HTTP status the blocking route would answer"},
        "links": {"type": "object", "properties": {name: {"type": "string"}
                                                   for name in ("self", "events", "result", "cancel")}},
    },
    "required": ["id", "status", "step", "steps", "seed", "width", "height", "created_at", "links"],
}


def _status_response(description: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": STATUS_SCHEMA}}}
    if headers:
        doc["headers"] = {h: {"schema": {"type": "string"}} for h in headers}
    return doc


# -- in-process events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepData:
    step: int  # steps done
    steps: int
    preview: bytes  # JPEG
    width: int
    height: int

    def event(self) -> dict[str, Any]:
        return {"step": self.step, "steps": self.steps, "preview": base64.b64encode(self.preview).decode(),
                "preview_type": "image/jpeg", "width": self.width, "height": self.height}


STATUS_CHANGED = "status"  # what a stream's queue gets besides StepData: re-read the row


class JobEvents:
    """The event streams of this process, by job: step previews from the worker threads, status
    changes from the event loop."""

    def __init__(self) -> None:
        self._streams: dict[str, set[asyncio.Queue]] = {}
        self._latest: dict[str, StepData] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, job_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(MAX_QUEUED_EVENTS)
        self._streams.setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        streams = self._streams.get(job_id)
        if streams is not None:
            streams.discard(queue)
            if not streams:
                del self._streams[job_id]

    def latest(self, job_id: str) -> StepData | None:
        with self._lock:
            return self._latest.get(job_id)

    def publish_step(self, job_id: str, data: StepData) -> None:
        """From a worker thread."""
        with self._lock:
            self._latest[job_id] = data
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver, job_id, data)

    def status_changed(self, job_id: str, *, finished: bool = False) -> None:
        """On the event loop."""
        if finished:
            with self._lock:
                self._latest.pop(job_id, None)
        self._deliver(job_id, STATUS_CHANGED)

    def _deliver(self, job_id: str, item: StepData | str) -> None:
        for queue in self._streams.get(job_id, ()):
            if queue.full():  # a slow reader loses old previews, never the newest or a status change
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)


# -- the worker ----------------------------------------------------------------------------------


class Progress:
    """A running job's step callback, in the worker thread: preview, events, the row."""

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self.runner = runner
        self.job_id = job_id
        self.last_write = 0.0

    def __call__(self, event: StepEvent) -> None:
        done, total = event.index + 1, event.total
        preview, width, height = preview_jpeg(event.latents)
        self.runner.events.publish_step(self.job_id, StepData(done, total, preview, width, height))
        now = time.monotonic()
        if now - self.last_write < PROGRESS_EVERY_S and done < total:
            return
        self.last_write = now
        store = self.runner.service.store
        assert store is not None
        try:
            still_ours = store.job_progress(self.job_id, done, total, preview, (width, height))
        except Exception:  # a busy database costs a progress write, not the job
            log.exception("could not record the progress of job %s", self.job_id)
            return
        if not still_ours:
            raise Cancelled(f"job {self.job_id} was cancelled or taken over")


class JobRunner:
    """Claims queued jobs from the store whenever this process's gate has a free slot, and runs them."""

    def __init__(self, service: OutpaintService) -> None:
        self.service = service
        self.events = JobEvents()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tickets: dict[str, Ticket] = {}
        self._runs: set[asyncio.Task] = set()

    def start(self) -> None:
        if self.service.store is None:
            return
        self.events.bind(asyncio.get_running_loop())
        self._task = asyncio.create_task(self._claim_forever(), name="outpaint-jobs")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ticket in list(self._tickets.values()):  # left after the drain: back to the queue
            ticket.aborted.set()
        if self._runs:
            await asyncio.wait(self._runs, timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def cancel_local(self, job_id: str) -> None:
        """Stop the job at its next step if it runs in this process (its row is already cancelled)."""
        ticket = self._tickets.get(job_id)
        if ticket is not None:
            ticket.disconnected.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _claim_forever(self) -> None:
        gate = self.service.gate
        store = self.service.store
        assert store is not None
        while True:
            try:
                if gate.draining or gate.admitted >= gate.concurrency:
                    await self._sleep(BUSY_POLL_S)
                    continue
                if not await asyncio.to_thread(store.has_queued_job):  # looking holds no slot
                    await self._sleep(IDLE_POLL_S)
                    continue
                if gate.draining or gate.admitted >= gate.concurrency:
                    continue
                gate.admit()  # the slot before the claim: a blocking request arriving meanwhile queues behind it
                claiming = asyncio.ensure_future(asyncio.to_thread(store.claim_job))
                try:
                    claimed = await asyncio.shield(claiming)
                except BaseException:
                    gate.release()
                    await self._give_back(claiming)
                    raise
                if claimed is None:
                    gate.release()
                    await self._sleep(IDLE_POLL_S)
                    continue
                run = asyncio.create_task(self._run(claimed))
                self._runs.add(run)
                run.add_done_callback(self._runs.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not claim a job from %s", store.where)
                await asyncio.sleep(IDLE_POLL_S)

    async def _give_back(self, claiming: asyncio.Future) -> None:
        """A claim the runner stopped waiting for (shutdown) may still commit: that job goes back to
        the queue, its attempt not counted, rather than wait for the sweep to find its owner dead."""
        store = self.service.store
        assert store is not None
        with contextlib.suppress(Exception):
            late = await claiming
            if late is not None:
                await asyncio.to_thread(store.requeue_job, late.id)

    async def _run(self, claimed: ClaimedJob) -> None:
        """Run one claimed job in the slot admitted for it, and settle it."""
        service = self.service
        store = service.store
        assert store is not None
        job_id = claimed.id
        ticket = Ticket(deadline=time.monotonic() + service.config.timeout_s)
        self._tickets[job_id] = ticket
        self.events.status_changed(job_id)
        retention = service.config.job_retention_s
        try:
            request = OutpaintRequest(**claimed.request)
            source = await asyncio.to_thread(decode_image, claimed.source, max_pixels=service.config.max_image_pixels)
            started = time.perf_counter()
            result, jpeg = await service.gate.run(source, request, ticket, service.encode, Progress(self, job_id))
            service.metrics.generation_seconds.observe(time.perf_counter() - started)
            replay = ({"content-type": "application/json", "location": links(job_id)["self"]},
                      json.dumps({"id": job_id}).encode())
            charged = await asyncio.to_thread(store.finish_job, job_id, jpeg, result.seam, list(result.warnings),
                                              retention, replay)
            if charged:
                service.metrics.credits_charged.inc(charged)
        except Cancelled:  # by its key (the cancel refunded it), or taken over by another process
            release_local(job_id)
        except Aborted:  # the server is stopping and could not wait: another run will do it
            await asyncio.to_thread(store.requeue_job, job_id)
        except DeadlineExceeded:
            await self._fail(job_id, 503, f"the job would not finish within the server's time limit of "
                                          f"{service.config.timeout_s:g} s per run, so it was stopped early; "
                                          "nothing was charged")
        except InvalidRequest as exc:
            error = from_invalid(exc)
            await self._fail(job_id, error.status, error.message)
        except Exception:
            log.exception("job %s failed", job_id)
            await self._fail(job_id, 500, f"internal error (job {job_id}); nothing was charged")
        finally:
            self._tickets.pop(job_id, None)
            service.gate.release()
            self.events.status_changed(job_id, finished=True)

    async def _fail(self, job_id: str, status: int, message: str) -> None:
        store = self.service.store
        assert store is not None
        try:
            if await asyncio.to_thread(store.fail_job, job_id, message, status, self.service.config.job_retention_s):
                self.service.metrics.refunds.labels("job_failed").inc()
        except Exception:  # left running under this process: the next sweep queues it again or fails it
            log.exception("could not record the failure of job %s", job_id)


# -- the routes ----------------------------------------------------------------------------------


def planned_steps(service: OutpaintService, request: OutpaintRequest) -> int:
    planned = getattr(service.pipeline, "planned_steps", None)
    if planned is not None:
        return int(planned(request))
    return max(1, request.num_inference_steps - skip_for_strength(request.num_inference_steps, request.strength))


def _not_found(job_id: str) -> ApiError:
    # The same answer for another key's job and for none: ids reveal nothing.
    return ApiError(404, f"no job {job_id[:64]!r} for this key: a job is visible only to the key that submitted "
                         "it, until its retention ends", include_field=True)


class JobRoutes:
    """The routes' handlers and the submit step of `serve` (app.Submitter)."""

    def __init__(self, service: OutpaintService, runner: JobRunner) -> None:
        self.service = service
        self.runner = runner

    # -- app.Submitter ---------------------------------------------------------------------------

    async def submit(self, call: Call, request_id: str, job: Job, raw_image: bytes) -> Response:
        service = self.service
        request = job.request
        if request.seed == -1:
            request = dataclasses.replace(request, seed=draw_seed())  # a re-run makes the same image
        queued = NewJob(id=request_id, request=dataclasses.asdict(request), source=raw_image, seed=request.seed,
                        width=request.img_width, height=request.img_height, steps=planned_steps(service, request))
        try:
            await service.reserve(call, request_id, job, queued)
        except TooManyJobs as exc:
            retry = {"retry-after": str(service.gate.retry_after_seconds())}
            raise ApiError(429 if exc.per_key else 503, f"{exc}; nothing was charged", headers=retry) from None
        reservation, call.reservation = call.reservation, None  # the job settles it from now on
        self.runner.wake()
        row = await self._row(request_id, call)
        headers = {"location": links(request_id)["self"]}
        if reservation is not None:
            headers["x-remaining-credits"] = str(reservation.remaining)
        return JSONResponse(status_object(row), status_code=202, headers=headers)

    async def replay(self, replay: Replay, call: Call) -> Response:
        """A retry of a submit whose job was made and charged: that job's status, nothing charged."""
        job_id = replay.stored.request_id
        extra = {REPLAYED: "true", ORIGINAL_REQUEST_ID: job_id, **await self.service.credit_headers(call)}
        try:
            row = await self._row(job_id, call)
        except ApiError:
            return ApiError(409, "the job this Idempotency-Key submitted was deleted after its retention; use a "
                                 "new key to submit again").response(extra)
        return JSONResponse(status_object(row), status_code=202, headers={"location": links(job_id)["self"], **extra})

    # -- handlers --------------------------------------------------------------------------------

    async def _caller(self, api_key: str | None) -> Call:
        if self.service.store is None:
            raise ApiError(503, NO_STORE)
        call = Call(arrived=time.monotonic())
        await self.service.authenticate(api_key, call)
        return call

    async def _row(self, job_id: str, call: Call, *, with_preview: bool = False, with_result: bool = False) -> JobRow:
        store = self.service.store
        assert store is not None and call.key_id is not None
        row = await asyncio.to_thread(store.get_job, job_id, call.key_id, with_preview=with_preview,
                                      with_result=with_result)
        if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
            raise _not_found(job_id)  # past its retention it is gone, whether or not the sweep ran yet
        return row

    @staticmethod
    async def _answer(work: Awaitable[Response]) -> Response:
        try:
            return await work
        except ApiError as err:
            return err.response()

    async def status(self, job_id: str, api_key: str | None) -> Response:
        async def work() -> Response:
            call = await self._caller(api_key)
            return JSONResponse(status_object(await self._row(job_id, call)))

        return await self._answer(work())

    async def result(self, job_id: str, api_key: str | None) -> Response:
        async def work() -> Response:
            call = await self._caller(api_key)
            row = await self._row(job_id, call, with_result=True)
            credits = await self.service.credit_headers(call)
            if row.status == SUCCEEDED and row.result is not None:
                warnings = json.loads(row.warnings or "[]")
                headers = {"x-seed": str(row.seed), **seam_header(row.seam_score), **warning_headers(warnings),
                           **credits}
                return Response(row.result, media_type="image/jpeg", headers=headers)
            if row.status in (QUEUED, RUNNING):
                retry = "1" if row.status == RUNNING else str(self.service.gate.retry_after_seconds())
                return JSONResponse(status_object(row), status_code=202, headers={"retry-after": retry, **credits})
            why = f": {row.error}" if row.status == FAILED and row.error else (
                ", so nothing was charged" if row.status == CANCELLED else "")
            raise ApiError(409, f"job {job_id} {row.status}{why}; it has no result")

        return await self._answer(work())

    async def cancel(self, job_id: str, api_key: str | None) -> Response:
        async def work() -> Response:
            call = await self._caller(api_key)
            store = self.service.store
            assert store is not None and call.key_id is not None
            found = await asyncio.to_thread(store.cancel_job, job_id, call.key_id, self.service.config.job_retention_s)
            if found is None or (found[1].expires_at is not None and found[1].expires_at <= time.time()):
                raise _not_found(job_id)
            before, row = found
            credits = await self.service.credit_headers(call)
            if before == SUCCEEDED:
                raise ApiError(409, f"job {job_id} already succeeded and was charged: its image is made; fetch it "
                                    "from its result link", headers=credits)
            if before in (QUEUED, RUNNING):
                self.runner.cancel_local(job_id)
                self.runner.events.status_changed(job_id, finished=True)
                self.service.metrics.refunds.labels("job_cancelled").inc()
            return JSONResponse(status_object(row), headers=credits)

        return await self._answer(work())

    async def balance(self, api_key: str | None) -> Response:
        async def work() -> Response:
            call = await self._caller(api_key)
            credits = await self.service.credit_headers(call)
            return JSONResponse({"credits": int(credits["x-remaining-credits"])}, headers=credits)

        return await self._answer(work())

    async def events(self, job_id: str, api_key: str | None, request: Request) -> Response:
        try:
            call = await self._caller(api_key)
            row = await self._row(job_id, call, with_preview=True)
        except ApiError as err:
            return err.response()
        last_seen = _last_step(request.headers.get("last-event-id"))
        return StreamingResponse(self._stream(job_id, call, row, last_seen), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def _stream(self, job_id: str, call: Call, first: JobRow, last_seen: int) -> AsyncIterator[bytes]:
        """status now (and the latest preview), then every change, then done. The queue is subscribed
        before the row is read again, so nothing between the two is missed."""
        events = self.runner.events
        queue = events.subscribe(job_id)
        gate = self.service.gate
        try:
            row = await self._reread(job_id, call) or first
            yield _sse("status", status_object(row), f"{row.step}-{row.status}")
            step = last_seen
            latest = events.latest(job_id)
            if latest is not None and latest.step > step:
                yield _sse("step", latest.event(), str(latest.step))
                step = latest.step
            elif first.preview is not None and first.step > step and first.preview_width and first.preview_height:
                yield _sse("step", StepData(first.step, first.steps, first.preview, first.preview_width,
                                            first.preview_height).event(), str(first.step))
                step = first.step
            status = row.status
            quiet_since = time.monotonic()
            while not row.finished:
                try:
                    item = await asyncio.wait_for(queue.get(), STREAM_POLL_S)
                except TimeoutError:
                    item = STATUS_CHANGED
                    if gate.draining and gate.idle():
                        return  # the server is stopping: the client reconnects to another one
                if isinstance(item, StepData):
                    if item.step > step:
                        step = item.step
                        quiet_since = time.monotonic()
                        yield _sse("step", item.event(), str(step))
                    continue
                fresh = await self._reread(job_id, call, with_preview=True)
                if fresh is None:
                    return  # deleted (retention) while followed
                row = fresh
                if row.status != status:
                    status = row.status
                    quiet_since = time.monotonic()
                    yield _sse("status", status_object(row), f"{row.step}-{row.status}")
                if (not row.finished and row.preview is not None and row.step > step and row.preview_width
                        and row.preview_height):  # another process runs it: follow the row
                    step = row.step
                    quiet_since = time.monotonic()
                    yield _sse("step", StepData(row.step, row.steps, row.preview, row.preview_width,
                                                row.preview_height).event(), str(step))
                if time.monotonic() - quiet_since > KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield b": keepalive\n\n"
            yield _sse("done", status_object(row), f"{row.step}-done")
        finally:
            events.unsubscribe(job_id, queue)

    async def _reread(self, job_id: str, call: Call, *, with_preview: bool = False) -> JobRow | None:
        try:
            return await self._row(job_id, call, with_preview=with_preview)
        except ApiError:
            return None


def _sse(event: str, data: dict[str, Any], event_id: str) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _last_step(header: str | None) -> int:
    """The step of a Last-Event-ID we sent (`<step>` or `<step>-<what>`); 0 for none or another."""
    text = (header or "").strip().partition("-")[0]
    return int(text) if text.isdigit() and len(text) < 10 else 0


def register_job_routes(app: FastAPI, service: OutpaintService) -> JobRunner:
    """Add the job routes and GET /v1/user/balance to `app`; returns the runner for the lifespan."""
    runner = JobRunner(service)
    routes = JobRoutes(service, runner)
    schedulers = service.pipeline.scheduler_names
    not_found = error_response("no such job for this key (another key's job, a wrong id, or past its retention)")
    unauthorized = error_response("missing or unknown x-api-key")
    no_store = error_response("the server runs without a credits store (--no-auth): no jobs")
    credits_header = ("x-remaining-credits",)

    @app.post(
        JOBS_ROUTE, summary="Submit an outpaint as a job", status_code=202, response_class=Response,
        description="The blocking route's body, checks, limits, errors and Idempotency-Key; its price is reserved "
                    "now, charged when the image is made, refunded if the job fails or is cancelled. Answers at "
                    "once with the job's status; follow it on its events link, fetch the image from its result link.",
        responses={
            202: _status_response("the job, queued", ("location", "x-remaining-credits")),
            400: error_response("as the blocking route: malformed JSON, bad base64, not an image, a field out of "
                                "range"),
            401: unauthorized,
            406: error_response("not enough credits (nothing stored or charged)", headers=credits_header),
            409: error_response("a request with this Idempotency-Key is still running", headers=("retry-after",)),
            413: error_response("body or decoded image larger than the configured limits, or one run cannot finish "
                                "within the server's time limit"),
            415: error_response("the body is not application/json"),
            422: error_response("this Idempotency-Key was used with another request body or route"),
            429: error_response("this key has --max-jobs-per-key unfinished jobs already", headers=("retry-after",)),
            503: error_response("queue full, draining, --max-queued-jobs unfinished jobs in the store, or no store",
                                headers=("retry-after",)),
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": request_schema(schedulers)}}}},
    )
    async def submit(request: Request, api_key: str | None = Security(API_KEY)) -> Response:
        if service.store is None:
            return ApiError(503, NO_STORE).response()
        return await service.serve(request, api_key, service.single, fingerprint_scope=b"jobs", submitter=routes)

    @app.get(f"{JOBS_ROUTE}/{{job_id}}", summary="A job's status", response_class=Response,
             responses={200: _status_response("the job"), 401: unauthorized, 404: not_found, 503: no_store})
    async def status(job_id: str, api_key: str | None = Security(API_KEY)) -> Response:
        return await routes.status(job_id, api_key)

    @app.get(
        f"{JOBS_ROUTE}/{{job_id}}/result", summary="A job's image", response_class=Response,
        responses={
            200: {"description": "the image, as the blocking route answers it",
                  "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                  "headers": {h: {"schema": {"type": "string"}} for h in ("x-seed", "x-seam-score",
                                                                          "x-remaining-credits", "x-request-id")}},
            202: _status_response("not finished yet: the status", ("retry-after",)),
            401: unauthorized, 404: not_found,
            409: error_response("the job failed or was cancelled: no image (the message names which, and why)"),
            503: no_store,
        },
    )
    async def result(job_id: str, api_key: str | None = Security(API_KEY)) -> Response:
        return await routes.result(job_id, api_key)

    @app.get(
        f"{JOBS_ROUTE}/{{job_id}}/events", summary="A job's progress as Server-Sent Events", response_class=Response,
        description="`event: status` (the status object) now and on every change; `event: step` once per "
                    "denoising step with a small preview (a linear latent-to-RGB projection, base64 JPEG, one pixel "
                    "per latent cell); `event: done` with the final status, then the stream ends. Every event has "
                    "an id; a reconnect with Last-Event-ID gets no preview older than it. Send x-api-key as a header "
                    "(read the stream with fetch(): EventSource cannot send headers).",
        responses={200: {"description": "the event stream", "content": {"text/event-stream": {"schema": {
            "type": "string"}}}}, 401: unauthorized, 404: not_found, 503: no_store},
    )
    async def events(job_id: str, request: Request, api_key: str | None = Security(API_KEY)) -> Response:
        return await routes.events(job_id, api_key, request)

    cancel_doc: dict[str, Any] = {
        "response_class": Response,
        "description": "A queued or running job is cancelled and its credits refunded (a running one stops at its "
                       "next step); a failed or cancelled one is answered unchanged.",
        "responses": {200: _status_response("the job, cancelled (or already failed or cancelled)", credits_header),
                      401: unauthorized, 404: not_found,
                      409: error_response("the job already succeeded: its image is made and charged"), 503: no_store},
    }

    @app.post(f"{JOBS_ROUTE}/{{job_id}}/cancel", summary="Cancel a job", **cancel_doc)
    async def cancel(job_id: str, api_key: str | None = Security(API_KEY)) -> Response:
        return await routes.cancel(job_id, api_key)

    @app.delete(f"{JOBS_ROUTE}/{{job_id}}", summary="Cancel a job (as POST .../cancel)", **cancel_doc)
    async def delete(job_id: str, api_key: str | None = Security(API_KEY)) -> Response:
        return await routes.cancel(job_id, api_key)

    @app.get(
        BALANCE_ROUTE, summary="The key's remaining credits", response_class=Response,
        responses={200: {"description": "the balance",
                         "headers": {"x-remaining-credits": {"schema": {"type": "string"}}},
                         "content": {"application/json": {"schema": {
                             "type": "object", "properties": {"credits": {"type": "integer"}},
                             "required": ["credits"]}}}},
                   401: unauthorized, 503: no_store},
    )
    async def balance(api_key: str | None = Security(API_KEY)) -> Response:
        return await routes.balance(api_key)

    return runner
