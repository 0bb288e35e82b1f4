"""Asynchronous jobs (server/jobs.py, server/jobs_store.py): a real `outpaint serve` on loopback,
spoken to over HTTP, its store audited afterwards; a SIGKILL mid-job and a restart on the same store.

Kept cheap: the tiny model, 256x256 canvases, strength 0.1 (2 steps) where the image does not matter.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import requests
from PIL import Image

from outpaint.server.jobs_store import MAX_ATTEMPTS, JobLimits, NewJob, TooManyJobs
from outpaint.server.owners import identity
from outpaint.server.process import ServerProcess, start_server
from outpaint.server.store import CreditStore, open_store

from .store_backends import NAMES, Backend, make_backend
from .test_server import ROUTE, TIMEOUT, Keys, assert_json_error, cheap_body, jpeg_size, post, wait_until

JOBS = ROUTE + "/jobs"
RETENTION_S = 4.0
# A job that runs long enough to be cancelled or killed mid-run (25 steps: seconds on the tiny model).
SLOW = {"strength": 1.0, "num_inference_steps": 25}


def submit(server: ServerProcess, body, key: str | None, **kwargs) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["x-api-key"] = key
    return requests.post(server.url + JOBS, json=body, headers=headers, timeout=TIMEOUT, **kwargs)


def get(server: ServerProcess, path: str, key: str | None) -> requests.Response:
    return requests.get(server.url + path, headers={} if key is None else {"x-api-key": key}, timeout=TIMEOUT)


def events(server: ServerProcess, job_id: str, key: str, **headers: str) -> Iterator[tuple[str, str, dict]]:
    """(id, event, data) of the job's event stream until it closes."""
    with requests.get(f"{server.url}{JOBS}/{job_id}/events", headers={"x-api-key": key, **headers},
                      stream=True, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.text[:300]
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for raw in r.iter_lines():
            line = raw.decode()
            if line == "":
                if "event" in fields:
                    yield fields.get("id", ""), fields["event"], json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value


def wait_finished(server: ServerProcess, job_id: str, key: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = get(server, f"{JOBS}/{job_id}", key).json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish within {timeout_s} s")


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs")
    db = folder / "jobs.db"
    open_store(db).close()
    proc = start_server(tiny_model_dir, db=db, log_path=folder / "server.log",
                        args=["--timeout", "120", "--job-retention-s", str(RETENTION_S), "--max-jobs-per-key", "3",
                              "--log-level", "warning"])
    yield proc, Keys(db)
    assert proc.stop() == 0, proc.log()[-3000:]


def test_submit_follow_and_fetch_the_same_image_as_the_blocking_route(served):
    server, keys = served
    key_id, key = keys.new(3)
    body = cheap_body(seed=11)
    r = submit(server, body, key)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"{JOBS}/{job['id']}" == job["links"]["self"]
    assert r.headers["x-remaining-credits"] == "2"  # reserved
    assert job["status"] in ("queued", "running") and job["seed"] == 11
    assert (job["width"], job["height"]) == (256, 256) and job["steps"] >= 2 and job["expires_at"] is None

    seen = list(events(server, job["id"], key))
    kinds = [kind for _, kind, _ in seen]
    assert kinds[0] == "status" and kinds[-1] == "done", kinds
    assert seen[-1][2]["status"] == "succeeded" and seen[-1][2]["step"] == job["steps"]
    steps = [data for _, kind, data in seen if kind == "step"]
    assert steps, kinds
    for data in steps:
        preview = Image.open(io.BytesIO(base64.b64decode(data["preview"])))
        assert preview.format == "JPEG" and data["preview_type"] == "image/jpeg"
        assert preview.size == (data["width"], data["height"]) == (32, 32)  # the latent grid of 256x256
        assert data["steps"] == job["steps"]
    assert [d["step"] for d in steps] == sorted({d["step"] for d in steps})
    assert all(event_id for event_id, _, _ in seen)

    result = get(server, f"{JOBS}/{job['id']}/result", key)
    assert jpeg_size(result) == (256, 256)
    assert result.headers["x-seed"] == "11" and float(result.headers["x-seam-score"]) > 0
    assert result.headers["x-remaining-credits"] == "2"  # charged once, with the image
    status = get(server, f"{JOBS}/{job['id']}", key).json()
    assert status["expires_at"] is not None and status["finished_at"] is not None
    assert status["seam_score"] == pytest.approx(float(result.headers["x-seam-score"]), abs=1e-3)
    # A late follower gets the final status (and the last preview) and done at once.
    assert [kind for _, kind, _ in events(server, job["id"], key)] == ["status", "step", "done"]
    # One that saw the last step already (Last-Event-ID) gets no preview again.
    resumed = events(server, job["id"], key, **{"last-event-id": str(job["steps"])})
    assert [kind for _, kind, _ in resumed] == ["status", "done"]
    balance = get(server, "/v1/user/balance", key)
    assert balance.json() == {"credits": 2} and balance.headers["x-remaining-credits"] == "2"
    blocking = post(server, body, key)
    assert blocking.content == result.content
    assert keys.balance(key_id) == 1


def test_a_random_seed_is_drawn_at_submit(served):
    server, keys = served
    _key_id, key = keys.new(1)
    job = submit(server, cheap_body(seed=-1), key).json()
    assert 0 <= job["seed"] <= 2**32 - 1
    assert wait_finished(server, job["id"], key)["status"] == "succeeded"
    assert get(server, f"{JOBS}/{job['id']}/result", key).headers["x-seed"] == str(job["seed"])


def test_another_key_and_unknown_ids_get_404_and_no_key_401(served):
    server, keys = served
    _, owner = keys.new(1)
    _, stranger = keys.new(1)
    job = submit(server, cheap_body(), owner).json()
    for path in (f"{JOBS}/{job['id']}", f"{JOBS}/{job['id']}/result", f"{JOBS}/{job['id']}/events",
                 f"{JOBS}/nope", f"{JOBS}/nope/result"):
        body = assert_json_error(get(server, path, stranger), 404)
        assert "field" in body
        assert_json_error(get(server, path, None), 401)
    assert_json_error(requests.post(f"{server.url}{JOBS}/{job['id']}/cancel", headers={"x-api-key": stranger},
                                    timeout=TIMEOUT), 404)
    assert_json_error(requests.delete(f"{server.url}{JOBS}/{job['id']}", headers={"x-api-key": stranger},
                                      timeout=TIMEOUT), 404)
    assert wait_finished(server, job["id"], owner)["status"] == "succeeded"


def test_bad_input_and_no_credits_make_no_job_and_no_reservation(served):
    server, keys = served
    broke_id, broke = keys.new(0)
    r = submit(server, cheap_body(), broke)
    assert "credits" in assert_json_error(r, 406)["error"] and r.headers["x-remaining-credits"] == "0"
    key_id, key = keys.new(2)
    r = submit(server, cheap_body(img_width=100), key)
    assert assert_json_error(r, 400)["field"] == "img_width"
    assert_json_error(submit(server, None, key, data=b"{", headers={"content-type": "application/json"}), 400)
    assert_json_error(submit(server, None, key, data=b"{}", headers={"content-type": "text/plain"}), 415)
    assert_json_error(submit(server, cheap_body(image="!!"), key), 400)
    jobs = keys.store.list_jobs()
    assert not [j for j in jobs if j.key_id in (broke_id, key_id)]
    assert not [r for r in keys.store.open_reservations() if r[1] in (broke_id, key_id)]
    assert keys.balance(key_id) == 2 and keys.balance(broke_id) == 0


def test_cancel_refunds_and_a_cancelled_or_succeeded_job_has_no_second_settlement(served):
    server, keys = served
    key_id, key = keys.new(3)
    # A long job holds the one slot, so the second is still queued when it is cancelled.
    slow = submit(server, cheap_body(**SLOW), key).json()
    queued = submit(server, cheap_body(), key).json()
    assert keys.balance(key_id) == 1
    r = requests.post(f"{server.url}{JOBS}/{queued['id']}/cancel", headers={"x-api-key": key}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert r.json()["expires_at"] is not None
    r = requests.delete(f"{server.url}{JOBS}/{slow['id']}", headers={"x-api-key": key}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.headers["x-remaining-credits"] == "3" and keys.balance(key_id) == 3
    # Idempotent; the result of a cancelled job is a 409 naming it.
    again = requests.post(f"{server.url}{JOBS}/{slow['id']}/cancel", headers={"x-api-key": key}, timeout=TIMEOUT)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert "cancelled" in assert_json_error(get(server, f"{JOBS}/{slow['id']}/result", key), 409)["error"]
    kinds = [kind for _, kind, _ in events(server, slow["id"], key)]
    assert kinds[0] == "status" and kinds[-1] == "done"
    # The slot is free again at once (the running job stopped at its next step): a job runs.
    done = submit(server, cheap_body(), key).json()
    assert wait_finished(server, done["id"], key, timeout_s=60)["status"] == "succeeded"
    r = requests.post(f"{server.url}{JOBS}/{done['id']}/cancel", headers={"x-api-key": key}, timeout=TIMEOUT)
    assert "charged" in assert_json_error(r, 409)["error"]
    assert keys.balance(key_id) == 2
    assert _succeeded(keys.store, key_id) == {done["id"]}


def test_per_key_bound_is_429_and_an_idempotent_retry_is_the_same_job(served):
    server, keys = served
    key_id, key = keys.new(10)
    slow = cheap_body(**SLOW)
    ids = [submit(server, {**slow, "seed": n}, key).json()["id"] for n in range(3)]
    r = submit(server, cheap_body(), key)
    assert "unfinished jobs" in assert_json_error(r, 429)["error"]
    assert keys.balance(key_id) == 7
    for job_id in ids:
        requests.post(f"{server.url}{JOBS}/{job_id}/cancel", headers={"x-api-key": key}, timeout=TIMEOUT)
    assert keys.balance(key_id) == 10
    first = submit(server, cheap_body(seed=3), key, headers={"idempotency-key": "job-1"})
    assert first.status_code == 202
    assert wait_finished(server, first.json()["id"], key)["status"] == "succeeded"
    retry = submit(server, cheap_body(seed=3), key, headers={"idempotency-key": "job-1"})
    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"], retry.text
    assert retry.headers["idempotent-replayed"] == "true" and retry.json()["status"] == "succeeded"
    assert_json_error(submit(server, cheap_body(seed=4), key, headers={"idempotency-key": "job-1"}), 422)
    assert keys.balance(key_id) == 9


def test_a_finished_job_is_deleted_after_its_retention(served):
    server, keys = served
    _, key = keys.new(1)
    job = submit(server, cheap_body(), key).json()
    status = wait_finished(server, job["id"], key)
    assert status["status"] == "succeeded"
    assert jpeg_size(get(server, f"{JOBS}/{job['id']}/result", key)) == (256, 256)
    time.sleep(RETENTION_S + 0.2)
    assert_json_error(get(server, f"{JOBS}/{job['id']}/result", key), 404)
    keys.store.sweep_jobs()  # any process's sweep deletes it (the server's runs every few seconds)
    assert job["id"] not in {j.id for j in keys.store.list_jobs()}


def test_openapi_lists_the_job_routes_with_their_codes(served):
    server, _ = served
    paths = requests.get(server.url + "/openapi.json", timeout=TIMEOUT).json()["paths"]
    assert set(paths[JOBS]["post"]["responses"]) >= {"202", "400", "401", "406", "409", "413", "415", "422", "503"}
    assert set(paths[JOBS + "/{job_id}"]["get"]["responses"]) >= {"200", "401", "404"}
    assert set(paths[JOBS + "/{job_id}"]["delete"]["responses"]) >= {"200", "404", "409"}
    assert set(paths[JOBS + "/{job_id}/result"]["get"]["responses"]) >= {"200", "202", "404", "409"}
    assert "text/event-stream" in paths[JOBS + "/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(paths[JOBS + "/{job_id}/cancel"]["post"]["responses"]) >= {"200", "404", "409"}
    assert "200" in paths["/v1/user/balance"]["get"]["responses"]


def _succeeded(store: CreditStore, key_id: int) -> set[str]:
    return {j.id for j in store.list_jobs() if j.key_id == key_id and j.status == "succeeded"}


# -- the store itself, on both databases ------------------------------------------------------------


@pytest.fixture(params=NAMES)
def backend(request, tmp_path) -> Backend:
    return make_backend(request.param, tmp_path, request)


def _job(job_id: str) -> NewJob:
    return NewJob(id=job_id, request={"prompt": "x"}, source=b"png", seed=1, width=256, height=256, steps=2)


def test_store_settles_each_job_once_and_recovers_a_dead_runner(backend):
    store = backend.open()
    try:
        key_id, _ = store.create_key(5)
        limits = JobLimits(per_key=3, total=4)
        for n in range(3):
            assert store.submit_job(key_id, 1, _job(f"j{n}"), limits) is not None
        with pytest.raises(TooManyJobs):
            store.submit_job(key_id, 1, _job("j3"), limits)
        assert store.balance(key_id) == 2
        assert store.refund_orphans() == 0  # a job's reservation is the job's, never a lease's
        first = store.claim_job()
        assert first is not None and first.id == "j0" and first.attempts == 1
        assert store.job_progress("j0", 1, 2, b"jpeg", (32, 32))
        assert store.finish_job("j0", b"result", 1.0, [], 60.0) == 1
        assert store.finish_job("j0", b"result", 1.0, [], 60.0) is None  # settled once
        before, row = store.cancel_job("j1", key_id, 60.0) or ("", None)
        assert before == "queued" and row is not None and row.status == "cancelled"
        assert store.balance(key_id) == 3
        # j2 claimed by a process that is certainly dead: queued again, then failed and refunded.
        dead = identity()
        dead = dead.replace(f":{dead.split(':')[1]}:", ":999999999:") if ":start=" in dead else dead
        backend.query("UPDATE jobs SET status = 'running', owner = ?, attempts = 1 WHERE id = 'j2'", (dead,))
        if ":start=" in dead:
            assert store.sweep_jobs()[0] == 1
            assert store.get_job("j2", key_id).status == "queued"  # type: ignore[union-attr]
        backend.query("UPDATE jobs SET status = 'running', owner = 'elsewhere:1', lease_until = 0, attempts = ? "
                      "WHERE id = 'j2'", (MAX_ATTEMPTS,))
        assert store.sweep_jobs()[1] == 1
        failed = store.get_job("j2", key_id)
        assert failed is not None and failed.status == "failed" and failed.error_status == 500
        assert store.balance(key_id) == 4 and store.open_reservations() == []
        assert backend.query("SELECT request_id FROM charges") == [("j0",)]
        assert store.get_job("j0", key_id + 1) is None  # another key sees nothing
        backend.query("UPDATE jobs SET expires_at = 0")
        assert store.sweep_jobs()[2] == 3 and store.list_jobs() == []
    finally:
        store.close()


# -- a restart mid-job --------------------------------------------------------------------------------


@pytest.mark.parametrize("database", NAMES)
def test_a_job_running_when_its_server_is_killed_finishes_after_a_restart(database, tiny_model_dir, tmp_path,
                                                                           request):
    backend = make_backend(database, tmp_path, request)
    store = backend.open()
    key_id, key = store.create_key(5)
    args = ["--timeout", "120", "--log-level", "info"]
    server = start_server(tiny_model_dir, db=backend.db, log_path=tmp_path / "first.log", args=args)
    slow = cheap_body(strength=0.6, seed=9)  # 15 steps: killed after the first
    try:
        running = submit(server, slow, key).json()
        waiting = submit(server, cheap_body(seed=10), key).json()
        wait_until(lambda: (store.get_job(running["id"], key_id) or running).step >= 1, 60, "the first step")
    finally:
        server.stop(signal.SIGKILL)
    assert store.get_job(running["id"], key_id).status == "running"  # type: ignore[union-attr]
    assert store.get_job(waiting["id"], key_id).status == "queued"  # type: ignore[union-attr]
    assert store.balance(key_id) == 3
    again = start_server(tiny_model_dir, db=backend.db, log_path=tmp_path / "second.log", args=args)
    try:
        first = wait_finished(again, running["id"], key, timeout_s=120)
        second = wait_finished(again, waiting["id"], key, timeout_s=60)
        assert (first["status"], second["status"]) == ("succeeded", "succeeded"), (first, second)
        assert first["attempts"] == 2 and second["attempts"] == 1
        assert jpeg_size(get(again, f"{JOBS}/{running['id']}/result", key)) == (256, 256)
    finally:
        assert again.stop() == 0, again.log()[-3000:]
    # The ledger: balance = start - charged; the charged ids are the succeeded jobs, each once.
    charged = backend.query("SELECT request_id, amount FROM charges ORDER BY request_id")
    assert sorted(charged) == sorted([(running["id"], 1), (waiting["id"], 1)])
    assert store.balance(key_id) == 3 and store.open_reservations() == []
    store.close()


def test_two_servers_on_one_postgresql_share_the_queue_and_follow_each_others_jobs(tiny_model_dir, tmp_path,
                                                                                    request):
    """Replicas of one database: a job queued through one is run by whichever has a free slot (SKIP
    LOCKED), and the other follows its events (from the row) and serves its result."""
    backend = make_backend("postgres", tmp_path, request)
    store = backend.open()
    key_id, key = store.create_key(4)
    args = ["--timeout", "120", "--log-level", "warning"]
    with ThreadPoolExecutor(2) as pool:  # started side by side: the model loads take most of the test
        starting = [pool.submit(start_server, tiny_model_dir, db=backend.db, log_path=tmp_path / f"{name}.log",
                                args=args) for name in ("a", "b")]
        servers = [future.result() for future in starting]
    try:
        long_job = submit(servers[0], cheap_body(**{**SLOW, "num_inference_steps": 50}), key).json()["id"]
        wait_until(lambda: (store.get_job(long_job, key_id) or long_job).status == "running", 60,  # type: ignore[union-attr]
                   "the long job claimed")
        runner = _server_of(store.get_job(long_job, key_id).owner, servers)  # type: ignore[union-attr]
        other = servers[1 - servers.index(runner)]
        short_job = submit(runner, cheap_body(), key).json()["id"]  # its runner is busy: the other takes it
        # Followed live on the server that does not run it: from the row.
        seen = list(events(other, long_job, key))
        assert seen[0][1] == "status" and seen[-1][1] == "done" and seen[-1][2]["status"] == "succeeded"
        assert any(kind == "step" for _, kind, _ in seen), [kind for _, kind, _ in seen]
        assert jpeg_size(get(other, f"{JOBS}/{long_job}/result", key)) == (256, 256)
        assert wait_finished(runner, short_job, key)["status"] == "succeeded"
        assert jpeg_size(get(runner, f"{JOBS}/{short_job}/result", key)) == (256, 256)
        assert _server_of(store.get_job(short_job, key_id).owner, servers) is other  # type: ignore[union-attr]
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()[-3000:]
    assert sorted(backend.query("SELECT request_id FROM charges")) == sorted([(long_job,), (short_job,)])
    assert store.balance(key_id) == 2
    store.close()


def _server_of(owner: str | None, servers: list[ServerProcess]) -> ServerProcess:
    """The server whose process `owner` (jobs.owner: host:pid:...) names."""
    assert owner is not None
    pid = int(owner.split(":")[1])
    return next(server for server in servers if server.pid == pid)
