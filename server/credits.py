"""API keys and credit balances in one SQLite file (WAL mode, no server process).

Keys are stored only as SHA-256 hashes: a key is 256 random bits, so a fast hash is enough (no
password stretching needed) and a stolen database reveals no usable key.

A generation pays in two steps, so that neither concurrency nor a crash can lose or invent a debit:

1. `reserve`: one conditional UPDATE (`balance >= price`) takes the credit and records an open
   reservation row in the same transaction, before any compute. Two racing requests can never
   both take the last credit, and the balance can never go negative (a CHECK constraint guards it too).
2. `charge` closes the reservation when the response is being sent (the credit stays spent);
   `refund` closes it and gives the credit back (failure, cancel, disconnect, queue full).

A process killed between the two leaves the reservation open. `refund_orphans`, run when a
server starts, refunds the open reservations of processes that no longer exist, so after a crash
balance == start - images delivered.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "op-"
SCHEMA_VERSION = 1
_SCHEMA = """
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


def this_process() -> str:
    """Who holds a reservation: host and pid, so a restart can tell live owners from dead ones."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    """True when the process that holds a reservation no longer runs (checked on this host only).

    Called at startup, before serving: a row carrying our own pid is stale (a recycled pid, e.g.
    pid 1 in a container). Rows of other hosts are left alone: we cannot know.
    """
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CreditStore:
    """Thread-safe: every thread gets its own connection; SQLite serialises the writers."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise CreditError(f"{self.path} has credits schema version {version}; this outpaint reads {SCHEMA_VERSION}")
        with self._tx() as tx:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
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
            # FULL: a committed charge survives a power cut, not only a process crash.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
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

    def reserve(self, key_id: int, amount: int, request_id: str, owner: str | None = None) -> Reservation | None:
        """Take `amount` credits for `request_id`, or None when the balance is short (nothing taken)."""
        _check_amount(amount, allow_zero=False)
        with self._tx() as tx:
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
                "INSERT INTO reservations (request_id, key_id, amount, owner, created_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, key_id, amount, owner or this_process(), time.time()),
            )
            remaining = int(tx.execute("SELECT balance FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0])
        return Reservation(request_id, key_id, amount, remaining)

    def charge(self, request_id: str) -> bool:
        """Make a reservation's debit final. False if it was already closed (nothing changes)."""
        with self._tx() as tx:
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

    def refund(self, request_id: str) -> bool:
        """Give a reservation's credit back. False if it was already closed (idempotent)."""
        with self._tx() as tx:
            return self._refund_in(tx, request_id)

    @staticmethod
    def _refund_in(tx: sqlite3.Connection, request_id: str) -> bool:
        row = tx.execute(
            "DELETE FROM reservations WHERE request_id = ? RETURNING key_id, amount", (request_id,)
        ).fetchone()
        if row is None:
            return False
        tx.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?", (row[1], row[0]))
        return True

    def open_reservations(self) -> list[tuple[str, int, int, str]]:
        """(request_id, key_id, amount, owner) of every reservation not yet charged or refunded."""
        return self._conn().execute(
            "SELECT request_id, key_id, amount, owner FROM reservations ORDER BY created_at"
        ).fetchall()

    def refund_orphans(self, is_gone: Callable[[str], bool] = owner_is_gone) -> int:
        """Refund the open reservations of processes that died (a crash mid-request). Returns how many."""
        refunded = 0
        with self._tx() as tx:
            rows = tx.execute("SELECT request_id, owner FROM reservations").fetchall()
            for request_id, owner in rows:
                if is_gone(owner) and self._refund_in(tx, request_id):
                    refunded += 1
        return refunded


def _check_amount(value: int, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        low = 0 if allow_zero else 1
        raise CreditError(f"credits must be a whole number >= {low}, got {value!r}")
