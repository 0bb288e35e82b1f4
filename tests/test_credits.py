"""The credits store on a real SQLite file and on a real PostgreSQL server (server/pg_cluster.py):
hashing, atomic debits under threads and processes, crash reconciliation, leases, the schema
migrations, and the Idempotency-Key storage. Every test taking `backend` or `store` runs on both."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from outpaint.server import owners
from outpaint.server.credits import CreditError, KeyRevoked, hash_key, this_process
from outpaint.server.credits_sqlite import SCHEMA_VERSION, SqliteCreditStore
from outpaint.server.idempotency_store import AlreadyDone, Claim, InProgress, KeyReused, Limits
from outpaint.server.owners import identity

from .store_backends import NAMES, Backend, make_backend


@pytest.fixture(params=NAMES)
def backend(request, tmp_path) -> Backend:
    return make_backend(request.param, tmp_path, request)


@pytest.fixture
def store(backend):
    s = backend.open()
    yield s
    s.close()


def test_database_is_in_wal_mode(tmp_path):
    store = SqliteCreditStore(tmp_path / "credits.db")
    try:
        mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        store.close()


def test_only_a_hash_of_the_key_is_stored(backend, store):
    key_id, key = store.create_key(5, name="alice")
    assert store.authenticate(key) == key_id
    store.close()
    raw = backend.raw_bytes()
    assert key.encode() not in raw
    assert key[len("op-") + 6:].encode() not in raw  # not even the part after the listed prefix
    assert hash_key(key) in raw


def test_unknown_and_revoked_keys_do_not_authenticate(store):
    key_id, key = store.create_key(5)
    assert store.authenticate(key + "x") is None
    assert store.authenticate("") is None
    store.revoke(key_id)
    assert store.authenticate(key) is None
    with pytest.raises(KeyRevoked):
        store.reserve(key_id, 1, "r1")
    with pytest.raises(CreditError, match="already revoked"):
        store.revoke(key_id)


def test_keys_are_distinct_and_high_entropy(store):
    keys = {store.create_key(0)[1] for _ in range(20)}
    assert len(keys) == 20
    assert all(len(k) >= 40 for k in keys)


def test_reserve_takes_credit_and_refuses_when_short(store):
    key_id, _ = store.create_key(2)
    first = store.reserve(key_id, 1, "a")
    assert first is not None and first.remaining == 1
    assert store.reserve(key_id, 2, "b") is None  # short: nothing taken
    assert store.balance(key_id) == 1
    assert store.reserve(key_id, 1, "c").remaining == 0
    assert store.reserve(key_id, 1, "d") is None
    assert store.balance(key_id) == 0


def test_charge_keeps_the_debit_and_refund_returns_it_once(store):
    key_id, _ = store.create_key(3)
    store.reserve(key_id, 1, "charged")
    store.reserve(key_id, 1, "refunded")
    assert store.charge("charged") is True
    assert store.refund("refunded") is True
    assert store.refund("refunded") is False  # idempotent
    assert store.charge("refunded") is False  # a refunded reservation cannot be charged later
    assert store.refund("charged") is False  # nor a charged one refunded
    assert store.balance(key_id) == 2
    info = store.list_keys()[0]
    assert (info.images_charged, info.open_reservations) == (1, 0)


def test_concurrent_reservations_never_overdraw_nor_lose_a_debit(store):
    key_id, _ = store.create_key(20)
    barrier = threading.Barrier(50)

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.reserve(key_id, 1, f"req-{i}") is not None

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count(True) == 20
    assert store.balance(key_id) == 0
    assert len(store.open_reservations()) == 20

    # Half are charged, half refunded, from many threads at once.
    winners = [f"req-{i}" for i, ok in enumerate(outcomes) if ok]
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda i_rid: (store.charge if i_rid[0] % 2 else store.refund)(i_rid[1]),
                      enumerate(winners)))
    assert store.balance(key_id) == 10
    assert store.open_reservations() == []
    assert store.list_keys()[0].images_charged == 10


def test_balance_can_never_go_negative_even_by_direct_sql(backend, store):
    key_id, _ = store.create_key(1)
    with pytest.raises(backend.integrity_error):
        backend.query("UPDATE api_keys SET balance = -1 WHERE id = ?", (key_id,))


def test_add_credits_and_bad_amounts(store):
    key_id, _ = store.create_key(0)
    assert store.add_credits(key_id, 7) == 7
    for bad in (0, -3, 1.5, True):
        with pytest.raises(CreditError, match="whole number"):
            store.add_credits(key_id, bad)
    with pytest.raises(CreditError, match="no key with id 999"):
        store.add_credits(999, 1)
    with pytest.raises(CreditError, match="whole number >= 0"):
        store.create_key(-1)
    with pytest.raises(CreditError, match="at most"):
        store.add_credits(key_id, 10**19)  # past a 64-bit integer: refused before the database sees it


_CRASHING_WORKER = """
import os, signal, sys
from outpaint.server.store import open_store
store = open_store(sys.argv[1])
key_id = int(sys.argv[2])
store.reserve(key_id, 1, "delivered")
store.charge("delivered")
store.reserve(key_id, 1, "in-flight")  # the generation this process never finishes
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_leaves_an_open_reservation_that_a_restart_refunds(backend, store):
    key_id, _ = store.create_key(5)
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WORKER, backend.db, str(key_id)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.balance(key_id) == 3  # one charged, one reserved and orphaned
    assert [row[0] for row in store.open_reservations()] == ["in-flight"]

    restarted = backend.open()
    assert restarted.refund_orphans() == 1
    restarted.close()
    assert store.balance(key_id) == 4  # start - images delivered
    assert store.open_reservations() == []


def test_reconcile_leaves_live_owners_and_other_hosts_alone_within_their_lease(store):
    key_id, _ = store.create_key(5)
    store.reserve(key_id, 1, "live", owner=identity(os.getppid()))  # pytest's parent: alive
    store.reserve(key_id, 1, "elsewhere", owner="some-other-host:1234")
    store.reserve(key_id, 1, "mine-stale", owner=this_process())  # our pid before a restart
    dead = subprocess.run([sys.executable, "-c", "from outpaint.server.owners import this_process; "
                           "print(this_process())"], capture_output=True, text=True)
    store.reserve(key_id, 1, "dead", owner=dead.stdout.strip())
    assert store.refund_orphans() == 2
    assert sorted(row[0] for row in store.open_reservations()) == ["elsewhere", "live"]
    assert store.balance(key_id) == 3


def test_another_hosts_holder_is_never_taken_for_dead_whatever_its_pid(store, monkeypatch):
    """Replicas on many hosts share one database: a PID of another boot (another host, or this host
    before a reboot) names no process here, however dead that PID looks, so only the lease settles it."""
    key_id, _ = store.create_key(3)
    here = this_process().split(":")
    elsewhere = ":".join([here[0], "999999", "boot=another-host-boot-id", *here[3:]])
    store.reserve(key_id, 1, "other-host", owner=elsewhere)
    # Where /proc tells nothing, an identity is a bare host:pid, which a container of the same
    # hostname on another host may share: it must not be taken for this process either.
    bare = f"{socket.gethostname()}:{os.getpid()}"
    monkeypatch.setattr(owners, "this_process", lambda: bare)
    store.reserve(key_id, 1, "namesake", owner=bare)
    assert store.refund_orphans() == 0
    assert sorted(row[0] for row in store.open_reservations()) == ["namesake", "other-host"]


def test_keys_cli_creates_lists_adds_and_revokes(backend):
    db = backend.db

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "outpaint.cli", "keys", *args, "--db", db],
                              capture_output=True, text=True, timeout=60)

    if backend.name == "sqlite":
        assert "does not exist" in cli("list").stderr
    created = cli("create", "--credits", "7", "--name", "bob")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("op-") and "\n" not in key and "shown only now" in created.stderr
    listing = cli("list")
    assert listing.returncode == 0
    assert "bob" in listing.stdout and " 7 " in listing.stdout and key not in listing.stdout
    assert key[:9] in listing.stdout  # the recognisable prefix
    assert "balance 10" in cli("add-credits", "--id", "1", "--credits", "3").stdout
    assert cli("add-credits", "--id", "1", "--credits", "-3").returncode != 0
    assert cli("add-credits", "--id", "42", "--credits", "3").returncode != 0
    assert cli("revoke", "--id", "1").returncode == 0
    assert "revoked" in cli("list").stdout
    store = backend.open()
    try:
        assert store.authenticate(key) is None
        assert store.balance(1) == 10
    finally:
        store.close()


# -- leases (issue 11, item 6) ---------------------------------------------------------------------

def test_an_expired_lease_is_refunded_whoever_held_it_and_an_unexpired_one_waits(store):
    key_id, _ = store.create_key(5)
    # Another container (another hostname, another PID namespace): its PID proves nothing.
    store.reserve(key_id, 1, "expired", owner="old-container-7f3a:1", lease_s=-1)
    store.reserve(key_id, 1, "unexpired", owner="old-container-7f3a:1", lease_s=3600)
    store.reserve(key_id, 1, "legacy", owner="old-container-7f3a:1:boot=x:ns=y:start=1", lease_s=-1)
    assert store.balance(key_id) == 2
    assert store.refund_orphans() == 2
    assert [row[0] for row in store.open_reservations()] == ["unexpired"]
    assert store.balance(key_id) == 4
    assert store.refund_orphans() == 0  # no double refund
    assert store.charge("expired") is False  # a late charge of a refunded reservation charges nothing
    assert store.balance(key_id) == 4 and store.list_keys()[0].images_charged == 0


_ZOMBIE = """
import os, signal, sys
from outpaint.server.store import open_store
store = open_store(sys.argv[1])
store.reserve(int(sys.argv[2]), 1, "zombie")  # held by this process, lease far from expired
print("reserved", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_zombie_holder_is_refunded_at_once(backend, store):
    """A killed server that its parent has not reaped yet is a zombie: its PID still exists."""
    key_id, _ = store.create_key(2)
    child = subprocess.Popen([sys.executable, "-c", _ZOMBIE, backend.db, str(key_id)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "reserved\n"
        deadline = time.monotonic() + 30

        def zombie() -> bool:
            # Its leader shows Z as soon as it exits; the PostgreSQL pool's threads may still be
            # tearing down for a moment, and until they are gone owners.py rightly takes it as alive.
            state = Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0]
            return state == "Z" and len(os.listdir(f"/proc/{child.pid}/task")) <= 1

        while not zombie():
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.01)
        expires = store.lease_expiry("zombie")
        assert expires is not None and expires > time.time() + 60
        assert store.refund_orphans() == 1
        assert store.balance(key_id) == 2 and store.open_reservations() == []
    finally:
        child.kill()
        child.wait()


_HOLDER = """
import sys, time
from outpaint.server.store import open_store
store = open_store(sys.argv[1])
store.keep_leases(0.6, every_s=0.1)
store.reserve(int(sys.argv[2]), 1, "held")
print("reserved", flush=True)
time.sleep(600)
"""


def test_a_live_holder_renews_its_lease_and_one_that_stops_renewing_is_refunded(backend, store):
    key_id, _ = store.create_key(1)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, backend.db, str(key_id)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "reserved\n"
        first = store.lease_expiry("held")
        time.sleep(1.5)  # 2.5 leases
        renewed = store.lease_expiry("held")
        assert first is not None and renewed is not None and renewed > first + 0.5
        assert store.refund_orphans() == 0  # alive and renewing
        holder.send_signal(signal.SIGSTOP)  # alive, but renews nothing any more (a hung host)
        time.sleep(1.0)
        assert store.refund_orphans() == 1
        assert store.balance(key_id) == 1
    finally:
        holder.kill()
        holder.wait()


_V1_SCHEMA = """
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
"""  # server/credits.py at 276a41c, verbatim


def _version_1_file(path: Path, key: str) -> None:
    now = time.time()
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO api_keys (key_hash, prefix, name, balance, created_at) VALUES (?, ?, 'old', 7, ?)",
               (hash_key(key), key[:9], now - 86400))
    db.executemany("INSERT INTO reservations VALUES (?, 1, 1, ?, ?)",
                   [("crashed-2h-ago", "old-host:1", now - 7200), ("running-now", "old-host:1", now)])
    db.execute("INSERT INTO charges VALUES ('delivered', 1, 1, ?)", (now - 3600,))
    db.commit()
    db.close()


def test_a_version_1_file_is_migrated_in_place(tmp_path):
    path = tmp_path / "v1.db"
    key = "op-" + "k" * 43
    _version_1_file(path, key)
    store = SqliteCreditStore(path)
    try:
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [row[1] for row in raw.execute("PRAGMA table_info(reservations)")]
        assert "expires_at" in columns
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"idempotency_keys", "idempotency_responses", "jobs"} <= tables
        raw.close()
        assert store.authenticate(key) == 1 and store.balance(1) == 7
        assert store.list_keys()[0].images_charged == 1
        # An old server's reservations get the default lease from their creation: the one from 2 h
        # ago is refunded now, the recent one when its lease ends (an old server may still run it).
        assert store.refund_orphans() == 1
        assert [row[0] for row in store.open_reservations()] == ["running-now"]
        assert store.balance(1) == 8
        expiry = store.lease_expiry("running-now")
        assert expiry is not None and time.time() + 300 < expiry < time.time() + 400
        # A version-1 server still running on the file inserts without a lease: it gets the default.
        with sqlite3.connect(path) as old_writer:
            old_writer.execute("UPDATE api_keys SET balance = balance - 1 WHERE id = 1")
            old_writer.execute("INSERT INTO reservations (request_id, key_id, amount, owner, created_at) "
                               "VALUES ('old-writer', 1, 1, 'old-host:1', ?)", (time.time(),))
        old_writer.close()
        expiry = store.lease_expiry("old-writer")
        assert expiry is not None and time.time() + 300 < expiry < time.time() + 400
        assert store.refund("old-writer")
        # The migrated store works like a new one, and opening it again migrates nothing.
        assert store.reserve(1, 1, "new") is not None and store.charge("new")
    finally:
        store.close()
    again = SqliteCreditStore(path)
    try:
        assert again.balance(1) == 7 and again.list_keys()[0].images_charged == 2
    finally:
        again.close()


def test_a_database_of_a_newer_schema_is_refused(backend):
    backend.open().close()
    if backend.name == "sqlite":
        backend.query(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:
        backend.query("UPDATE schema_version SET version = version + 1")
    with pytest.raises(CreditError, match="newer outpaint"):
        backend.open()
    cli = subprocess.run([sys.executable, "-m", "outpaint.cli", "keys", "list", "--db", backend.db],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and "newer outpaint" in cli.stderr and "Traceback" not in cli.stderr


def test_two_processes_migrating_one_old_file_at_once_both_succeed(tmp_path):
    path = tmp_path / "race.db"
    _version_1_file(path, "op-" + "r" * 43)
    opener = "import sys; from outpaint.server.store import open_store; open_store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", opener, str(path)], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    store = SqliteCreditStore(path)
    try:
        assert store.balance(1) == 7 and len(store.open_reservations()) == 2
    finally:
        store.close()


# -- Idempotency-Key storage (issue 11, item 7) ---------------------------------------------------------

def _claim(key: str, body: bytes) -> Claim:
    return Claim(key, hashlib.sha256(body).digest())


def test_an_idempotency_key_is_claimed_with_its_reservation_and_replayed_once_charged(store):
    key_id, _ = store.create_key(3)
    claim = _claim("k1", b"body")
    store.check_idempotency(key_id, claim)  # unknown: it may run
    assert store.reserve(key_id, 1, "r1", claim=claim) is not None
    assert store.idempotency_state(key_id, "k1") == "running"
    with pytest.raises(InProgress):
        store.reserve(key_id, 1, "r1-again", claim=claim)
    assert store.store_response("r1", {"x-seed": "5"}, b"JPEG") is True
    assert store.idempotency_state(key_id, "k1") == "running"  # stored, but not yet charged
    assert store.charge("r1")
    assert store.idempotency_state(key_id, "k1") == "done"
    for attempt in (lambda: store.check_idempotency(key_id, claim),
                    lambda: store.reserve(key_id, 1, "r1-retry", claim=claim)):
        with pytest.raises(AlreadyDone) as done:
            attempt()
        assert (done.value.stored.body, done.value.stored.headers, done.value.stored.request_id) == (
            b"JPEG", {"x-seed": "5"}, "r1")
    with pytest.raises(KeyReused):
        store.reserve(key_id, 1, "other-body", claim=_claim("k1", b"another body"))
    assert store.balance(key_id) == 2  # one charge, whatever the retries
    assert store.idempotency_state(store.create_key(1)[0], "k1") is None  # keys are per API key


def test_one_idempotency_key_sent_by_many_requests_at_once_runs_once(store):
    """Every request checks the key and claims it in one transaction: on PostgreSQL (READ COMMITTED,
    no single writer) the API key's row lock makes the check and the claim one step."""
    key_id, _ = store.create_key(30)
    claim = _claim("burst", b"body")
    barrier = threading.Barrier(24)

    def attempt(i: int) -> str:
        barrier.wait()
        try:
            return "reserved" if store.reserve(key_id, 1, f"burst-{i}", claim=claim) is not None else "short"
        except InProgress:
            return "in progress"

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(attempt, range(24)))
    assert sorted(set(outcomes)) == ["in progress", "reserved"] and outcomes.count("reserved") == 1
    assert store.balance(key_id) == 29 and len(store.open_reservations()) == 1


def test_a_sweep_never_refunds_a_lease_renewed_since_it_looked(store):
    """The sweep reads, then refunds each orphan in a transaction of its own, conditional on the lease
    still being expired: a holder that renewed in between (a replica that was only slow) keeps it."""
    key_id, _ = store.create_key(2)
    store.reserve(key_id, 1, "slow-replica", owner="another-host:1", lease_s=3600)
    store.reserve(key_id, 1, "gone-replica", owner="another-host:2", lease_s=-1)
    looked_at = time.time() - 1  # when the sweep found both expired; one was renewed since
    with store._tx() as tx:  # the sweep's refund step on its own
        assert store._refund_in(tx, "slow-replica", expired_by=looked_at) is False
        assert store._refund_in(tx, "gone-replica", expired_by=looked_at) is True
    assert [row[0] for row in store.open_reservations()] == ["slow-replica"] and store.balance(key_id) == 1


def test_a_refunded_request_releases_its_idempotency_key(store):
    key_id, _ = store.create_key(2)
    claim = _claim("k", b"body")
    store.reserve(key_id, 1, "failed", claim=claim)
    store.store_response("failed", {}, b"JPEG")
    assert store.refund("failed")
    assert store.idempotency_state(key_id, "k") is None
    store.check_idempotency(key_id, claim)  # may run again
    assert store.reserve(key_id, 1, "retry", claim=claim) is not None


def test_stored_responses_are_bounded_per_key_least_recently_used_first_and_expire(backend):
    limits = Limits(ttl_s=3600, per_key_bytes=3000, total_bytes=5000)
    store = backend.open(idempotency=limits)
    try:
        a, _ = store.create_key(100)
        b, _ = store.create_key(100)

        def done(key_id: int, name: str, size: int) -> None:
            store.reserve(key_id, 1, f"{key_id}-{name}", claim=_claim(name, name.encode()))
            assert store.store_response(f"{key_id}-{name}", {}, b"x" * size)
            assert store.charge(f"{key_id}-{name}")

        for name in ("a1", "a2", "a3"):
            done(a, name, 1000)
        with pytest.raises(AlreadyDone):
            store.check_idempotency(a, _claim("a1", b"a1"))  # a1 is now the most recently used
        done(a, "a4", 1000)  # over 3000 for key a: a2, the least recently used, goes
        assert [store.idempotency_state(a, n) for n in ("a1", "a2", "a3", "a4")] == ["done", None, "done", "done"]
        done(b, "b1", 2500)  # over 5000 in all: a3 goes (a1 was replayed since), whichever key it is
        assert [store.idempotency_state(a, n) for n in ("a1", "a3", "a4")] == ["done", None, "done"]
        assert store.idempotency_state(b, "b1") == "done"
        store.reserve(b, 1, "huge", claim=_claim("huge", b"huge"))
        assert store.store_response("huge", {}, b"x" * 3001) is False  # alone over the bounds: not kept
        sizes = backend.query("SELECT SUM(size) FROM idempotency_keys")[0][0]
        assert sizes <= limits.total_bytes
    finally:
        store.close()
    expired = backend.open(idempotency=Limits(ttl_s=0))
    try:
        assert expired.idempotency_state(a, "a4") is None  # past its time to live
        expired.refund_orphans()  # the sweep deletes what expired
        assert backend.query("SELECT COUNT(*) FROM idempotency_responses")[0][0] == 0
    finally:
        expired.close()
