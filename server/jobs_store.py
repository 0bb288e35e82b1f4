"""Asynchronous jobs as rows of the credits store: the queue, their progress, their results.

A job is one row of `jobs`, in the same database as the keys and balances (SQLite or PostgreSQL),
so a restart loses none and any replica sharing the database can run, follow or serve it:

- submit (`submit_job`): the credit reservation and the row are inserted in one transaction, after
  every check of the request (bad input never makes a row or a reservation). The reservation's
  owner is `job:<id>` with a lease that never expires: the job, not a process's lease, settles it;
- claim (`claim_job`): a process with a free generation slot takes the oldest queued job and marks it
  running under its own identity (owners.py) with a lease; PostgreSQL skips rows other replicas are
  claiming (`FOR UPDATE SKIP LOCKED`), SQLite serialises the writers anyway;
- progress (`job_progress`): the running process writes the step and the latest preview, renewing
  its lease; a write that finds the row no longer running under it (cancelled, or taken over after
  its lease expired) tells it to stop;
- finish (`finish_job`): the JPEG stored, the reservation charged, and the Idempotency-Key's response
  kept, in one transaction: charged exactly when the image exists; fail and cancel refund in theirs;
- sweep (`sweep_jobs`, at start and periodically): a running job whose process is certainly dead
  (owners.py) or whose lease expired is queued again (at most MAX_ATTEMPTS runs in all) or failed and
  refunded; finished jobs past their retention are deleted with their results.

Every transition is one conditional UPDATE on the row's status (and owner), so two processes doing
the same transition do it once, and a settled reservation is never settled again. A finished job
keeps the identity of the process that ran it last in `owner` (for operators and tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from . import idempotency_store as idem
from .owners import is_certainly_dead, is_this_process, this_process
from .sql import Tx

log = logging.getLogger("outpaint.server.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
# A job runs at most this often: a process that dies while running it (killed, out of memory) gets it
# queued again once; dying a second time fails it, refunded, rather than crash-looping every server.
MAX_ATTEMPTS = 2
OWNER_PREFIX = "job:"  # of a job's credit reservation
# The reservation of a job is settled by the job (charged with its result, refunded when it fails or
# is cancelled), never by a lease: its lease is this far away (the year 9999), so no sweep, not even
# one of an older outpaint sharing the database, refunds a job that is only waiting in the queue.
NEVER = 253402300799.0

# Version 3 (SQLite) and 2 (PostgreSQL) of the credits schema add this table.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        key_id INTEGER NOT NULL REFERENCES api_keys(id),
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        request TEXT NOT NULL,
        source BLOB,
        amount INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        steps INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        lease_until REAL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        expires_at REAL,
        preview BLOB,
        preview_width INTEGER,
        preview_height INTEGER,
        result BLOB,
        seam_score REAL,
        warnings TEXT,
        error TEXT,
        error_status INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key_id, status)",
)
POSTGRES_SCHEMA = tuple(
    statement.replace("INTEGER NOT NULL REFERENCES", "BIGINT NOT NULL REFERENCES")
    .replace("seed INTEGER", "seed BIGINT").replace("BLOB", "BYTEA").replace(" REAL", " DOUBLE PRECISION")
    for statement in SCHEMA
)

# The columns every read returns (the result and the source only where asked for).
_COLUMNS = ("id, key_id, status, amount, seed, width, height, step, steps, attempts, owner, created_at, "
            "started_at, finished_at, expires_at, seam_score, warnings, error, error_status, preview_width, "
            "preview_height")


@dataclass(frozen=True)
class JobRow:
    id: str
    key_id: int
    status: str
    amount: int
    seed: int
    width: int
    height: int
    step: int
    steps: int
    attempts: int
    owner: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    seam_score: float | None
    warnings: str | None
    error: str | None
    error_status: int | None
    preview_width: int | None
    preview_height: int | None
    preview: bytes | None = None  # when read with_preview
    result: bytes | None = None  # when read with_result

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class NewJob:
    """What a submit stores: the validated request (seed resolved) and the source image file."""

    id: str
    request: dict[str, Any]
    source: bytes
    seed: int
    width: int
    height: int
    steps: int


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    key_id: int
    amount: int
    request: dict[str, Any]
    source: bytes
    steps: int
    attempts: int


@dataclass(frozen=True)
class JobLimits:
    per_key: int = 4  # queued + running jobs of one API key
    total: int = 64  # queued + running jobs in the whole store
    retention_s: float = 24 * 3600.0  # a finished job (and its result) is deleted this long after it finished


DEFAULT_RETENTION_S = JobLimits().retention_s


class TooManyJobs(Exception):
    """The key, or the whole store, has as many unfinished jobs as allowed."""

    def __init__(self, message: str, *, per_key: bool) -> None:
        super().__init__(message)
        self.per_key = per_key


# The jobs this process runs (ids): their leases are renewed and no sweep of this process takes them.
_mine: set[str] = set()
_mine_lock = threading.Lock()


def _running_here() -> frozenset[str]:
    with _mine_lock:
        return frozenset(_mine)


def release_local(job_id: str) -> None:
    """This process no longer runs `job_id` (it finished, failed, or was given up)."""
    with _mine_lock:
        _mine.discard(job_id)


class JobsMixin:
    """The job operations of a credits store (credits.LeasedCreditStore mixes them in)."""

    idempotency: idem.Limits
    lease_s: float
    job_retention_s: float = DEFAULT_RETENTION_S  # of the jobs the sweep fails (the server sets its own)
    _skip_locked: str = ""  # " FOR UPDATE SKIP LOCKED" where the database has row locks
    _for_update: str = ""  # " FOR UPDATE" there

    @abstractmethod
    def _tx(self, *, quick_commit: bool = False) -> contextlib.AbstractContextManager[Tx]: ...

    @abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Tx]: ...

    @abstractmethod
    def _lock_key(self, tx: Tx, key_id: int) -> None: ...

    @abstractmethod
    def _lock_idempotency(self, tx: Tx) -> None: ...

    @abstractmethod
    def _lock_jobs(self, tx: Tx) -> None:
        """Serialise submits (the bounds on unfinished jobs count rows of every key)."""

    @staticmethod
    @abstractmethod
    def _reserve_in(tx: Tx, key_id: int, amount: int, request_id: str, owner: str, now: float,
                    expires: float, claim: idem.Claim | None) -> Any: ...

    @staticmethod
    @abstractmethod
    def _refund_in(tx: Tx, request_id: str, *, expired_by: float | None = None) -> bool: ...

    # -- submit ----------------------------------------------------------------------------------

    def submit_job(self, key_id: int, amount: int, job: NewJob, limits: JobLimits, *,
                   claim: idem.Claim | None = None) -> Any:
        """Reserve `amount` for `job` and queue it, in one transaction; the Reservation, or None when
        the balance is short (nothing stored). Raises TooManyJobs, KeyRevoked, or the key's
        IdempotencyOutcome (nothing stored either)."""
        now = time.time()
        with self._tx() as tx:
            if claim is not None:
                self._lock_key(tx, key_id)
            self._lock_jobs(tx)
            outcome = None if claim is None else idem.check_in(tx, key_id, claim, now, self.idempotency)
            if outcome is None:
                mine, everyone = tx.execute(
                    "SELECT COALESCE(SUM(CASE WHEN key_id = ? THEN 1 ELSE 0 END), 0), COUNT(*) FROM jobs "
                    "WHERE status IN ('queued', 'running')", (key_id,)).fetchone()
                if int(mine) >= limits.per_key:
                    raise TooManyJobs(f"this key already has {mine} unfinished jobs, the most this server allows "
                                      f"per key ({limits.per_key}); wait for one to finish or cancel one",
                                      per_key=True)
                if int(everyone) >= limits.total:
                    raise TooManyJobs(f"the job queue is full ({everyone} unfinished jobs); retry later", per_key=False)
                reservation = self._reserve_in(tx, key_id, amount, job.id, OWNER_PREFIX + job.id, now, NEVER, claim)
                if reservation is not None:
                    tx.execute(
                        """INSERT INTO jobs (id, key_id, status, request, source, amount, seed, width, height,
                                             steps, created_at)
                           VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (job.id, key_id, json.dumps(job.request), job.source, amount, job.seed, job.width,
                         job.height, job.steps, now))
        if outcome is not None:
            raise outcome
        return reservation

    # -- reading ---------------------------------------------------------------------------------

    def get_job(self, job_id: str, key_id: int | None, *, with_preview: bool = False,
                with_result: bool = False) -> JobRow | None:
        """The job, or None when there is none of that id for `key_id` (None: any key)."""
        extra = (", preview" if with_preview else ", NULL") + (", result" if with_result else ", NULL")
        where, args = ("id = ?", (job_id,)) if key_id is None else ("id = ? AND key_id = ?", (job_id, key_id))
        with self._read() as conn:
            row = conn.execute(f"SELECT {_COLUMNS}{extra} FROM jobs WHERE {where}", args).fetchone()
        return None if row is None else _job_row(row)

    def list_jobs(self) -> list[JobRow]:
        """Every job (without previews and results), oldest first: for tests and operators."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS}, NULL, NULL FROM jobs ORDER BY created_at, id").fetchall()
        return [_job_row(row) for row in rows]

    # -- running ---------------------------------------------------------------------------------

    def has_queued_job(self) -> bool:
        """A plain read: an idle server's look for work takes no write lock (and no generation slot)."""
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone() is not None

    def claim_job(self, lease_s: float | None = None) -> ClaimedJob | None:
        """Take the oldest queued job to run in this process, or None when none is queued."""
        now = time.time()
        lease = now + (self.lease_s if lease_s is None else lease_s)
        claimed = None
        try:
            with self._tx() as tx:
                row = tx.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
                                 + self._skip_locked).fetchone()
                if row is None:
                    return None
                claimed = row[0]
                with _mine_lock:  # before the commit: no sweep of ours may see it running unheld
                    _mine.add(claimed)
                found = tx.execute(
                    """UPDATE jobs SET status = 'running', owner = ?, lease_until = ?, started_at = ?, step = 0,
                                       attempts = attempts + 1
                       WHERE id = ? AND status = 'queued'
                       RETURNING id, key_id, amount, request, source, steps, attempts""",
                    (this_process(), lease, now, claimed)).fetchone()
                if found is None:  # claimed by another process between the two statements (SQLite cannot)
                    release_local(claimed)
                    return None
        except BaseException:
            if claimed is not None:
                release_local(claimed)
            raise
        return ClaimedJob(found[0], int(found[1]), int(found[2]), json.loads(found[3]), bytes(found[4]),
                          int(found[5]), int(found[6]))

    def job_progress(self, job_id: str, step: int, steps: int, preview: bytes | None,
                     preview_size: tuple[int, int] | None, lease_s: float | None = None) -> bool:
        """Record `step` of `steps` and the latest preview of a job this process runs, renewing its
        lease. False when the job is no longer running here (cancelled, or taken over): stop it."""
        lease = time.time() + (self.lease_s if lease_s is None else lease_s)
        width, height = preview_size or (None, None)
        with self._tx() as tx:
            cursor = tx.execute(
                """UPDATE jobs SET step = ?, steps = ?, preview = COALESCE(?, preview),
                                   preview_width = COALESCE(?, preview_width),
                                   preview_height = COALESCE(?, preview_height), lease_until = ?
                   WHERE id = ? AND status = 'running' AND owner = ?""",
                (step, steps, preview, width, height, lease, job_id, this_process()))
            return cursor.rowcount == 1

    def finish_job(self, job_id: str, jpeg: bytes, seam_score: float | None, warnings: list[str],
                   retention_s: float, replay: tuple[dict[str, str], bytes] | None = None) -> int | None:
        """Store the result of a job this process ran and charge its reservation, in one transaction.
        `replay`: the headers and body an Idempotency-Key retry of its submit is answered with.
        Returns the credits charged, or None when the job was no longer running here (cancelled:
        already refunded; nothing is stored or charged)."""
        now = time.time()
        try:
            with self._tx() as tx:
                self._lock_idempotency(tx)  # first, as every transaction that takes it
                cursor = tx.execute(
                    """UPDATE jobs SET status = 'succeeded', result = ?, seam_score = ?, warnings = ?, step = steps,
                                       finished_at = ?, expires_at = ?, source = NULL, lease_until = NULL
                       WHERE id = ? AND status = 'running' AND owner = ?""",
                    (jpeg, seam_score, json.dumps(warnings), now, now + retention_s, job_id, this_process()))
                if cursor.rowcount != 1:
                    return None
                row = tx.execute("DELETE FROM reservations WHERE request_id = ? RETURNING key_id, amount",
                                 (job_id,)).fetchone()
                if row is None:
                    log.error("job %s succeeded but its reservation was already closed: not charged", job_id)
                    return 0
                tx.execute("INSERT INTO charges (request_id, key_id, amount, charged_at) VALUES (?, ?, ?, ?)",
                           (job_id, row[0], row[1], now))
                if replay is not None:
                    idem.store_in(tx, job_id, replay[0], replay[1], now, self.idempotency)
                return int(row[1])
        finally:
            release_local(job_id)

    def fail_job(self, job_id: str, error: str, status: int, retention_s: float) -> bool:
        """Fail a job this process ran and refund it. False when it was no longer running here."""
        now = time.time()
        try:
            with self._tx() as tx:
                cursor = tx.execute(
                    """UPDATE jobs SET status = 'failed', error = ?, error_status = ?, finished_at = ?, expires_at = ?,
                                       source = NULL, lease_until = NULL
                       WHERE id = ? AND status = 'running' AND owner = ?""",
                    (error, status, now, now + retention_s, job_id, this_process()))
                if cursor.rowcount != 1:
                    return False
                self._refund_in(tx, job_id)
                return True
        finally:
            release_local(job_id)

    def requeue_job(self, job_id: str) -> bool:
        """Put a job this process runs back in the queue, this run not counted (the server is stopping)."""
        try:
            with self._tx() as tx:
                cursor = tx.execute(
                    """UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, step = 0, started_at = NULL,
                                       attempts = attempts - 1
                       WHERE id = ? AND status = 'running' AND owner = ?""", (job_id, this_process()))
                return cursor.rowcount == 1
        finally:
            release_local(job_id)

    def cancel_job(self, job_id: str, key_id: int, retention_s: float) -> tuple[str, JobRow] | None:
        """Cancel a queued or running job of `key_id` and refund it, in one transaction. Returns (its
        status before, the job now), or None when `key_id` has no such job. A succeeded, failed or
        cancelled job is returned unchanged."""
        now = time.time()
        with self._tx() as tx:
            row = tx.execute("SELECT status FROM jobs WHERE id = ? AND key_id = ?" + self._for_update,
                             (job_id, key_id)).fetchone()
            if row is None:
                return None
            before = row[0]
            if before in (QUEUED, RUNNING):
                tx.execute("""UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ?, source = NULL,
                                             lease_until = NULL
                              WHERE id = ?""", (now, now + retention_s, job_id))
                self._refund_in(tx, job_id)
        job = self.get_job(job_id, key_id, with_preview=False)
        assert job is not None
        return before, job

    # -- leases and the sweep --------------------------------------------------------------------

    def renew_job_leases(self, lease_s: float | None = None) -> int:
        mine = _running_here()
        if not mine:
            return 0
        lease = time.time() + (self.lease_s if lease_s is None else lease_s)
        owner = this_process()
        with self._tx() as tx:
            cursor = tx.executemany("UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running' AND owner = ?",
                                    [(lease, job_id, owner) for job_id in sorted(mine)])
            return cursor.rowcount

    def sweep_jobs(self) -> tuple[int, int, int]:
        """Queue again (or fail and refund, after MAX_ATTEMPTS runs) the running jobs nobody runs any
        more: not this process's, and whose lease expired or whose process is certainly dead (or that
        name this process without it running them). Delete the finished jobs past their retention
        (`expires_at`, set when they finished from the retention then). Returns (queued again,
        failed, deleted)."""
        now = time.time()
        with self._read() as conn:
            rows = conn.execute("SELECT id, owner, lease_until, attempts FROM jobs WHERE status = 'running'").fetchall()
        mine = _running_here()  # read after the rows, as refund_orphans reads its holds
        requeued = failed = 0
        for job_id, owner, lease_until, attempts in rows:
            if job_id in mine:
                continue
            expired = lease_until is not None and lease_until <= now
            if not (expired or is_this_process(owner or "") or is_certainly_dead(owner or "")):
                continue
            condition = "id = ? AND status = 'running' AND owner = ?" + (" AND lease_until <= ?" if expired else "")
            args = (job_id, owner, now) if expired else (job_id, owner)
            with self._tx() as tx:
                if attempts < MAX_ATTEMPTS:
                    cursor = tx.execute("UPDATE jobs SET status = 'queued', owner = NULL, lease_until = NULL, "
                                        f"step = 0, started_at = NULL WHERE {condition}", args)
                    requeued += cursor.rowcount
                else:
                    message = (f"the server running this job stopped {attempts} times while running it; it is not "
                               "run again, and nothing was charged")
                    keep = self.job_retention_s
                    cursor = tx.execute(
                        "UPDATE jobs SET status = 'failed', error = ?, error_status = 500, finished_at = ?, "
                        f"expires_at = ?, source = NULL, lease_until = NULL WHERE {condition}",
                        (message, now, now + keep, *args))
                    if cursor.rowcount == 1:
                        self._refund_in(tx, job_id)
                        failed += 1
        with self._tx() as tx:
            deleted = tx.execute("DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
                                 "AND expires_at <= ?", (now,)).rowcount
        if requeued or failed:
            log.warning("jobs left running by a stopped process: %d queued again, %d failed and refunded",
                        requeued, failed)
        return requeued, failed, deleted


def _job_row(row: Any) -> JobRow:
    values = list(row)
    preview, result = values[-2], values[-1]
    return JobRow(*values[:-2], preview=None if preview is None else bytes(preview),
                  result=None if result is None else bytes(result))
