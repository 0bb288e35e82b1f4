"""API keys and credit balances in one SQLite file (WAL mode, no server process).

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
starting server also refunds at once what a certainly dead process of its own PID namespace left
(owners.py), instead of waiting out the lease. The charge and the refund each delete the
reservation row in their transaction, so whichever comes first wins and the other is a no-op:
no double refund, and a late charge of a refunded reservation charges nothing.

The schema is versioned (`PRAGMA user_version`); an older file is migrated in place, in one
transaction, when a newer outpaint opens it. An older outpaint refuses a newer file.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import idempotency_store as idem
from .owners import is_certainly_dead, this_process

log = logging.getLogger("outpaint.server.credits")
KEY_PREFIX = "op-"
SCHEMA_VERSION = 2
# A lease outlives the request's deadline by this much, for the JPEG encoding and the send after
# the last step, a busy SQLite and clock differences between hosts sharing the file.
LEASE_MARGIN_S = 60.0
DEFAULT_LEASE_S = 300.0 + LEASE_MARGIN_S  # for the default --timeout; `outpaint serve` sets its own
# Version 1, as it was created (a new file is created as version 1 and migrated like an old one).
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    balance INTEGER NOT NULL CHECK (balance >= 0),
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS reservations (
    request_id TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL REFERENCES api_keys(id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    owner TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    request_id TEXT PRIMARY KEY,
    key_id INTEGER NOT NULL REFERENCES api_keys(id),
    amount INTEGER NOT NULL,
    charged_at REAL NOT NULL
);
"""
# MIGRATIONS[n] turns version n - 1 into version n.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # Reservations of a version-1 server (it cannot renew) get the default lease from their creation.
        "ALTER TABLE reservations ADD COLUMN expires_at REAL NOT NULL DEFAULT 0",
        f"UPDATE reservations SET expires_at = created_at + {DEFAULT_LEASE_S}",
        # So do the rows a version-1 server still running on the file inserts (without a lease).
        f"""CREATE TRIGGER IF NOT EXISTS reservations_lease_of_old_writers AFTER INSERT ON reservations
            WHEN NEW.expires_at = 0 BEGIN
                UPDATE reservations SET expires_at = NEW.created_at + {DEFAULT_LEASE_S}
                WHERE request_id = NEW.request_id;
            END""",
        *idem.SCHEMA,
    ),
}

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
    """A key-management command named a key that does not exist, or an impossible amount."""


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


class CreditStore:
    """Thread-safe: every thread gets its own connection; SQLite serialises the writers."""

    def __init__(
        self, path: Path | str, *, busy_timeout_s: float = 30.0, idempotency: idem.Limits | None = None
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.lease_s = DEFAULT_LEASE_S  # of new reservations
        self.idempotency = idempotency or idem.Limits()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    def _migrate(self) -> None:
        # The version is read inside the write transaction: two processes opening an old file at
        # once migrate it once.
        with self._tx() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise CreditError(f"{self.path} has credits schema version {version}, written by a newer "
                                  f"outpaint; this one reads up to {SCHEMA_VERSION}")
            if version == 0:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        tx.execute(statement)
                version = 1
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    tx.execute(statement)
            tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections -----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a read-then-write
            # transaction takes the write lock up front and never fails to upgrade.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_s)
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed reservation, refund or key change survives a power cut, not only a
            # process crash (the charge alone commits without the flush: see _tx).
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, *, quick_commit: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction. `quick_commit` (the charge, run right before the image is sent):
        no fsync and no WAL checkpoint in the commit, so the time between a charge that a crash
        would keep and the first byte of the image is microseconds, not the milliseconds of a
        disk flush. The commit still survives the process being killed (it is in the OS's page
        cache); a power cut may undo it, which only ever gives an image for free: the
        reservation it closed comes back and is refunded when its lease expires."""
        conn = self._conn()
        if quick_commit:
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if quick_commit:
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA wal_autocheckpoint = 1000")

    def close(self) -> None:
        self.stop_leases()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- keys ------------------------------------------------------------------------------------

    def create_key(self, credits: int, name: str = "") -> tuple[int, str]:
        """A new key with `credits`; returns (id, plaintext key). The plaintext is not stored."""
        _check_amount(credits, allow_zero=True)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as tx:
            cursor = tx.execute(
                "INSERT INTO api_keys (key_hash, prefix, name, balance, created_at) VALUES (?, ?, ?, ?, ?)",
                (hash_key(key), key[: len(KEY_PREFIX) + 6], name, credits, time.time()),
            )
        return int(cursor.lastrowid), key

    def authenticate(self, key: str) -> int | None:
        """The id of an active key, or None for an unknown or revoked one."""
        digest = hash_key(key)
        row = self._conn().execute(
            "SELECT id, key_hash FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (digest,)
        ).fetchone()
        # The index lookup already matched; the constant-time comparison keeps the final
        # decision free of timing differences whatever the storage engine does.
        if row is None or not hmac.compare_digest(bytes(row[1]), digest):
            return None
        return int(row[0])

    def balance(self, key_id: int) -> int:
        row = self._conn().execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise CreditError(f"no key with id {key_id}")
        return int(row[0])

    def add_credits(self, key_id: int, credits: int) -> int:
        _check_amount(credits, allow_zero=False)
        with self._tx() as tx:
            cursor = tx.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?", (credits, key_id))
            if cursor.rowcount != 1:
                raise CreditError(f"no key with id {key_id}; see `outpaint keys list`")
            return int(tx.execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0])

    def revoke(self, key_id: int) -> None:
        with self._tx() as tx:
            cursor = tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
            if cursor.rowcount != 1:
                exists = tx.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                raise CreditError(f"key {key_id} is already revoked" if exists else f"no key with id {key_id}")

    def list_keys(self) -> list[KeyInfo]:
        rows = self._conn().execute(
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
        tx: sqlite3.Connection, key_id: int, amount: int, request_id: str, owner: str, now: float, expires: float,
        claim: idem.Claim | None,
    ) -> Reservation | None:
        cursor = tx.execute(
            "UPDATE api_keys SET balance = balance - ? WHERE id = ? AND revoked_at IS NULL AND balance >= ?",
            (amount, key_id, amount),
        )
        if cursor.rowcount != 1:
            row = tx.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None or row[0] is not None:
                raise KeyRevoked(f"key {key_id} was revoked")
            return None
        tx.execute(
            """INSERT INTO reservations (request_id, key_id, amount, owner, created_at, expires_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (request_id, key_id, amount, owner, now, expires),
        )
        if claim is not None:
            idem.claim_in(tx, key_id, claim, request_id, now)
        remaining = int(tx.execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0])
        return Reservation(request_id, key_id, amount, remaining)

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
    def _refund_in(tx: sqlite3.Connection, request_id: str) -> bool:
        row = tx.execute(
            "DELETE FROM reservations WHERE request_id = ? RETURNING key_id, amount", (request_id,)
        ).fetchone()
        if row is None:
            return False
        tx.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?", (row[1], row[0]))
        idem.release_in(tx, request_id)  # a retry with its Idempotency-Key runs again
        return True

    def open_reservations(self) -> list[tuple[str, int, int, str]]:
        """(request_id, key_id, amount, owner) of every reservation not yet charged or refunded."""
        return self._conn().execute(
            "SELECT request_id, key_id, amount, owner FROM reservations ORDER BY created_at"
        ).fetchall()

    def lease_expiry(self, request_id: str) -> float | None:
        """When the lease of an open reservation expires (time.time()), or None if it is closed."""
        row = self._conn().execute("SELECT expires_at FROM reservations WHERE request_id = ?",
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
            cursor = tx.executemany(
                "UPDATE reservations SET expires_at = MAX(expires_at, ?) WHERE request_id = ?",
                [(expires, request_id) for request_id in held],
            )
            return cursor.rowcount

    def refund_orphans(self, *, report_waiting: bool = True) -> int:
        """Refund the open reservations that nobody can settle any more; returns how many.

        That is every reservation this process does not hold whose lease expired, or whose
        holder is certainly dead (owners.py), or that names this process as holder without being
        held (a recycled PID). With `report_waiting`, the open reservations of other holders still
        within their lease are logged: they are refunded when it expires, unless settled first.
        """
        now = time.time()
        me = this_process()
        expired, dead, waiting = [], [], []
        with self._tx() as tx:
            held = _holding()  # read inside the write lock: a reservation commits after its hold
            rows = tx.execute("SELECT request_id, owner, expires_at FROM reservations").fetchall()
            for request_id, owner, expires_at in rows:
                if request_id in held:
                    continue
                if expires_at <= now:
                    found = expired
                elif owner == me or is_certainly_dead(owner):
                    found = dead
                else:
                    waiting.append((owner, expires_at))
                    continue
                if self._refund_in(tx, request_id):
                    found.append(owner)
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
                refunded = self.refund_orphans(report_waiting=False)
                if refunded and on_refund is not None:
                    on_refund(refunded)
            except Exception:
                # A busy or failing database must not end the thread: the next round retries.
                log.exception("could not renew or sweep the credit leases of %s", self.path)

    # -- Idempotency-Key -------------------------------------------------------------------------

    def idempotency_state(self, key_id: int, key: str) -> str | None:
        """"running", "done" (a stored response to replay) or None: what a retry with `key` meets."""
        return idem.state(self._conn(), key_id, key, time.time(), self.idempotency)

    def check_idempotency(self, key_id: int, claim: idem.Claim) -> None:
        """Raise the key's IdempotencyOutcome (AlreadyDone carries the response), or return: it may run."""
        with self._tx() as tx:
            outcome = idem.check_in(tx, key_id, claim, time.time(), self.idempotency)
        if outcome is not None:
            raise outcome

    def store_response(self, request_id: str, headers: dict[str, str], body: bytes) -> bool:
        """Keep the response of a reservation claimed with an Idempotency-Key, before its charge."""
        with self._tx() as tx:
            return idem.store_in(tx, request_id, headers, body, time.time(), self.idempotency)


def _check_amount(value: int, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        low = 0 if allow_zero else 1
        raise CreditError(f"credits must be a whole number >= {low}, got {value!r}")
