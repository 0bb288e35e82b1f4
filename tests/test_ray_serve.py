"""`outpaint serve-ray`: the API on a real local Ray cluster (loopback, 2 CPUs), two replicas of the
tiny model sharing one PostgreSQL credits database (a real server, server/pg_cluster.py), spoken
to over HTTP like `outpaint serve` (test_server.py): the deployment of many machines, on one.

One cluster for the module (starting Ray and two replicas takes about 20 s on 2 cores); the plain
server runs beside it on the same credits file, so every answer can be compared with its own. SQLite shared by
processes is what test_server.py and the serve_faults benchmark run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("requests")

import requests

from outpaint.core.manifest import Manifest, describe_file
from outpaint.server.process import ServerProcess, start_server

from .test_server import B64, ROUTE, TIMEOUT, Keys, assert_json_error, cheap_body, jpeg_size, post, wait_until

# Per replica 1 running and 2 waiting; the proxy holds 8 more. Ray counts a request as queued until the
# router has assigned it, so a burst larger than the proxy's queue can be turned away even while replicas
# have room (ray/serve/_private/router.py says so): the bursts below stay within it where none may be.
CONCURRENCY, MAX_QUEUE, RAY_QUEUE = 1, 2, 8
# Headers whose values differ between two servers by nature, or that only Serve adds.
VARYING = {"date", "server", "x-replica", "x-request-id"}


@pytest.fixture(scope="module")
def ray_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def credits_db(postgres_cluster) -> str:
    return postgres_cluster.create_database()


@pytest.fixture(scope="module")
def keys(credits_db) -> Keys:
    return Keys(credits_db)


@pytest.fixture(scope="module")
def ray_server(tiny_model_dir, ray_dir, credits_db, keys):
    proc = start_server(
        tiny_model_dir, db=credits_db, log_path=ray_dir / "serve-ray.log", subcommand="serve-ray",
        ready_line="on Ray Serve", ready_timeout_s=180,
        args=["--replicas", "2", "--num-cpus", "2", "--cpus-per-replica", "1", "--concurrency", str(CONCURRENCY),
              "--max-queue", str(MAX_QUEUE), "--max-queued-requests", str(RAY_QUEUE), "--timeout", "60",
              "--max-body-bytes", str(1024 * 1024), "--max-image-pixels", str(1000 * 1000), "--log-level", "warning"],
    )
    yield proc
    code = proc.stop(timeout_s=120)
    assert code == 0, proc.log()[-3000:]


@pytest.fixture(scope="module")
def plain_server(tiny_model_dir, ray_dir, credits_db, keys):
    """`outpaint serve` with the same limits, on the same credits database."""
    proc = start_server(tiny_model_dir, db=credits_db, log_path=ray_dir / "serve.log",
                        args=["--concurrency", str(CONCURRENCY), "--max-queue", str(MAX_QUEUE), "--timeout", "60",
                              "--max-body-bytes", str(1024 * 1024), "--max-image-pixels", str(1000 * 1000),
                              "--log-level", "warning"])
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


def test_reference_client_from_the_api_doc_on_ray_serve(ray_server, keys):
    key_id, key = keys.new(3)
    # api.md's example, verbatim but for the canvas (256 keeps the test fast) and the URL/key.
    url = ray_server.url + ROUTE
    b64 = B64
    data = {"image": b64, "prompt": "streets in italy", "negative_prompt": "NONE",
            "scheduler": "DDIM", "num_inference_steps": 25, "img_width": 256, "img_height": 256,
            "scale": 1, "strength": 1, "offset_x": 64, "offset_y": 64, "guidance_scale": 7.5,
            "mask_expand": 8, "seed": 124567}
    r = requests.post(url, json=data, headers={"x-api-key": key}, timeout=TIMEOUT)   # r.content is a JPEG
    assert jpeg_size(r) == (256, 256)
    assert r.headers["x-seed"] == "124567"
    assert r.headers["x-remaining-credits"] == "2"
    # One request id, ours (Serve's proxy appends its own: server/ray_proxy.py keeps the first).
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers["x-request-id"]
    assert r.headers["x-replica"]
    assert keys.balance(key_id) == 2


def _battery(key: str, broke_key: str) -> list[tuple[str, str, dict]]:
    return [
        ("a success", "post", {"json": cheap_body(), "headers": {"x-api-key": key}}),
        ("a field out of range", "post", {"json": cheap_body(img_width=300), "headers": {"x-api-key": key}}),
        ("a field of the wrong type", "post", {"json": cheap_body(seed="x"), "headers": {"x-api-key": key}}),
        ("malformed JSON", "post", {"data": b"{", "headers": {"x-api-key": key, "content-type": "application/json"}}),
        ("no key", "post", {"json": cheap_body()}),
        ("an unknown key", "post", {"json": cheap_body(), "headers": {"x-api-key": "op-" + "x" * 43}}),
        ("no credits", "post", {"json": cheap_body(), "headers": {"x-api-key": broke_key}}),
        ("an unknown path", "get", {"url": "/v1/sd2-outpaint"}),
        ("the playground page", "get", {"url": "/"}),  # server/playground.py: every replica serves it
        ("the playground's script", "get", {"url": "/playground/playground.js"}),
        ("a wrong method", "get", {}),
        ("a body over the limit", "post", {"json": cheap_body(padding="x" * (2 * 1024 * 1024)),
                                           "headers": {"x-api-key": key}}),
        ("not JSON", "post", {"data": b"image=...", "headers": {"x-api-key": key,
                                                                "content-type": "application/x-www-form-urlencoded"}}),
    ]


def _call(server: ServerProcess, method: str, kwargs: dict) -> requests.Response:
    kwargs = dict(kwargs)
    url = server.url + kwargs.pop("url", ROUTE)
    return requests.request(method, url, timeout=TIMEOUT, **kwargs)


def test_every_answer_is_the_plain_servers(ray_server, plain_server, keys):
    """Same status, same headers (but for values that differ by nature), same body, case by case."""
    ray_key_id, ray_key = keys.new(2)
    plain_key_id, plain_key = keys.new(2)
    _, ray_broke = keys.new(0)
    _, plain_broke = keys.new(0)
    differences = []
    for (name, method, on_ray), (_, _, on_plain) in zip(_battery(ray_key, ray_broke), _battery(plain_key, plain_broke),
                                                        strict=True):
        a, b = _call(ray_server, method, on_ray), _call(plain_server, method, on_plain)
        if a.status_code != b.status_code:
            differences.append(f"{name}: status {a.status_code} on Ray, {b.status_code} plain")
            continue
        if a.status_code != 200 and a.json() != b.json():
            differences.append(f"{name}: body {a.text} on Ray, {b.text} plain")
        if a.status_code == 200 and a.content != b.content:
            differences.append(f"{name}: a different image")
        headers_a = {k.lower(): v for k, v in a.headers.items() if k.lower() not in VARYING}
        headers_b = {k.lower(): v for k, v in b.headers.items() if k.lower() not in VARYING}
        if headers_a != headers_b:
            differences.append(f"{name}: headers {headers_a} on Ray, {headers_b} plain")
        for r in (a, b):
            if not re.fullmatch(r"[0-9a-f]{32}", r.headers.get("x-request-id", "")):
                differences.append(f"{name}: x-request-id {r.headers.get('x-request-id')!r}")
        if a.status_code != 200:
            assert_json_error(a, a.status_code)
    assert not differences, "\n".join(differences)
    assert keys.balance(ray_key_id) == keys.balance(plain_key_id) == 1  # one success each, nothing else charged


def test_requests_spread_over_both_replicas_and_the_ledger_is_exact(ray_server, keys):
    key_id, key = keys.new(12)
    barrier = threading.Barrier(6)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return post(ray_server, cheap_body(), key)

    with ThreadPoolExecutor(6) as pool:  # as many as the two gates hold: none is turned away
        responses = list(pool.map(one, range(6)))
    codes = [r.status_code for r in responses]
    assert codes == [200] * 6, [(r.status_code, r.text[:200]) for r in responses]
    replicas = {r.headers["x-replica"] for r in responses}
    assert len(replicas) == 2, f"all requests went to {replicas}"
    assert keys.balance(key_id) == 12 - 6
    assert [row for row in keys.store.open_reservations() if row[1] == key_id] == []


def test_full_queues_answer_503_json_with_retry_after_and_charge_nothing(ray_server, keys):
    """Once the two gates and the proxy's queue are full, the next request is a 503 in the API's format, from
    Serve's proxy; every image delivered is charged once.

    The system is filled first and probed after: Ray checks its queue bound before it counts an arrival (the
    count comes after an await in ray/serve/_private/router.py), so requests that arrive in the same instant
    all pass the check, and one simultaneous burst of 24 was once admitted whole (CI, stop 23)."""
    key_id, key = keys.new(40)
    fill = 2 * (CONCURRENCY + MAX_QUEUE) + RAY_QUEUE
    barrier = threading.Barrier(fill)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return post(ray_server, cheap_body(num_inference_steps=25, strength=0.4), key)

    max_probes = 12
    with ThreadPoolExecutor(fill + max_probes) as pool:
        filling = [pool.submit(one, i) for i in range(fill)]
        # A probe every 250 ms until one is turned away: the first to arrive after Ray has counted the fill is,
        # for as long as no filling request has finished (each takes a second or more, two at a time). The
        # proxy may answer them late, so the probes run beside each other.
        probes: list[Future[requests.Response]] = []
        while len(probes) < max_probes and not any(p.done() and p.result().status_code == 503 for p in probes):
            time.sleep(0.25)
            probes.append(pool.submit(post, ray_server, cheap_body(), key))
        responses = [f.result(timeout=TIMEOUT) for f in filling + probes]
    by_code: dict[int, int] = {}
    for r in responses:
        by_code[r.status_code] = by_code.get(r.status_code, 0) + 1
        if r.status_code == 200:
            assert jpeg_size(r) == (256, 256)
        else:
            assert_json_error(r, 503)
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-remaining-credits"].isdigit()  # the proxy's own answers carry it too
    assert set(by_code) <= {200, 503} and by_code.get(503, 0) >= 1, by_code
    # Ray's router holds each replica to its gate's slots, so the 503s are the proxy's own, rewritten from
    # Ray's plain text into the API's format (server/ray_proxy.py).
    assert any("at capacity" in r.json()["error"] for r in responses if r.status_code == 503)
    # Every gate slot and the proxy's queue: at least the six slots' worth succeeded.
    assert by_code.get(200, 0) >= 2 * (CONCURRENCY + MAX_QUEUE), by_code
    assert keys.balance(key_id) == 40 - by_code.get(200, 0)
    assert [row for row in keys.store.open_reservations() if row[1] == key_id] == []


def test_a_replica_killed_mid_request_answers_json_and_its_credit_comes_back(ray_server, keys):
    """SIGKILL of the replica process that holds a reservation (a crash, not a drain): the client gets the
    API's JSON 500 from Serve's proxy, the other replica's lease sweep refunds the credit (its holder is
    certainly dead: same host), and Ray starts a new replica that serves again."""
    key_id, key = keys.new(2)
    result: dict[str, requests.Response] = {}
    slow = threading.Thread(target=lambda: result.update(
        r=post(ray_server, cheap_body(num_inference_steps=100, strength=1.0), key)))
    slow.start()

    def held() -> list:
        return [row for row in keys.store.open_reservations() if row[1] == key_id]

    wait_until(lambda: bool(held()), 60, "the request's reservation")
    rows = held()
    assert len(rows) == 1, rows
    pid = int(rows[0][3].split(":")[1])  # the owner: host:pid:... (server/owners.py)
    assert "ServeReplica" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    slow.join(TIMEOUT)
    r = result["r"]
    body = assert_json_error(r, 500)
    assert "refunded" in body["error"]
    assert r.headers["x-remaining-credits"].isdigit()
    wait_until(lambda: keys.balance(key_id) == 2, 30, "the other replica's sweep to refund the killed one's credit")
    refunded_after = time.monotonic() - killed
    assert [row for row in keys.store.open_reservations() if row[1] == key_id] == []
    # Serving goes on (the surviving replica at once; Ray restarts the killed one in the background).
    assert jpeg_size(post(ray_server, cheap_body(), key)) == (256, 256)
    assert keys.balance(key_id) == 1
    print(f"refunded {refunded_after:.1f} s after the kill")



def test_sigterm_drains_in_flight_work_then_exits_0(ray_server, keys):
    """Last of the module (it stops the cluster): a generation running when SIGTERM arrives finishes, is
    delivered and charged once; the process then exits 0 (the fixture checks the code)."""
    key_id, key = keys.new(1)
    result: dict[str, requests.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=post(ray_server, cheap_body(num_inference_steps=60,
                                                                                      strength=1.0), key)))
    slow.start()
    wait_until(lambda: any(row[1] == key_id for row in keys.store.open_reservations()), 60, "the reservation")
    ray_server.process.send_signal(signal.SIGTERM)
    slow.join(TIMEOUT)
    assert jpeg_size(result["r"]) == (256, 256)
    assert result["r"].headers["x-remaining-credits"] == "0"
    assert ray_server.process.wait(timeout=120) == 0, ray_server.log()[-3000:]
    assert keys.balance(key_id) == 0
    assert keys.store.open_reservations() == []

# -- without a cluster: the deployment's options and the config-file builder ------------------------------


def test_deployment_options_follow_the_gate_and_the_backend():
    from outpaint.server.config import ServerConfig
    from outpaint.server.ray_serve import RayOptions, deployment_options

    cpu = deployment_options(ServerConfig(model=Path("m"), concurrency=2, max_queue=5, timeout_s=100),
                             RayOptions(replicas=3, cpus_per_replica=4))
    assert cpu["num_replicas"] == 3 and cpu["max_ongoing_requests"] == 7
    assert cpu["ray_actor_options"] == {"num_cpus": 4}
    assert cpu["graceful_shutdown_timeout_s"] == 130 and cpu["backpressure_config"].retry_after_s == 10
    gpu = deployment_options(ServerConfig(model=Path("m"), backend="ort-cuda"),
                             RayOptions(replicas=2, min_replicas=1, max_replicas=8))
    assert gpu["ray_actor_options"]["num_gpus"] == 1 and "num_replicas" not in gpu
    assert gpu["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 2, "max_replicas": 8,
                                         "target_ongoing_requests": 1, "upscale_delay_s": 30.0,
                                         "downscale_delay_s": 300.0}


def test_the_config_file_builder_types_its_arguments_and_names_the_bad_ones(tiny_model_dir):
    from outpaint.server.ray_serve import app

    app({"model": str(tiny_model_dir), "db": "credits.db", "concurrency": "2", "timeout_s": "30",
         "max_replicas": "4", "fast": "false"})  # as `serve run ... key=value` passes them: strings
    # A database URL reaches the replicas as written; a file becomes absolute (a replica's cwd is not ours).
    from outpaint.server.config import ServerConfig
    from outpaint.server.ray_serve import absolute

    url = "postgresql://outpaint@127.0.0.1:5432/credits"
    assert absolute(ServerConfig(model=Path("m"), db=url)).db == url
    assert absolute(ServerConfig(model=Path("m"), db=Path("c.db"))).db == Path("c.db").resolve()
    with pytest.raises(ValueError, match=r"unknown arguments modle; allowed: .*model"):
        app({"modle": "x"})
    with pytest.raises(ValueError, match="--concurrency must be >= 1"):
        app({"model": str(tiny_model_dir), "db": "c.db", "concurrency": 0})
    with pytest.raises(ValueError, match="--min-replicas and --max-replicas"):
        app({"model": str(tiny_model_dir), "db": "c.db", "min_replicas": 3, "max_replicas": 2})


# -- check_health's probe, without Ray ---------------------------------------------------------------------


def _broken_text_encoder_model(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model with a text encoder that loads but fails at run time (a corrupt export)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    shutil.copytree(tiny_model_dir, out)
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [7, -1, 5])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
         helper.make_node("Constant", [], ["shape"], value=shape),
         helper.make_node("Reshape", ["ids", "shape"], ["last_hidden_state"])],
        "broken_text_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", 77])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = Manifest.load(out)
    for name in [n for n in ("text_encoder", "text_encoder.mha") if n in manifest.graphs]:
        record = manifest.graphs[name]
        onnx.save(model, out / record.file)
        record.files = {record.file: describe_file(out / record.file)}
    manifest.save(out)
    return out


def test_health_check_runs_the_runtime_and_fails_a_broken_one(tiny_model_dir, tmp_path):
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.server.gate import Gate
    from outpaint.server.health import RuntimeHealth, RuntimeUnhealthy

    pipeline = OutpaintPipeline.load(tiny_model_dir)
    health = RuntimeHealth(pipeline, Gate(pipeline))
    health.check()
    assert health.probes == 1  # a real text-encoder run
    health.gate.last_step_at = time.monotonic()  # a step just ran: the runtime is proven, nothing more is run
    health.check()
    assert health.probes == 1

    broken = OutpaintPipeline.load(_broken_text_encoder_model(tiny_model_dir, tmp_path / "broken"))
    with pytest.raises(RuntimeUnhealthy, match="text encoder failed"):
        RuntimeHealth(broken, Gate(broken)).check()

