"""The credits store in one SQLite file (WAL mode, no server process): one machine's replicas.

The logic is credits.py's; here are the connections, the transactions and the schema. The schema
is versioned with `PRAGMA user_version`; an older file is migrated in place, in one transaction,
when a newer outpaint opens it. An older outpaint refuses a newer file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from . import idempotency_store as idem
from . import jobs_store
from .credits import DEFAULT_LEASE_S, CreditError, LeasedCreditStore
from .sql import Tx

SCHEMA_VERSION = 3
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
    3: jobs_store.SCHEMA,  # asynchronous jobs (jobs_store.py)
}


class SqliteCreditStore(LeasedCreditStore):
    """Thread-safe: every thread gets its own connection; SQLite serialises the writers."""

    def __init__(
        self, path: Path | str, *, busy_timeout_s: float = 30.0, idempotency: idem.Limits | None = None
    ) -> None:
        super().__init__(idempotency)
        self.path = Path(path)
        self.where = str(self.path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
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

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    # BEGIN IMMEDIATE already serialises every write transaction on the file.
    def _lock_key(self, tx: Tx, key_id: int) -> None:
        pass

    def _lock_idempotency(self, tx: Tx) -> None:
        pass

    def _lock_jobs(self, tx: Tx) -> None:
        pass

    def _close_connections(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
