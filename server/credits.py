"""API keys and credit balances: what every credits store does, whatever database holds it.

Two stores share this logic: one SQLite file (credits_sqlite.py, one machine, no server process)
and PostgreSQL (credits_postgres.py, many replicas on many machines sharing one balance per key).
`open_store` (store.py) picks one from the `--db` string.

Keys are stored only as SHA-256 hashes: a key is 256 random bits, so a fast hash is enough (no
password stretching needed) and a stolen database reveals no usable key.

A generation pays in two steps, so that neither concurrency nor a crash can lose or invent a debit:

1. `reserve`: one conditional UPDATE (`balance >= price`) takes the credit and records an open
   reservation row in the same transaction, before any compute. Two racing requests can never
   both take the last credit, and the balance can never go negative (a CHECK constraint guards it too).
2. `charge` closes the reservation when the response is being sent (the credit stays spent);
   `refund` closes it and gives the credit back (failure, cancel, disconnect, queue full).

A process killed between the two leaves the reservation open. Every reservation carries a lease
(`expires_at`: now + the server's deadline + a margin); the server that holds it renews it while
the request lives (`keep_leases`, a thread), and anyone refunds a reservation whose lease expired:
a starting server (`refund_orphans`) and every running one (the same thread, periodically), so
after a crash balance == start - images delivered, whatever host, container or PID held it. A
starting server also refunds at once what a certainly dead process of its own boot and PID
namespace left (owners.py), instead of waiting out the lease. The charge and the refund each delete
the reservation row in their transaction, so whichever comes first wins and the other is a no-op:
no double refund, and a late charge of a refunded reservation charges nothing. A sweep's refund is
conditional on what made it an orphan (the lease still expired), so a holder that renewed in between
keeps its reservation.

Each store versions its schema; an older database is migrated in place, in one transaction, when a
newer outpaint opens it, and an older outpaint refuses a newer one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from . import idempotency_store as idem
from .jobs_store import OWNER_PREFIX, JobsMixin
from .owners import is_certainly_dead, is_this_process, this_process
from .sql import Tx

log = logging.getLogger("outpaint.server.credits")
KEY_PREFIX = "op-"
# A lease outlives the request's deadline by this much, for the JPEG encoding and the send after
# the last step, a busy database and clock differences between hosts sharing it.
LEASE_MARGIN_S = 60.0
DEFAULT_LEASE_S = 300.0 + LEASE_MARGIN_S  # for the default --timeout; `outpaint serve` sets its own
# Far below both databases' 64-bit integers: no sum of a few grants can overflow them.
MAX_CREDITS = 10**15

__all__ = ["KEY_PREFIX", "LEASE_MARGIN_S", "CreditError", "KeyInfo", "KeyRevoked", "LeasedCreditStore",
           "Reservation", "hash_key", "this_process"]

# The reservations this process holds (request ids, unique): their leases are renewed and no
# sweep of this process refunds them. Process-wide, as the holder is the process, not a store.
_held: set[str] = set()
_held_lock = threading.Lock()


def _hold(request_id: str) -> None:
    with _held_lock:
        _held.add(request_id)


def _drop(request_id: str) -> None:
    with _held_lock:
        _held.discard(request_id)


def _holding() -> frozenset[str]:
    with _held_lock:
        return frozenset(_held)


class CreditError(Exception):
    """A key-management command named a key that does not exist, or an impossible amount; or the
    store cannot be opened (missing, unreachable, or of a newer schema)."""


class KeyRevoked(Exception):
    """The key was revoked between authentication and reservation."""


@dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str  # the key's first characters, to recognise it; not enough to use it
    name: str
    balance: int
    created_at: float
    revoked_at: float | None
    open_reservations: int
    images_charged: int


@dataclass(frozen=True)
class Reservation:
    request_id: str
    key_id: int
    amount: int
    remaining: int  # the balance right after this reservation took its credit


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class LeasedCreditStore(JobsMixin, ABC):
    """The store's logic over a database the subclass connects to. Thread-safe as long as `_tx` and
    `_read` give each thread its own connection."""

    where: str  # the file or the URL (without its password), for messages

    def __init__(self, idempotency: idem.Limits | None) -> None:
        self.lease_s = DEFAULT_LEASE_S  # of new reservations
        self.idempotency = idempotency or idem.Limits()
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()

    # -- what a database provides --------------------------------------------------------------

    @abstractmethod
    def _tx(self, *, quick_commit: bool = False) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction, committed when the block ends, rolled back when it raises.
        `quick_commit` (the charge, right before the image is sent): a commit that may skip the
        flush to disk (a crash of the machine may undo it, which only ever gives an image for free)."""

    @abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Tx]:
        """A connection for single-statement reads."""

    @abstractmethod
    def _close_connections(self) -> None: ...

    @abstractmethod
    def _lock_key(self, tx: Tx, key_id: int) -> None:
        """Serialise the transactions that check and claim an Idempotency-Key of one API key."""

    @abstractmethod
    def _lock_idempotency(self, tx: Tx) -> None:
        """Serialise the transactions that evict or purge stored responses (the bounds are global)."""

    @abstractmethod
    def _lock_jobs(self, tx: Tx) -> None:
        """Serialise job submits (jobs_store.py: the bounds on unfinished jobs)."""

    def close(self) -> None:
        self.stop_leases()
        self._close_connections()

    # -- keys ------------------------------------------------------------------------------------

    def create_key(self, credits: int, name: str = "") -> tuple[int, str]:
        """A new key with `credits`; returns (id, plaintext key). The plaintext is not stored."""
        _check_amount(credits, allow_zero=True)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as tx:
            row = tx.execute(
                "INSERT INTO api_keys (key_hash, prefix, name, balance, created_at) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (hash_key(key), key[: len(KEY_PREFIX) + 6], name, credits, time.time()),
            ).fetchone()
        return int(row[0]), key

    def authenticate(self, key: str) -> int | None:
        """The id of an active key, or None for an unknown or revoked one."""
        digest = hash_key(key)
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, key_hash FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,)
            ).fetchone()
        # The index lookup already matched; the constant-time comparison keeps the final
        # decision free of timing differences whatever the storage engine does.
        if row is None or not hmac.compare_digest(bytes(row[1]), digest):
            return None
        return int(row[0])

    def balance(self, key_id: int) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise CreditError(f"no key with id {key_id}")
        return int(row[0])

    def add_credits(self, key_id: int, credits: int) -> int:
        _check_amount(credits, allow_zero=False)
        with self._tx() as tx:
            row = tx.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ? RETURNING balance",
                             (credits, key_id)).fetchone()
            if row is None:
                raise CreditError(f"no key with id {key_id}; see `outpaint keys list`")
            return int(row[0])

    def revoke(self, key_id: int) -> None:
        with self._tx() as tx:
            cursor = tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
            if cursor.rowcount != 1:
                exists = tx.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                raise CreditError(f"key {key_id} is already revoked" if exists else f"no key with id {key_id}")

    def list_keys(self) -> list[KeyInfo]:
        with self._read() as conn:
            rows = conn.execute(
                """SELECT k.id, k.prefix, k.name, k.balance, k.created_at, k.revoked_at,
                          (SELECT COUNT(*) FROM reservations r WHERE r.key_id = k.id),
                          (SELECT COUNT(*) FROM charges c WHERE c.key_id = k.id)
                   FROM api_keys k ORDER BY k.id"""
            ).fetchall()
        return [KeyInfo(*row) for row in rows]

    # -- paying for a generation -----------------------------------------------------------------

    def reserve(
        self, key_id: int, amount: int, request_id: str, owner: str | None = None, *,
        lease_s: float | None = None, claim: idem.Claim | None = None,
    ) -> Reservation | None:
        """Take `amount` credits for `request_id`, or None when the balance is short (nothing taken).

        The reservation is held by this process (its lease renewed by `keep_leases`) unless `owner`
        names another holder. With a `claim` (an Idempotency-Key), a key seen before raises its
        IdempotencyOutcome instead, and nothing is taken; otherwise the key is claimed for this
        request in the same transaction.
        """
        _check_amount(amount, allow_zero=False)
        now = time.time()
        if owner is None:
            _hold(request_id)  # before the commit: no sweep may see it unheld
        expires = now + (self.lease_s if lease_s is None else lease_s)
        try:
            with self._tx() as tx:
                if claim is not None:
                    self._lock_key(tx, key_id)
                outcome = None if claim is None else idem.check_in(tx, key_id, claim, now, self.idempotency)
                reservation = None if outcome is not None else self._reserve_in(
                    tx, key_id, amount, request_id, owner or this_process(), now, expires, claim)
        except BaseException:
            _drop(request_id)
            raise
        if reservation is None:
            _drop(request_id)
        if outcome is not None:
            raise outcome  # after the commit, which recorded a replay's use (least recently used goes first)
        return reservation

    @staticmethod
    def _reserve_in(
        tx: Tx, key_id: int, amount: int, request_id: str, owner: str, now: float, expires: float,
        claim: idem.Claim | None,
    ) -> Reservation | None:
        # One statement: the row lock (PostgreSQL) or the write lock (SQLite) makes the check and the
        # debit one step, so concurrent reservations never both take the last credit.
        row = tx.execute(
            "UPDATE api_keys SET balance = balance - ? WHERE id = ? AND revoked_at IS NULL AND balance >= ? "
            "RETURNING balance",
            (amount, key_id, amount),
        ).fetchone()
        if row is None:
            found = tx.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if found is None or found[0] is not None:
                raise KeyRevoked(f"key {key_id} was revoked")
            return None
        tx.execute(
            """INSERT INTO reservations (request_id, key_id, amount, owner, created_at, expires_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (request_id, key_id, amount, owner, now, expires),
        )
        if claim is not None:
            idem.claim_in(tx, key_id, claim, request_id, now)
        return Reservation(request_id, key_id, amount, int(row[0]))

    def charge(self, request_id: str) -> bool:
        """Make a reservation's debit final. False if it was already closed (nothing changes).

        A response stored for its Idempotency-Key (`store_response`, before this) is servable from
        this commit on: the key's state is read from the charges table.
        """
        try:
            with self._tx(quick_commit=True) as tx:
                row = tx.execute(
                    "DELETE FROM reservations WHERE request_id = ? RETURNING key_id, amount", (request_id,)
                ).fetchone()
                if row is None:
                    return False
                tx.execute(
                    "INSERT INTO charges (request_id, key_id, amount, charged_at) VALUES (?, ?, ?, ?)",
                    (request_id, row[0], row[1], time.time()),
                )
            return True
        finally:
            _drop(request_id)  # settled, or left to its lease if the commit failed

    def refund(self, request_id: str) -> bool:
        """Give a reservation's credit back. False if it was already closed (idempotent)."""
        try:
            with self._tx() as tx:
                return self._refund_in(tx, request_id)
        finally:
            _drop(request_id)

    @staticmethod
    def _refund_in(tx: Tx, request_id: str, *, expired_by: float | None = None) -> bool:
        """Close and refund; with `expired_by`, only if its lease expired by then (not renewed since)."""
        lease = "" if expired_by is None else " AND expires_at <= ?"
        row = tx.execute(
            f"DELETE FROM reservations WHERE request_id = ?{lease} RETURNING key_id, amount",
            (request_id,) if expired_by is None else (request_id, expired_by),
        ).fetchone()
        if row is None:
            return False
        tx.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?", (row[1], row[0]))
        idem.release_in(tx, request_id)  # a retry with its Idempotency-Key runs again
        return True

    def open_reservations(self) -> list[tuple[str, int, int, str]]:
        """(request_id, key_id, amount, owner) of every reservation not yet charged or refunded."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT request_id, key_id, amount, owner FROM reservations ORDER BY created_at, request_id"
            ).fetchall()
        return [tuple(row) for row in rows]

    def lease_expiry(self, request_id: str) -> float | None:
        """When the lease of an open reservation expires (time.time()), or None if it is closed."""
        with self._read() as conn:
            row = conn.execute("SELECT expires_at FROM reservations WHERE request_id = ?",
                               (request_id,)).fetchone()
        return None if row is None else float(row[0])

    # -- leases ----------------------------------------------------------------------------------

    def renew_leases(self, lease_s: float | None = None) -> int:
        """Extend the leases of the reservations this process holds to now + `lease_s`."""
        held = _holding()
        if not held:
            return 0
        expires = time.time() + (self.lease_s if lease_s is None else lease_s)
        with self._tx() as tx:
            # Sorted: concurrent renewals lock rows in one order.
            cursor = tx.executemany(
                "UPDATE reservations SET expires_at = CASE WHEN expires_at < ? THEN ? ELSE expires_at END "
                "WHERE request_id = ?",
                [(expires, expires, request_id) for request_id in sorted(held)],
            )
            return cursor.rowcount

    def refund_orphans(self, *, report_waiting: bool = True) -> int:
        """Refund the open reservations that nobody can settle any more; returns how many.

        A job's reservation (owner `job:<id>`) is not considered: its job settles it (jobs_store.py).
        Otherwise that is every reservation this process does not hold whose lease expired, or whose
        holder is certainly dead (owners.py), or that names this process as holder without being
        held (its charge failed to commit). With `report_waiting`, the open reservations of other
        holders still within their lease are logged: they are refunded when it expires, unless
        settled first. Each refund is its own transaction, conditional on what made it an orphan,
        so replicas sweeping at once refund each reservation once and never one renewed meanwhile.
        """
        now = time.time()
        with self._read() as conn:
            # A job's reservation is settled by its job (jobs_store.py, sweep_jobs), never by a lease.
            rows = conn.execute("SELECT request_id, owner, expires_at FROM reservations WHERE owner NOT LIKE ?",
                                (OWNER_PREFIX + "%",)).fetchall()
        # Read after the rows: a reservation is held before it commits, so every one of ours that the
        # read saw is in here unless it was settled since (then the refund below finds nothing).
        held = _holding()
        expired, dead, waiting = [], [], []
        for request_id, owner, expires_at in rows:
            if request_id in held:
                continue
            if expires_at <= now:
                found, expired_by = expired, now
            elif is_this_process(owner) or is_certainly_dead(owner):
                found, expired_by = dead, None
            else:
                waiting.append((owner, expires_at))
                continue
            with self._tx() as tx:
                if self._refund_in(tx, request_id, expired_by=expired_by):
                    found.append(owner)
        with self._tx() as tx:
            self._lock_idempotency(tx)
            idem.purge_in(tx, now, self.idempotency)
        if expired:
            log.warning("refunded %d reservations whose lease expired (held by %s)", len(expired),
                        ", ".join(sorted({owner.split(":")[0] for owner in expired})))
        if waiting and report_waiting:
            log.warning("%d open reservations held by other processes (%s) are refunded when their lease "
                        "expires, by %s, unless they are settled first", len(waiting),
                        ", ".join(sorted({owner.split(":")[0] for owner, _ in waiting})),
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(t for _, t in waiting))))
        return len(expired) + len(dead)

    def keep_leases(
        self, lease_s: float, *, every_s: float | None = None, on_refund: Callable[[int], None] | None = None
    ) -> None:
        """Give new reservations `lease_s`, and start the thread that, every `every_s` (default a
        quarter of the lease, at most 10 s), renews the leases this process holds and refunds
        the expired ones of anyone. `on_refund(n)` is told how many it refunded."""
        if self._keeper is not None:
            raise RuntimeError("keep_leases is already running")
        self.lease_s = lease_s
        interval = every_s if every_s is not None else min(10.0, lease_s / 4)
        self._stop_keeper.clear()
        self._keeper = threading.Thread(target=self._keep, args=(interval, on_refund),
                                        name="outpaint-credit-leases", daemon=True)
        self._keeper.start()

    def stop_leases(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            self._stop_keeper.set()
            keeper.join()

    def _keep(self, interval: float, on_refund: Callable[[int], None] | None) -> None:
        while not self._stop_keeper.wait(interval):
            try:
                self.renew_leases()
                self.renew_job_leases()
                refunded = self.refund_orphans(report_waiting=False)
                self.sweep_jobs()
                if refunded and on_refund is not None:
                    on_refund(refunded)
            except Exception:
                # A busy or unreachable database must not end the thread: the next round retries.
                log.exception("could not renew or sweep the credit leases of %s", self.where)

    # -- Idempotency-Key -------------------------------------------------------------------------

    def idempotency_state(self, key_id: int, key: str) -> str | None:
        """"running", "done" (a stored response to replay) or None: what a retry with `key` meets."""
        with self._read() as conn:
            return idem.state(conn, key_id, key, time.time(), self.idempotency)

    def check_idempotency(self, key_id: int, claim: idem.Claim) -> None:
        """Raise the key's IdempotencyOutcome (AlreadyDone carries the response), or return: it may run."""
        with self._tx() as tx:
            outcome = idem.check_in(tx, key_id, claim, time.time(), self.idempotency)
        if outcome is not None:
            raise outcome

    def store_response(self, request_id: str, headers: dict[str, str], body: bytes) -> bool:
        """Keep the response of a reservation claimed with an Idempotency-Key, before its charge."""
        with self._tx() as tx:
            self._lock_idempotency(tx)
            return idem.store_in(tx, request_id, headers, body, time.time(), self.idempotency)


def _check_amount(value: int, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        low = 0 if allow_zero else 1
        raise CreditError(f"credits must be a whole number >= {low}, got {value!r}")
    if value > MAX_CREDITS:
        raise CreditError(f"credits must be at most {MAX_CREDITS}, got {value}")
