"""Issue 11, items 5-7, as an attacker or an unlucky client meets them: `outpaint serve` on loopback.

5. made-up methods and paths must not grow /metrics;
6. reservations are settled by leases: another host's expired ones are refunded at start and by a
   running server, a zombie holder's at once;
7. `Idempotency-Key`: a retry of a charged request gets the same image without a second charge,
   also after the server was SIGKILLed right after the charge.

Each test reproduces the problem against the code before the fix (276a41c) and fails there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import requests

from outpaint.server.process import ServerProcess, start_server
from outpaint.server.store import open_store

from .test_server import ROUTE, TIMEOUT, Keys, assert_json_error, cheap_body, jpeg_size, metric, post, wait_until

ARGS = ["--max-queue", "16", "--timeout", "120", "--log-level", "warning"]


@pytest.fixture(scope="module")
def hardened(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hardening-credits")
    db = folder / "main.db"
    open_store(db).close()
    server = start_server(tiny_model_dir, db=db, log_path=folder / "main.log", args=ARGS)
    yield server, Keys(db)
    assert server.stop() == 0, server.log()[-3000:]


# -- 5. metrics cardinality ------------------------------------------------------------------------------

METRICS_BOUND_BYTES = 32 * 1024  # /metrics after the probe: 20.7 KB measured; 344 KB before the bound


def test_made_up_methods_and_paths_do_not_grow_the_metrics(hardened):
    server, _keys = hardened
    rng = random.Random(5)
    routes = ["/healthz", "/readyz", "/metrics", ROUTE, "/docs", "/openapi.json"]
    session = requests.Session()
    for i in range(2000):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        token = "".join(rng.choices(string.ascii_lowercase + string.digits, k=10))
        path = [rng.choice(routes), f"/{token}", f"/healthz/{token}", rng.choice(routes) + "/", f"/{i}"][i % 5]
        if i % 7 == 0:
            method = rng.choice(["GET", "HEAD", "OPTIONS", "DELETE"])
        session.request(method, server.url + path, timeout=TIMEOUT, allow_redirects=False)
    text = requests.get(server.url + "/metrics", timeout=TIMEOUT).text
    series = [line for line in text.splitlines() if line.startswith("outpaint_http_requests_total{")]
    methods = {line.split('method="')[1].split('"')[0] for line in series}
    routes_seen = {line.split('route="')[1].split('"')[0] for line in series}
    print(f"/metrics after 2000 probes: {len(text)} bytes, {len(series)} request series")
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other"}
    assert routes_seen <= {*routes, "unmatched"}
    assert len(series) <= 60, series
    assert len(text.encode()) < METRICS_BOUND_BYTES
    assert metric(server, "outpaint_http_requests_total", route="unmatched", method="other", code="404") > 0
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


# -- 6. reservation leases ---------------------------------------------------------------------------------


def _orphan(db: Path, key_id: int, request_id: str, owner: str, lease_s: float) -> None:
    """What a dead server leaves: a credit taken and a reservation row. Written with SQL for the
    schema of the file (the old schema has no lease), so the test runs on the old code too."""
    now = time.time()
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(reservations)")]
        conn.execute("UPDATE api_keys SET balance = balance - 1 WHERE id = ?", (key_id,))
        if "expires_at" in columns:
            conn.execute("INSERT INTO reservations (request_id, key_id, amount, owner, created_at, expires_at) "
                         "VALUES (?, ?, 1, ?, ?, ?)", (request_id, key_id, owner, now - 3600, now + lease_s))
        else:
            conn.execute("INSERT INTO reservations (request_id, key_id, amount, owner, created_at) "
                         "VALUES (?, ?, 1, ?, ?)", (request_id, key_id, owner, now - 3600))
    conn.close()


def test_another_hosts_expired_reservations_are_refunded_at_start_and_by_a_running_server(tiny_model_dir,
                                                                                          tmp_path):
    db = tmp_path / "leases.db"
    keys = Keys(db)
    key_id, key = keys.new(10)
    # A re-created container: another hostname, and the same PID 1 as any container's server.
    _orphan(db, key_id, "expired", "3f2a9c1e7b6d:1", lease_s=-1)
    _orphan(db, key_id, "within-lease", "3f2a9c1e7b6d:1", lease_s=3600)
    assert keys.balance(key_id) == 8
    server = start_server(tiny_model_dir, db=db, log_path=tmp_path / "leases.log", args=ARGS)
    try:
        assert keys.balance(key_id) == 9  # the expired one, at start
        assert "lease expired" in server.log() and "3f2a9c1e7b6d" in server.log()
        # One left by another server while this one runs: its sweep refunds it once its lease ends.
        _orphan(db, key_id, "expires-soon", "3f2a9c1e7b6d:1", lease_s=2)
        assert keys.balance(key_id) == 8
        wait_until(lambda: keys.balance(key_id) == 9, 30, "the running server to refund an expired lease")
        assert [row[0] for row in keys.store.open_reservations()] == ["within-lease"]
        assert metric(server, "outpaint_credit_refunds_total", reason="lease_expired") == 1
        # Its own requests are charged and not refunded by its sweep.
        assert jpeg_size(post(server, cheap_body(), key)) == (256, 256)
        assert keys.balance(key_id) == 8 and keys.store.open_reservations()[0][0] == "within-lease"
    finally:
        assert server.stop() == 0


def _is_zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see a zombie")
def test_a_restart_while_the_killed_server_is_a_zombie_refunds_it_at_once(tiny_model_dir, tmp_path):
    db = tmp_path / "zombie.db"
    keys = Keys(db)
    key_id, key = keys.new(3)
    first = start_server(tiny_model_dir, db=db, log_path=tmp_path / "zombie-1.log", args=ARGS)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, first, cheap_body(num_inference_steps=100, strength=1.0), key)
        wait_until(lambda: metric(first, "outpaint_generations_in_progress") == 1, 60, "the generation to start")
        assert keys.balance(key_id) == 2
        # SIGKILL, and nobody reaps it yet (ServerProcess.running() would): a zombie keeps its PID.
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: _is_zombie(first.pid), 30, "the killed server to be a zombie")
        with pytest.raises(requests.RequestException):
            pending.result(timeout=TIMEOUT)
    second = start_server(tiny_model_dir, db=db, log_path=tmp_path / "zombie-2.log", args=ARGS)
    try:
        assert _is_zombie(first.pid)
        assert keys.balance(key_id) == 3, "the zombie's reservation was not refunded at start"
        assert keys.store.open_reservations() == []
    finally:
        assert second.stop() == 0
        first.process.wait(timeout=30)


# -- 7. Idempotency-Key ------------------------------------------------------------------------------------


def _keyed(server: ServerProcess, body: dict, key: str, idempotency_key: str) -> requests.Response:
    return post(server, body, key, headers={"Idempotency-Key": idempotency_key})


def test_a_retry_with_the_same_idempotency_key_gets_the_same_image_without_a_second_charge(hardened):
    server, keys = hardened
    key_id, key = keys.new(1)
    first = _keyed(server, cheap_body(seed=11), key, "retry-1")
    assert jpeg_size(first) == (256, 256) and "idempotent-replayed" not in first.headers
    assert keys.balance(key_id) == 0
    # The balance is 0 now: the retry is answered from the stored response, not refused with a 406.
    again = _keyed(server, cheap_body(seed=11), key, "retry-1")
    assert again.status_code == 200, again.text[:300]
    assert again.content == first.content
    assert again.headers["x-seed"] == first.headers["x-seed"]
    assert again.headers["content-type"] == "image/jpeg"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-original-request-id"] == first.headers["x-request-id"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert again.headers["x-remaining-credits"] == "0"
    assert keys.balance(key_id) == 0
    assert metric(server, "outpaint_idempotency_total", outcome="replayed") >= 1

    # The same key with another body: 422, nothing charged (the draft's answer).
    other = _keyed(server, cheap_body(seed=12), key, "retry-1")
    assert "different request body" in assert_json_error(other, 422)["error"]
    # The draft's quoted form of the same key is the same key.
    quoted = _keyed(server, cheap_body(seed=11), key, '"retry-1"')
    assert quoted.status_code == 200 and quoted.content == first.content
    # Keys are per API key: another customer's "retry-1" is another request.
    other_id, other_key = keys.new(1)
    theirs = _keyed(server, cheap_body(seed=11), other_key, "retry-1")
    assert jpeg_size(theirs) == (256, 256) and "idempotent-replayed" not in theirs.headers
    assert keys.balance(other_id) == 0 and keys.balance(key_id) == 0


def test_malformed_idempotency_keys_are_400_and_charge_nothing(hardened):
    server, keys = hardened
    key_id, key = keys.new(1)
    for bad in ("", "x" * 256, "caf\u00e9".encode().decode("latin-1"), "two words"):
        r = _keyed(server, cheap_body(), key, bad)
        assert "Idempotency-Key" in assert_json_error(r, 400)["error"], bad
    assert keys.balance(key_id) == 1


def test_a_retry_while_the_first_is_running_is_409_then_the_image(hardened):
    server, keys = hardened
    key_id, key = keys.new(2)
    body = cheap_body(num_inference_steps=60, strength=1.0)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_keyed, server, body, key, "slow-1")
        wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 1, 60, "the generation to start")
        conflict = _keyed(server, body, key, "slow-1")
        assert "still running" in assert_json_error(conflict, 409)["error"]
        assert int(conflict.headers["retry-after"]) >= 1
        first = running.result(timeout=TIMEOUT)
    assert jpeg_size(first) == (256, 256)
    assert keys.balance(key_id) == 1
    replay = _keyed(server, body, key, "slow-1")
    assert replay.status_code == 200 and replay.content == first.content
    assert keys.balance(key_id) == 1


def test_concurrent_requests_with_one_key_run_once(hardened):
    server, keys = hardened
    key_id, key = keys.new(5)
    barrier = threading.Barrier(6)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return _keyed(server, cheap_body(seed=3), key, "burst-1")

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 409} and 200 in codes, codes
    images = {r.content for r in responses if r.status_code == 200}
    assert len(images) == 1
    assert keys.balance(key_id) == 4  # one charge, however many got the image


def _charges(db: Path, key_id: int) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        found = conn.execute("SELECT COUNT(*) FROM charges WHERE key_id = ?", (key_id,)).fetchone()[0]
    conn.close()
    return found


def _send(server: ServerProcess, body: dict, key: str, idempotency_key: str) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nx-api-key: {key}\r\n"
                 f"Idempotency-Key: {idempotency_key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def _received(sock: socket.socket) -> bytes:
    chunks = []
    sock.settimeout(5)
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    sock.close()
    return b"".join(chunks)


def test_sigkill_before_or_right_after_the_charge_then_a_retry_charges_exactly_once(tiny_model_dir, tmp_path):
    """Killed mid-generation: refunded, the retry runs and is charged once. Killed the moment the
    charge commits (polled from here, before or just after the bytes leave): the retry gets the
    image that was paid for, without a second charge."""
    db = tmp_path / "crash.db"
    keys = Keys(db)
    key_id, key = keys.new(5)
    logs = iter(tmp_path / f"crash-{i}.log" for i in range(3))
    server = start_server(tiny_model_dir, db=db, log_path=next(logs), args=ARGS)
    try:
        # Before the charge.
        sock = _send(server, cheap_body(num_inference_steps=100, strength=1.0), key, "before")
        wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 1, 60, "the generation to start")
        server.stop(signal.SIGKILL)
        sock.close()
        server = start_server(tiny_model_dir, db=db, log_path=next(logs), args=ARGS)
        assert keys.balance(key_id) == 5
        retried = _keyed(server, cheap_body(num_inference_steps=100, strength=1.0), key, "before")
        assert jpeg_size(retried) == (256, 256) and "idempotent-replayed" not in retried.headers
        assert keys.balance(key_id) == 4

        # Right after the charge.
        charged = _charges(db, key_id)
        sock = _send(server, cheap_body(seed=21), key, "after")
        deadline = time.monotonic() + TIMEOUT
        while _charges(db, key_id) == charged:
            assert time.monotonic() < deadline, "the request was never charged"
        os.kill(server.pid, signal.SIGKILL)
        server.stop(signal.SIGKILL)
        received = _received(sock)
        assert keys.balance(key_id) == 3
        server = start_server(tiny_model_dir, db=db, log_path=next(logs), args=ARGS)
        assert keys.balance(key_id) == 3 and keys.store.open_reservations() == []
        replay = _keyed(server, cheap_body(seed=21), key, "after")
        assert jpeg_size(replay) == (256, 256)
        assert replay.headers["idempotent-replayed"] == "true"
        delivered = received.startswith(b"HTTP/1.1 200") and received.endswith(replay.content)
        print(f"killed right after the charge; the first answer had {'' if delivered else 'not '}arrived whole "
              f"({len(received)} bytes)")
        assert keys.balance(key_id) == 3
        assert replay.headers["x-remaining-credits"] == "3"
    finally:
        server.stop()
