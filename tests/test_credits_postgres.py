"""What only the PostgreSQL store has to show: replicas (processes with pools of their own) racing
for one key's last credits, the versioned migrations, replicas migrating one database at once, and
surviving a restart of the database server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("psycopg")  # the GPU check's machine has no database client

import psycopg

from outpaint.server import credits_postgres
from outpaint.server.credits import CreditError
from outpaint.server.store import open_store

from .store_backends import Backend, make_backend


@pytest.fixture
def backend(request, tmp_path) -> Backend:
    return make_backend("postgres", tmp_path, request)


# A replica: THREADS threads each try to reserve 1 credit at START (a shared wall-clock instant);
# it reports what it got, then waits for a line on stdin and settles: charges even, refunds odd.
_REPLICA = """
import json, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from outpaint.server.store import open_store
url, key_id, name, threads, start = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
store = open_store(url, pool_size=threads)
def attempt(i):
    time.sleep(max(0.0, start - time.time()))
    rid = f"{name}-{i}"
    return rid if store.reserve(key_id, 1, rid) is not None else None
with ThreadPoolExecutor(threads) as pool:
    won = [rid for rid in pool.map(attempt, range(threads)) if rid is not None]
print(json.dumps(won), flush=True)
sys.stdin.readline()
with ThreadPoolExecutor(threads) as pool:
    settled = list(pool.map(lambda ir: (store.charge if ir[0] % 2 == 0 else store.refund)(ir[1]), enumerate(won)))
print(json.dumps({"charged": sum(1 for i, ok in enumerate(settled) if ok and i % 2 == 0),
                  "refunded": sum(1 for i, ok in enumerate(settled) if ok and i % 2 == 1)}), flush=True)
store.close()
"""


def test_replicas_racing_for_the_last_credits_never_overdraw_and_settle_exactly(backend):
    replicas, threads, credits = 4, 16, 25
    store = backend.open()
    try:
        key_id, _ = store.create_key(credits)
        start = time.time() + 3.0  # every replica is up and connected by then
        procs = [subprocess.Popen([sys.executable, "-c", _REPLICA, backend.db, str(key_id), f"r{n}", str(threads),
                                   str(start)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for n in range(replicas)]
        try:
            won = []
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                won.extend(json.loads(line))
            # 64 attempts at once from 4 processes and 64 connections: exactly the 25 credits went.
            assert len(won) == credits == len(set(won))
            assert store.balance(key_id) == 0
            assert sorted(row[0] for row in store.open_reservations()) == sorted(won)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("settle\n")
                proc.stdin.flush()
            # Meanwhile a sweep of another replica: every holder is alive and within its lease.
            assert store.refund_orphans(report_waiting=False) == 0
            charged = refunded = 0
            for proc in procs:
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                result = json.loads(out.strip().splitlines()[-1])
                charged, refunded = charged + result["charged"], refunded + result["refunded"]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        assert charged + refunded == credits
        assert store.balance(key_id) == refunded  # never negative: the CHECK and the conditional UPDATE
        assert store.open_reservations() == []
        ledger = backend.query("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM charges WHERE key_id = ?", (key_id,))
        assert ledger == [(charged, charged)]  # the sum of the debits, exact
        assert store.list_keys()[0].images_charged == charged
    finally:
        store.close()


def test_migrations_are_versioned_applied_once_in_order_and_a_newer_schema_is_refused(backend, monkeypatch):
    store = backend.open()
    key_id, key = store.create_key(4, name="before")
    store.close()
    assert backend.query("SELECT version FROM schema_version") == [(credits_postgres.SCHEMA_VERSION,)]

    # A next version of outpaint adds a column: opening the database migrates it once, data kept.
    future = credits_postgres.SCHEMA_VERSION + 1
    monkeypatch.setattr(credits_postgres, "SCHEMA_VERSION", future)
    monkeypatch.setitem(credits_postgres.MIGRATIONS, future, ("ALTER TABLE api_keys ADD COLUMN note TEXT",))
    for _ in range(2):  # the second open must not run the ALTER again (it would fail)
        newer = backend.open()
        assert newer.authenticate(key) == key_id and newer.balance(key_id) == 4
        newer.close()
    assert backend.query("SELECT version FROM schema_version") == [(future,)]
    assert backend.query("SELECT note FROM api_keys") == [(None,)]

    # This outpaint (the older one) refuses the newer schema and changes nothing.
    monkeypatch.undo()
    with pytest.raises(CreditError, match=f"schema version {future}, written by a newer outpaint"):
        backend.open()
    assert backend.query("SELECT version FROM schema_version") == [(future,)]


def test_replicas_creating_the_schema_at_once_all_succeed(backend):
    opener = "import sys; from outpaint.server.store import open_store; open_store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", opener, backend.db], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert backend.query("SELECT version FROM schema_version") == [(credits_postgres.SCHEMA_VERSION,)]


def test_an_unreachable_database_is_a_clear_error_without_the_password(backend):
    url = backend.db.replace("outpaint@", "outpaint:s3cret@").rsplit(":", 1)[0] + ":1/nowhere"
    with pytest.raises(CreditError, match="cannot open the credits database") as refused:
        open_store(url)
    assert "s3cret" not in str(refused.value) and "***" in str(refused.value)


def test_the_store_survives_a_restart_of_the_database_server(backend):
    store = backend.open()
    try:
        key_id, _ = store.create_key(3)
        assert store.reserve(key_id, 1, "before") is not None
        assert backend.cluster is not None
        backend.cluster.restart()  # every pooled connection is now broken
        assert store.balance(key_id) == 2  # a broken connection is replaced, not handed out
        assert store.charge("before")
        assert store.reserve(key_id, 1, "after") is not None and store.refund("after")
        assert store.balance(key_id) == 2 and store.list_keys()[0].images_charged == 1
    finally:
        store.close()


def test_calls_during_an_outage_of_the_database_server_fail_cleanly_and_lose_nothing(backend):
    """While PostgreSQL is down a call waits for a connection at most busy_timeout_s, then raises (the
    app answers a JSON 500); nothing it tried is half-done, and once the server is back the store is
    too within about MAX_RECONNECT_DELAY_S, not after the pool's doubling backoff (1, 2, 4, 8 s ...:
    after this 9 s outage its next attempt would come 4-7 s after the server is back)."""
    store = credits_postgres.PostgresCreditStore(backend.db, busy_timeout_s=2.0)
    cluster = backend.cluster
    assert cluster is not None
    try:
        key_id, _ = store.create_key(3)
        assert store.reserve(key_id, 1, "before") is not None
        cluster.stop_server("fast")
        stopped = time.monotonic()
        try:
            with pytest.raises(psycopg.OperationalError):
                store.reserve(key_id, 1, "during")
            with pytest.raises(psycopg.OperationalError):
                store.charge("before")
            assert time.monotonic() - stopped < 8  # bounded by busy_timeout_s, not a hang
            time.sleep(max(0.0, 9.0 - (time.monotonic() - stopped)))
        finally:
            cluster.start_server()
        back = time.monotonic()
        while True:
            try:
                reservations = store.open_reservations()
                break
            except psycopg.OperationalError:
                assert time.monotonic() - back < 30, "the store did not reconnect"
        assert time.monotonic() - back < credits_postgres.MAX_RECONNECT_DELAY_S + 1.0
        # The failed charge left "before" open and no longer held: the next sweep refunds it (the
        # client of a failed charge got its image for free, never a charge without one).
        assert [row[0] for row in reservations] == ["before"]
        assert store.balance(key_id) == 2
        assert store.refund_orphans(report_waiting=False) == 1
        assert store.balance(key_id) == 3 and store.open_reservations() == []
        assert store.reserve(key_id, 1, "after") is not None and store.charge("after")
        assert store.balance(key_id) == 2 and store.list_keys()[0].images_charged == 1
    finally:
        store.close()
