"""The stored side of `Idempotency-Key`: which request a key started, and the response it was charged for.

Tables in the credits database (the stores create them and runs every function here inside its own
transactions, so that a claim is made with its reservation and released with its refund):

- `idempotency_keys`: one row per (API key, Idempotency-Key): the body's fingerprint and the
  request id that runs it. Its state is not stored but read from the credits tables, so it can
  never disagree with them: an open reservation for that request id means *running*; a charge
  means *done*; neither means the request failed and was refunded (the row is then deleted).
- `idempotency_responses`: the JPEG and headers of a done request. It is written before the
  charge (the charge's own transaction stays as small as before), so once the charge commits
  the retry can be served whatever happens next.

Bounds: a key is kept 24 h after its first request; stored responses take at most 32 MiB per API
key and 512 MiB in all, the least recently used going first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .sql import Tx

MIB = 1024 * 1024

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS idempotency_keys (
        key_id INTEGER NOT NULL REFERENCES api_keys(id),
        idem_key TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        request_id TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        used_at REAL NOT NULL,
        PRIMARY KEY (key_id, idem_key)
    )""",
    """CREATE TABLE IF NOT EXISTS idempotency_responses (
        request_id TEXT PRIMARY KEY REFERENCES idempotency_keys(request_id) ON DELETE CASCADE,
        headers TEXT NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_used ON idempotency_keys(used_at)",
)
# The same tables in PostgreSQL's types (credits_postgres.py).
POSTGRES_SCHEMA = (
    """CREATE TABLE idempotency_keys (
        key_id BIGINT NOT NULL REFERENCES api_keys(id),
        idem_key TEXT NOT NULL,
        fingerprint BYTEA NOT NULL,
        request_id TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key_id, idem_key)
    )""",
    """CREATE TABLE idempotency_responses (
        request_id TEXT PRIMARY KEY REFERENCES idempotency_keys(request_id) ON DELETE CASCADE,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL
    )""",
    "CREATE INDEX idempotency_keys_used ON idempotency_keys(used_at)",
)


@dataclass(frozen=True)
class Limits:
    ttl_s: float = 24 * 3600.0  # the IETF draft leaves it to the server; Stripe keeps keys 24 h
    per_key_bytes: int = 32 * MIB  # ~30 of the largest JPEGs (1024x1024 at quality 95 is ~1 MB)
    total_bytes: int = 512 * MIB


@dataclass(frozen=True)
class Claim:
    key: str  # the client's Idempotency-Key
    fingerprint: bytes  # SHA-256 of the request body


@dataclass(frozen=True)
class StoredResponse:
    request_id: str  # of the request that was charged for it
    headers: dict[str, str]
    body: bytes


class IdempotencyOutcome(Exception):
    """The key was seen before: the request must not run (again)."""


class InProgress(IdempotencyOutcome):
    """The request that first used the key has not finished."""


class KeyReused(IdempotencyOutcome):
    """The key was used with another body."""


class AlreadyDone(IdempotencyOutcome):
    """The key's request was charged; here is its response, to send again without a charge."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(stored.request_id)
        self.stored = stored


RUNNING, DONE, FAILED = "running", "done", "failed"


def _row(conn: Tx, key_id: int, key: str, now: float, limits: Limits) -> tuple | None:
    """(fingerprint, request_id, state) of a live key, or None (expired or failed rows are dropped)."""
    row = conn.execute(
        """SELECT k.fingerprint, k.request_id, k.created_at,
                  EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = k.request_id),
                  EXISTS (SELECT 1 FROM charges c WHERE c.request_id = k.request_id)
           FROM idempotency_keys k WHERE k.key_id = ? AND k.idem_key = ?""",
        (key_id, key),
    ).fetchone()
    if row is None:
        return None
    fingerprint, request_id, created_at, running, charged = row
    if created_at + limits.ttl_s <= now:
        return None
    return bytes(fingerprint), request_id, RUNNING if running else DONE if charged else FAILED


def state(conn: Tx, key_id: int, key: str, now: float, limits: Limits) -> str | None:
    """RUNNING, DONE (charged and its response stored) or None: what a retry would meet."""
    row = _row(conn, key_id, key, now, limits)
    if row is None or row[2] == FAILED:
        return None
    if row[2] == DONE and _response(conn, row[1]) is None:
        return None  # charged, but the response was not stored (over the bounds): it runs again
    return row[2]


def _response(conn: Tx, request_id: str) -> StoredResponse | None:
    found = conn.execute(
        "SELECT headers, body FROM idempotency_responses WHERE request_id = ?", (request_id,)
    ).fetchone()
    return None if found is None else StoredResponse(request_id, json.loads(found[0]), bytes(found[1]))


def check_in(
    tx: Tx, key_id: int, claim: Claim, now: float, limits: Limits
) -> IdempotencyOutcome | None:
    """What a request with `claim` must answer instead of running, or None when it may run.

    A running request is a 409 whatever its body (a retry cannot be told from a new request
    before the first finishes); a done one is replayed for the same body, a 422 for another.
    """
    row = _row(tx, key_id, claim.key, now, limits)
    if row is None or row[2] == FAILED:
        return None
    fingerprint, request_id, found = row
    if found == RUNNING:
        return InProgress(request_id)
    if fingerprint != claim.fingerprint:
        return KeyReused(request_id)
    stored = _response(tx, request_id)
    if stored is None:
        return None  # charged, but its response was not kept: it runs again
    tx.execute("UPDATE idempotency_keys SET used_at = ? WHERE request_id = ?", (now, request_id))
    return AlreadyDone(stored)


def claim_in(tx: Tx, key_id: int, claim: Claim, request_id: str, now: float) -> None:
    """Record that `request_id` runs for the key (in the reservation's transaction, after check_in)."""
    tx.execute("DELETE FROM idempotency_keys WHERE key_id = ? AND idem_key = ?", (key_id, claim.key))
    tx.execute(
        """INSERT INTO idempotency_keys (key_id, idem_key, fingerprint, request_id, created_at, used_at)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (key_id, claim.key, claim.fingerprint, request_id, now, now),
    )


def release_in(tx: Tx, request_id: str) -> None:
    """The request was refunded: a retry with its key runs again (in the refund's transaction)."""
    tx.execute("DELETE FROM idempotency_keys WHERE request_id = ?", (request_id,))


def store_in(
    tx: Tx, request_id: str, headers: dict[str, str], body: bytes, now: float, limits: Limits
) -> bool:
    """Keep the response of `request_id` for replays, evicting to stay in bounds. False when the
    request has no key, or the response alone is over the bounds (then it is not kept)."""
    row = tx.execute("SELECT key_id FROM idempotency_keys WHERE request_id = ?", (request_id,)).fetchone()
    size = len(body)
    if row is None or size > min(limits.per_key_bytes, limits.total_bytes):
        return False
    key_id = row[0]
    purge_in(tx, now, limits)
    _evict(tx, size - limits.per_key_bytes, "AND k.key_id = ?", (key_id,))
    _evict(tx, size - limits.total_bytes, "", ())
    tx.execute("""INSERT INTO idempotency_responses (request_id, headers, body) VALUES (?, ?, ?)
                  ON CONFLICT (request_id) DO UPDATE SET headers = excluded.headers, body = excluded.body""",
               (request_id, json.dumps(headers), body))
    tx.execute("UPDATE idempotency_keys SET size = ?, used_at = ? WHERE request_id = ?", (size, now, request_id))
    return True


def _evict(tx: Tx, over_by: int, where: str, args: tuple) -> None:
    """Drop the least recently used stored responses until `over_by` + what is stored <= 0.

    Only done requests are evicted (a running one's response is about to be paid for); the key
    row goes too, so a retry with it runs again rather than meeting a half-forgotten state.
    """
    stored = tx.execute(f"SELECT COALESCE(SUM(k.size), 0) FROM idempotency_keys k WHERE TRUE {where}", args)
    excess = int(stored.fetchone()[0]) + over_by
    if excess <= 0:
        return
    victims = tx.execute(
        f"""SELECT k.request_id, k.size FROM idempotency_keys k
            WHERE k.size > 0 AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = k.request_id)
            {where} ORDER BY k.used_at""",
        args,
    )
    doomed = []
    for request_id, size in victims:
        if excess <= 0:
            break
        doomed.append((request_id,))
        excess -= size
    tx.executemany("DELETE FROM idempotency_keys WHERE request_id = ?", doomed)


def purge_in(tx: Tx, now: float, limits: Limits) -> int:
    """Drop the keys of finished requests past their time to live, and of requests that were
    refunded (a running request keeps its key). Returns how many."""
    cursor = tx.execute(
        """DELETE FROM idempotency_keys
           WHERE NOT EXISTS (SELECT 1 FROM reservations r WHERE r.request_id = idempotency_keys.request_id)
             AND (created_at + ? <= ?
                  OR NOT EXISTS (SELECT 1 FROM charges c WHERE c.request_id = idempotency_keys.request_id))""",
        (limits.ttl_s, now),
    )
    return cursor.rowcount
