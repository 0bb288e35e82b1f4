"""The bounded queue in front of the one loaded pipeline.

At most `concurrency` generations run (worker threads: the pipeline holds no per-request state),
at most `max_queue` more wait; past that a request is turned away at once (503) instead of
piling up until every client times out. Each generation runs `pipe.generate` in a worker thread
and, between denoising steps, checks its `Ticket`: a client that disconnected, a deadline that
will pass before the remaining steps are done, or a shutdown that cannot wait stops the loop at the
next step. Finished denoising is never thrown away for the deadline: after the last step the
decode and the answer always follow.

A zoom or a panorama (server/sequences.py) is a chain of outpaints, each needing the one before: it
holds one slot and one worker for the whole chain (`run_sequence`), its steps checked like any.

A request takes its slot *before* its body is read (server/app.py), so the queue bound also bounds
how many bodies are in memory and being decoded at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from outpaint.core.errors import Cancelled
from outpaint.core.heap import return_free_heap
from outpaint.engine.canvas import SourceImage
from outpaint.engine.loop import StepEvent
from outpaint.engine.pipeline import Outpainter, OutpaintResult
from outpaint.engine.request import OutpaintRequest

from .cost import StepCost

R = TypeVar("R")


class QueueFull(Exception):
    """More requests are running and waiting than the queue allows."""


class Draining(Exception):
    """The server is shutting down: it finishes what it has and takes nothing new."""


class DeadlineExceeded(Exception):
    """The request's time budget (queue wait included) ran out, or will before its last step."""


class Aborted(Exception):
    """The server stopped waiting for this generation: a second signal or the drain timeout."""


@dataclass(eq=False)  # hashed by identity: the gate keeps a set of the running ones
class Ticket:
    """One admitted generation: how the request side tells the worker to stop."""

    deadline: float  # time.monotonic() after which the generation stops
    disconnected: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)  # the server is exiting now
    started: float | None = None  # monotonic time a worker picked it up

    def check(self, seconds_left_to_run: float | None = 0.0) -> None:
        """Raise if the generation should stop; `seconds_left_to_run` is the estimate of the steps
        still to come, so a deadline that will pass before them stops the work now, not at the end.
        None: no step is left, and finished denoising is never thrown away for the deadline."""
        if self.aborted.is_set():
            raise Aborted("the server is shutting down and could not wait for this generation")
        if self.disconnected.is_set():
            raise Cancelled("the client disconnected")
        if seconds_left_to_run is not None and time.monotonic() + seconds_left_to_run > self.deadline:
            raise DeadlineExceeded("the request would not finish within the server's time limit")


class Gate:
    """Admission (event-loop side, no lock needed: one thread) and the worker threads."""

    def __init__(
        self,
        pipeline: Outpainter,
        *,
        concurrency: int = 1,
        max_queue: int = 8,
        on_step: Callable[[float], None] = lambda seconds: None,
        when_idle: Callable[[], object] = return_free_heap,
    ) -> None:
        if concurrency < 1 or max_queue < 0:
            raise ValueError(f"concurrency must be >= 1 and max_queue >= 0, got {concurrency}, {max_queue}")
        self.pipeline = pipeline
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.on_step = on_step
        # Called in the worker when the last running generation ends: nothing is mid-run to slow down,
        # and the freed buffers go back to the system (core/heap.py).
        self.when_idle = when_idle
        self.admitted = 0  # running + waiting
        self.running = 0
        self.draining = False
        self.cost = StepCost()  # seconds per UNet call by canvas, learned from the steps run
        self._tickets: set[Ticket] = set()  # admitted generations in the workers, for abort_all()
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="outpaint-generate")
        self._running_lock = threading.Lock()
        self._recent_seconds = 0.0  # moving average of a generation's duration, for Retry-After
        self.last_step_at: float | None = None  # monotonic time the runtime last finished a step (health checks)

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def idle(self) -> bool:
        return self.admitted == 0

    def retry_after_seconds(self) -> int:
        """How long a turned-away client should wait: the queue ahead of it, at the recent pace."""
        per_request = self._recent_seconds or 1.0
        return max(1, math.ceil(per_request * max(1, self.admitted) / self.concurrency))

    def admit(self) -> None:
        """Take a slot or raise QueueFull / Draining. Synchronous: no other request interleaves."""
        self.check()
        self.admitted += 1

    def check(self) -> None:
        """Raise QueueFull / Draining if a request arriving now would be turned away."""
        if self.draining:
            raise Draining("the server is shutting down")
        if self.admitted >= self.concurrency + self.max_queue:
            raise QueueFull(
                f"{self.running} generations running and {self.waiting} waiting: the queue "
                f"(max {self.max_queue}) is full"
            )

    def release(self) -> None:
        self.admitted -= 1

    async def run(
        self, source: SourceImage, request: OutpaintRequest, ticket: Ticket, encode: Callable[[OutpaintResult], Any],
        on_step: Callable[[StepEvent], None] | None = None,
    ) -> tuple[OutpaintResult, Any]:
        """Generate in a worker thread (the caller has admitted it); returns (result, encode(result)).
        `on_step` is called in the worker after every step that goes on (a job's progress, server/jobs.py).

        The caller must `release()` afterwards. If this coroutine is cancelled, the worker is told to
        stop and is awaited before the cancellation propagates, so a slot is never freed while a
        generation still occupies a worker.
        """
        return await self._in_worker(ticket, self._generate, source, request, ticket, encode, on_step)

    async def run_sequence(self, work: Callable[[Outpainter, Ticket], R], outpaints: int, ticket: Ticket) -> R:
        """Run `work(pipeline, ticket)` in a worker: a chain of exactly `outpaints` generations (a zoom,
        a panorama) in the one slot the caller admitted, as `run` does for one. `pipeline` is this
        gate's, with every step recorded and checked against `ticket` as `run` checks a single
        generation's, the outpaints still to come counted in the time left; `work` checks the ticket
        itself in any long work of its own. Running more or fewer outpaints than `outpaints` (what
        the caller charges for) is an error, not a silent difference."""
        return await self._in_worker(ticket, self._sequence, work, outpaints, ticket)

    async def _in_worker(self, ticket: Ticket, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            ticket.disconnected.set()
            with contextlib.suppress(Exception):  # the caller is already handling a cancellation
                await future
            raise

    @contextlib.contextmanager
    def _running(self, ticket: Ticket) -> Iterator[None]:
        ticket.check()  # it may have waited in the queue past its deadline, or its client left
        ticket.started = time.monotonic()
        with self._running_lock:
            self.running += 1
            self._tickets.add(ticket)
        try:
            yield
        finally:
            with self._running_lock:
                self.running -= 1
                self._tickets.discard(ticket)
                none_running = self.running == 0
            if none_running:
                self.when_idle()

    def _step(self, event: StepEvent, request: OutpaintRequest, ticket: Ticket, outpaints_after: int = 0) -> None:
        """Record one denoising step and stop the work if it should: `outpaints_after` more outpaints
        of as many steps follow this one's."""
        self.last_step_at = time.monotonic()
        self.on_step(event.seconds)
        self.cost.record(request, event.seconds)
        steps_left = event.total - event.index - 1 + outpaints_after * event.total
        ticket.check(steps_left * event.seconds if steps_left else None)

    def _generate(
        self, source: SourceImage, request: OutpaintRequest, ticket: Ticket, encode: Callable[[OutpaintResult], Any],
        on_step: Callable[[StepEvent], None] | None = None,
    ) -> tuple[OutpaintResult, Any]:
        with self._running(ticket):
            generator = self.pipeline.generate(source, request)
            try:
                for item in generator:
                    if isinstance(item, StepEvent):
                        self._step(item, request, ticket)
                        if on_step is not None:
                            on_step(item)
                    elif isinstance(item, OutpaintResult):
                        encoded = encode(item)
                        assert ticket.started is not None
                        self._remember(time.monotonic() - ticket.started)
                        return item, encoded
            finally:
                generator.close()  # stops the denoising loop where it is
            raise Cancelled("the generation ended without a result")

    def _sequence(self, work: Callable[[Outpainter, Ticket], R], outpaints: int, ticket: Ticket) -> R:
        with self._running(ticket):
            checked = _CheckedPipeline(self, ticket, outpaints)
            result = work(checked, ticket)
            if checked.left:
                raise RuntimeError(f"the sequence ran {outpaints - checked.left} outpaints, "
                                   f"{outpaints} were planned and reserved")
            assert ticket.started is not None
            self._remember((time.monotonic() - ticket.started) / outpaints)
            return result

    def _remember(self, seconds: float) -> None:
        self._recent_seconds = seconds if not self._recent_seconds else 0.8 * self._recent_seconds + 0.2 * seconds

    def overdue(self, margin_s: float) -> int:
        """How many running generations are past their deadline by more than `margin_s`: a worker
        that stopped making steps (each step checks the deadline, so a live one ends near it)."""
        now = time.monotonic()
        with self._running_lock:
            return sum(1 for ticket in self._tickets if now > ticket.deadline + margin_s)

    def abort_all(self) -> None:
        """Stop every generation at its next step (each answers 503 and is refunded)."""
        for ticket in list(self._tickets):
            ticket.aborted.set()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _CheckedPipeline:
    """The gate's pipeline as a sequence's work sees it: each generation's steps go through the gate's
    `_step`, with the outpaints still planned after it, and no more than the planned ones run."""

    def __init__(self, gate: Gate, ticket: Ticket, outpaints: int) -> None:
        self._gate = gate
        self._ticket = ticket
        self.left = outpaints

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return self._gate.pipeline.scheduler_names

    def generate(
        self, source: SourceImage | bytes, request: OutpaintRequest, *, noise: np.ndarray | None = None
    ) -> Generator[StepEvent | OutpaintResult, None, None]:
        if self.left < 1:
            raise RuntimeError("the sequence asked for more outpaints than were planned and reserved")
        self.left -= 1
        after = self.left
        generator = self._gate.pipeline.generate(source, request, noise=noise)
        try:
            for item in generator:
                if isinstance(item, StepEvent):
                    self._gate._step(item, request, self._ticket, after)
                yield item
        finally:
            generator.close()

