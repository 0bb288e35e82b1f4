"""The credits store on a real SQLite file: hashing, atomic debits under threads, crash reconciliation."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from outpaint.server.credits import CreditError, CreditStore, KeyRevoked, hash_key, this_process


@pytest.fixture
def store(tmp_path):
    s = CreditStore(tmp_path / "credits.db")
    yield s
    s.close()


def test_database_is_in_wal_mode(store):
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_only_a_hash_of_the_key_is_stored(store):
    key_id, key = store.create_key(5, name="alice")
    assert store.authenticate(key) == key_id
    store.close()
    raw = b"".join(p.read_bytes() for p in store.path.parent.glob("credits.db*"))
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


def test_balance_can_never_go_negative_even_by_direct_sql(store):
    key_id, _ = store.create_key(1)
    with pytest.raises(sqlite3.IntegrityError):
        sqlite3.connect(store.path).execute("UPDATE api_keys SET balance = -1 WHERE id = ?", (key_id,))


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


_CRASHING_WORKER = """
import os, signal, sys
from outpaint.server.credits import CreditStore
store = CreditStore(sys.argv[1])
key_id = int(sys.argv[2])
store.reserve(key_id, 1, "delivered")
store.charge("delivered")
store.reserve(key_id, 1, "in-flight")  # the generation this process never finishes
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_leaves_an_open_reservation_that_a_restart_refunds(store):
    key_id, _ = store.create_key(5)
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WORKER, str(store.path), str(key_id)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.balance(key_id) == 3  # one charged, one reserved and orphaned
    assert [row[0] for row in store.open_reservations()] == ["in-flight"]

    assert CreditStore(store.path).refund_orphans() == 1
    assert store.balance(key_id) == 4  # start - images delivered
    assert store.open_reservations() == []


def test_reconcile_leaves_live_owners_and_other_hosts_alone(store):
    key_id, _ = store.create_key(5)
    host = this_process().rpartition(":")[0]
    store.reserve(key_id, 1, "live", owner=f"{host}:{os.getppid()}")  # pytest's parent: alive
    store.reserve(key_id, 1, "elsewhere", owner="some-other-host:1234")
    store.reserve(key_id, 1, "mine-stale", owner=this_process())  # our pid before a restart
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.reserve(key_id, 1, "dead", owner=f"{host}:{int(dead.stdout)}")
    assert store.refund_orphans() == 2
    assert sorted(row[0] for row in store.open_reservations()) == ["elsewhere", "live"]
    assert store.balance(key_id) == 3


def test_keys_cli_creates_lists_adds_and_revokes(tmp_path):
    db = tmp_path / "keys.db"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "outpaint.cli", "keys", *args, "--db", str(db)],
                              capture_output=True, text=True, timeout=60)

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
    store = CreditStore(Path(db))
    try:
        assert store.authenticate(key) is None
        assert store.balance(1) == 10
    finally:
        store.close()
