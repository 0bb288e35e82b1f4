"""`outpaint serve` as a real process on loopback, spoken to over HTTP (api.md, every code of its table).

Costs are kept small: the tiny model, 256x256 canvases and, where the image itself does not
matter, strength 0.1 (the API's minimum: 2 of the 25 steps run).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import signal
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pytest

pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import requests

from outpaint.core.manifest import Manifest, describe_file
from outpaint.server.process import ServerProcess, start_server
from outpaint.server.store import open_store

from .conftest import make_png

ROUTE = "/v1/sd1.5-outpaint"
TIMEOUT = 120  # seconds: any single HTTP call; the generations here take about a second
SOURCE = make_png(128, 128, seed=7)
B64 = base64.b64encode(SOURCE).decode()


def cheap_body(**overrides) -> dict:
    body = {"image": B64, "prompt": "streets in italy", "img_width": 256, "img_height": 256,
            "offset_x": 64, "offset_y": 64, "strength": 0.1, "seed": 5}
    body.update(overrides)
    return body


def post(server: ServerProcess, body=None, key: str | None = None, **kwargs) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["x-api-key"] = key
    if body is not None:
        kwargs["json"] = body
    return requests.post(server.url + ROUTE, headers=headers, timeout=TIMEOUT, **kwargs)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The value of one sample in /metrics (0 when absent)."""
    text = requests.get(server.url + "/metrics", timeout=TIMEOUT).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        sample_labels = ",".join(sorted(sample_labels.rstrip("}").split(","))) if sample_labels else ""
        if sample_name == name and sample_labels == want:
            return float(value)
    return 0.0


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def assert_json_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def jpeg_size(response: requests.Response) -> tuple[int, int]:
    from PIL import Image

    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    return image.size


class Keys:
    """Fresh keys on a server's credits store (written while the server runs)."""

    def __init__(self, db: Path | str) -> None:
        self.store = open_store(db)

    def new(self, credits: int) -> tuple[int, str]:
        return self.store.create_key(credits)

    def balance(self, key_id: int) -> int:
        return self.store.balance(key_id)


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def server(tiny_model_dir, server_dir):
    db = server_dir / "main.db"
    open_store(db).close()
    proc = start_server(tiny_model_dir, db=db, log_path=server_dir / "main.log",
                        args=["--max-queue", "64", "--timeout", "120", "--max-body-bytes", str(1024 * 1024),
                              "--max-image-pixels", str(1000 * 1000), "--log-level", "warning"])
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()[-3000:]


@pytest.fixture(scope="module")
def keys(server, server_dir) -> Keys:
    return Keys(server_dir / "main.db")


# -- 200 ------------------------------------------------------------------------------------------


def test_reference_client_from_the_api_doc(server, keys):
    key_id, key = keys.new(3)
    # api.md's example, verbatim but for the canvas (256 keeps the test fast) and the URL/key.
    url = server.url + ROUTE
    b64 = B64
    data = {"image": b64, "prompt": "streets in italy", "negative_prompt": "NONE",
            "scheduler": "DDIM", "num_inference_steps": 25, "img_width": 256, "img_height": 256,
            "scale": 1, "strength": 1, "offset_x": 64, "offset_y": 64, "guidance_scale": 7.5,
            "mask_expand": 8, "seed": 124567}
    r = requests.post(url, json=data, headers={"x-api-key": key}, timeout=TIMEOUT)   # r.content is a JPEG
    assert jpeg_size(r) == (256, 256)
    assert r.headers["x-seed"] == "124567"
    assert float(r.headers["x-seam-score"]) > 0  # engine/seam.py; its meaning is tested in test_seam.py
    assert r.headers["x-remaining-credits"] == "2"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert keys.balance(key_id) == 2


def test_random_seed_is_returned_and_reproduces_the_image(server, keys):
    key_id, key = keys.new(2)
    first = post(server, cheap_body(seed=-1, img_width=320), key)
    assert jpeg_size(first) == (320, 256)
    seed = int(first.headers["x-seed"])
    assert 0 <= seed <= 2**32 - 1
    again = post(server, cheap_body(seed=seed, img_width=320), key)
    assert again.content == first.content
    assert first.headers["x-request-id"] != again.headers["x-request-id"]
    assert keys.balance(key_id) == 0


# -- 4xx ------------------------------------------------------------------------------------------


def test_missing_unknown_and_revoked_keys_are_401(server, keys):
    key_id, key = keys.new(1)
    for headers in ({}, {"x-api-key": ""}, {"x-api-key": "op-" + "x" * 43}, {"x-api-key": "k" * 5000}):
        r = post(server, cheap_body(), headers=headers)
        assert_json_error(r, 401)
        assert "x-remaining-credits" not in r.headers  # not an authenticated request
    keys.store.revoke(key_id)
    assert_json_error(post(server, cheap_body(), key), 401)


def test_unknown_path_is_404_and_wrong_method_405_as_json(server):
    r = requests.get(server.url + "/v1/sd2-outpaint", timeout=TIMEOUT)
    assert ROUTE in assert_json_error(r, 404)["error"]
    r = requests.get(server.url + ROUTE, timeout=TIMEOUT)
    assert_json_error(r, 405)
    assert r.headers["allow"] == "POST"
    assert_json_error(requests.put(server.url + ROUTE, json={}, timeout=TIMEOUT), 405)
    assert_json_error(requests.post(server.url + "/healthz", timeout=TIMEOUT), 405)


def test_not_enough_credits_is_406_before_any_compute(server, keys):
    key_id, key = keys.new(0)
    steps_before = metric(server, "outpaint_denoise_step_seconds_count")
    r = post(server, cheap_body(), key)
    assert "credits" in assert_json_error(r, 406)["error"]
    assert r.headers["x-remaining-credits"] == "0"
    assert metric(server, "outpaint_denoise_step_seconds_count") == steps_before
    assert keys.balance(key_id) == 0


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but holds almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _gif() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="GIF")
    return buffer.getvalue()


def _flat_png(width: int, height: int) -> bytes:
    """A real PNG that is large in pixels but tiny in bytes (one colour)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (name, requests.post keyword arguments, status, field named in the 400 body or None)
BATTERY = [
    ("empty body", {"data": b""}, 400, None),
    ("whitespace body", {"data": b"   \n"}, 400, None),
    ("malformed JSON", {"data": b'{"image": "abc", "prompt": '}, 400, None),
    ("JSON array", {"json": [1, 2, 3]}, 400, None),
    ("JSON string", {"json": "image"}, 400, None),
    ("JSON null", {"data": b"null"}, 400, None),
    ("NaN literal", {"data": b'{"image": "aGk=", "prompt": "x", "scale": NaN}'}, 400, None),
    ("deeply nested JSON", {"data": b"[" * 100_000}, 400, None),
    ("invalid UTF-8", {"data": b'{"prompt": "\xff\xfe"}'}, 400, None),
    ("missing image", {"json": {"prompt": "x"}}, 400, "image"),
    ("missing prompt", {"json": {"image": B64}}, 400, "prompt"),
    ("image is a number", {"json": {"image": 12, "prompt": "x"}}, 400, "image"),
    ("image is empty", {"json": {"image": "", "prompt": "x"}}, 400, "image"),
    ("invalid base64", {"json": cheap_body(image="!!!not base64!!!")}, 400, "image"),
    ("truncated base64 (padding)", {"json": cheap_body(image=B64[:-3])}, 400, "image"),
    ("truncated base64 (whole quads)", {"json": cheap_body(image=_b64(SOURCE[: len(SOURCE) // 2]))}, 400, "image"),
    ("non-image bytes", {"json": cheap_body(image=_b64(b"hello, this is not an image at all"))}, 400, "image"),
    ("GIF (not an accepted format)", {"json": cheap_body(image=_b64(_gif()))}, 400, "image"),
    ("PNG declaring 100000x100000", {"json": cheap_body(image=_b64(_png_declaring(100_000, 100_000)))}, 413, "image"),
    ("prompt is a number", {"json": cheap_body(prompt=5)}, 400, "prompt"),
    ("negative_prompt is a list", {"json": cheap_body(negative_prompt=["a"])}, 400, "negative_prompt"),
    ("unknown scheduler", {"json": cheap_body(scheduler="Euler b")}, 400, "scheduler"),
    ("scheduler is a number", {"json": cheap_body(scheduler=1)}, 400, "scheduler"),
    ("string for a number", {"json": cheap_body(num_inference_steps="25")}, 400, "num_inference_steps"),
    ("string for a float", {"json": cheap_body(guidance_scale="7.5")}, 400, "guidance_scale"),
    ("boolean for a number", {"json": cheap_body(strength=True)}, 400, "strength"),
    ("null for a number is the default, a list is not", {"json": cheap_body(scale=[1])}, 400, "scale"),
    ("too few steps", {"json": cheap_body(num_inference_steps=24)}, 400, "num_inference_steps"),
    ("fractional steps", {"json": cheap_body(num_inference_steps=25.5)}, 400, "num_inference_steps"),
    ("width not a multiple of 64", {"json": cheap_body(img_width=300)}, 400, "img_width"),
    ("huge width", {"json": cheap_body(img_width=10**30)}, 400, "img_width"),
    ("negative height", {"json": cheap_body(img_height=-256)}, 400, "img_height"),
    ("negative offset", {"json": cheap_body(offset_x=-5)}, 400, "offset_x"),
    ("offset past the API range", {"json": cheap_body(offset_y=1025)}, 400, "offset_y"),
    ("seed -2", {"json": cheap_body(seed=-2)}, 400, "seed"),
    ("seed 2^32", {"json": cheap_body(seed=2**32)}, 400, "seed"),
    ("huge float", {"data": json.dumps(cheap_body()).replace('"strength": 0.1', '"strength": 1e400')}, 400,
     "strength"),
    ("tiny guidance", {"json": cheap_body(guidance_scale=0.01)}, 400, "guidance_scale"),
    ("scale above 10", {"json": cheap_body(scale=11)}, 400, "scale"),
    ("mask_expand negative", {"json": cheap_body(mask_expand=-1)}, 400, "mask_expand"),
    ("source off the canvas", {"json": cheap_body(offset_x=1000)}, 400, "offset_x"),
    ("text/plain", {"data": json.dumps(cheap_body()), "headers": {"content-type": "text/plain"}}, 415, None),
    ("form body", {"data": {"image": B64, "prompt": "x"}}, 415, None),
    ("multipart body", {"files": {"image": ("a.png", SOURCE, "image/png")}}, 415, None),
    ("body over the limit", {"json": cheap_body(padding="x" * (2 * 1024 * 1024))}, 413, None),
    ("decoded image over the pixel limit", {"json": cheap_body(image=_b64(_flat_png(1100, 1000)))}, 413, "image"),
]


def test_bad_input_battery_gets_4xx_json_and_the_server_keeps_serving(server, keys):
    key_id, key = keys.new(2)
    failures = []
    for name, kwargs, status, field in BATTERY:
        kwargs = dict(kwargs)
        headers = {"x-api-key": key, **kwargs.pop("headers", {})}
        r = requests.post(server.url + ROUTE, headers=headers, timeout=TIMEOUT, **kwargs)
        try:
            body = assert_json_error(r, status)
            if status == 400:
                assert body.get("field", "absent") == field, body
            if field:
                assert body["error"].startswith(field), body
            assert r.headers["x-remaining-credits"] == "2"
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
    assert keys.balance(key_id) == 2
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    assert jpeg_size(post(server, cheap_body(), key)) == (256, 256)  # and still generates
    assert keys.balance(key_id) == 1


def test_error_messages_name_the_allowed_range(server, keys):
    _, key = keys.new(1)
    body = post(server, cheap_body(img_width=300), key).json()
    assert body["field"] == "img_width" and "256" in body["error"] and "1024" in body["error"]
    assert "64" in body["error"]
    implemented = requests.get(server.url + "/readyz", timeout=TIMEOUT).json()["schedulers"]
    assert "DDIM" in implemented
    message = post(server, cheap_body(scheduler="Euler b"), key).json()["error"]
    assert all(name in message for name in implemented)


# -- concurrency, disconnects -----------------------------------------------------------------------


def test_balance_20_with_50_concurrent_requests_gives_20_images(server, keys):
    key_id, key = keys.new(20)
    barrier = threading.Barrier(50)

    def one(_: int) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return post(server, cheap_body(), key)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(one, range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 20 + [406] * 30, codes
    for r in responses:
        if r.status_code == 200:
            assert jpeg_size(r) == (256, 256)
        else:
            assert_json_error(r, 406)
            assert r.headers["x-remaining-credits"] == "0"
    assert keys.balance(key_id) == 0
    assert keys.store.open_reservations() == []


def _raw_request(server: ServerProcess, body: dict, key: str) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(
        f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nx-api-key: {key}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    return sock


def test_a_client_that_disconnects_stops_the_loop_and_is_not_charged(server, keys):
    key_id, key = keys.new(1)
    refunds = metric(server, "outpaint_credit_refunds_total", reason="disconnect")
    sock = _raw_request(server, cheap_body(num_inference_steps=100, strength=1.0), key)  # ~100 steps
    wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 1, 60, "the generation to start")
    time.sleep(0.3)
    steps_at_close = metric(server, "outpaint_denoise_step_seconds_count")
    sock.close()
    closed = time.monotonic()
    wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 0, 30, "the generation to stop")
    stopped_after = time.monotonic() - closed
    steps_run = metric(server, "outpaint_denoise_step_seconds_count") - steps_at_close
    assert steps_run < 20, f"{steps_run} more steps ran after the client left"  # of the ~95 left
    assert stopped_after < 10
    assert metric(server, "outpaint_credit_refunds_total", reason="disconnect") == refunds + 1
    assert keys.balance(key_id) == 1
    assert keys.store.open_reservations() == []


# -- the service's own endpoints ----------------------------------------------------------------------


def test_openapi_schema_docs_health_and_metrics(server):
    schema = requests.get(server.url + "/openapi.json", timeout=TIMEOUT).json()
    operation = schema["paths"][ROUTE]["post"]
    props = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert props["img_width"] == {**props["img_width"], "minimum": 256, "maximum": 1024, "multipleOf": 64}
    assert props["seed"]["minimum"] == -1
    assert props["scheduler"]["enum"] == requests.get(server.url + "/readyz", timeout=TIMEOUT).json()["schedulers"]
    assert {"200", "400", "401", "406", "413", "503"} <= set(operation["responses"])
    assert "image/jpeg" in operation["responses"]["200"]["content"]
    assert "x-api-key" in json.dumps(schema["components"]["securitySchemes"])
    assert "swagger" in requests.get(server.url + "/docs", timeout=TIMEOUT).text.lower()
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
    ready = requests.get(server.url + "/readyz", timeout=TIMEOUT)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = requests.get(server.url + "/metrics", timeout=TIMEOUT).text
    for name in ("outpaint_http_requests_total", "outpaint_http_request_seconds_bucket", "outpaint_queue_depth",
                 "outpaint_denoise_step_seconds_count", "outpaint_generation_seconds_count"):
        assert name in text
    assert metric(server, "outpaint_http_requests_total", route="/healthz", method="GET", code="200") >= 1
    requests.get(server.url + "/no/such/path", timeout=TIMEOUT)
    assert metric(server, "outpaint_http_requests_total", route="unmatched", method="GET", code="404") >= 1
    assert metric(server, "outpaint_http_requests_total", route="/openapi.json", method="GET", code="200") >= 1
    assert "/no/such/path" not in requests.get(server.url + "/metrics", timeout=TIMEOUT).text


# -- servers of their own: faults, queue, drain, crash, no-auth ------------------------------------------


def _broken_decoder_model(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model with a VAE decoder that fails at run time (a corrupt export)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    shutil.copytree(tiny_model_dir, out)
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [7, -1, 5, 3])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["shape"], value=shape), helper.make_node("Reshape", ["latent", "shape"],
                                                                                    ["image"])],
        "broken_decoder",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["B", 4, "h", "w"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = Manifest.load(out)
    for name in ("vae_decoder", "vae_decoder.mha"):  # both the standard graph and ONNX Runtime's fused twin
        record = manifest.graphs[name]
        onnx.save(model, out / record.file)
        # Recorded as exported: the load-time integrity check must pass, the failure come at run time.
        record.files = {record.file: describe_file(out / record.file)}
    manifest.save(out)
    return out


@pytest.fixture(scope="module")
def faulty_server(tiny_model_dir, server_dir):
    model = _broken_decoder_model(tiny_model_dir, server_dir / "broken-model")
    db = server_dir / "faulty.db"
    open_store(db).close()
    proc = start_server(model, db=db, log_path=server_dir / "faulty.log", args=["--timeout", "4"])
    yield proc, Keys(db)
    assert proc.stop() == 0


def test_internal_failure_is_500_json_without_traceback_and_refunded(faulty_server):
    server, keys = faulty_server
    key_id, key = keys.new(3)
    r = post(server, cheap_body(), key)
    body = assert_json_error(r, 500)
    assert r.headers["x-request-id"] in body["error"] and "charged" in body["error"]
    assert "Reshape" not in r.text and "onnxruntime" not in r.text.lower()
    assert r.headers["x-remaining-credits"] == "3"
    assert keys.balance(key_id) == 3
    assert "Traceback" in server.log()  # the details go to the server's log, not to the client
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_work_past_the_deadline_is_refused_at_once_and_not_charged(faulty_server):
    """Once the server has measured its steps, a request that cannot finish in time is a 413 at once
    (the 503 of a request stopped early: tests/test_server_hardening_admission.py)."""
    server, keys = faulty_server
    key_id, key = keys.new(1)
    assert_json_error(post(server, cheap_body(), key), 500)  # its steps ran: the cost is measured
    started = time.monotonic()
    r = post(server, cheap_body(num_inference_steps=100, strength=1.0), key)  # ~100 steps > 4 s
    assert "time limit" in assert_json_error(r, 413)["error"]
    assert time.monotonic() - started < 5
    assert r.headers["x-remaining-credits"] == "1"
    assert keys.balance(key_id) == 1


def test_queue_full_and_draining_are_503_and_shutdown_finishes_in_flight_work(tiny_model_dir, tmp_path):
    db = tmp_path / "drain.db"
    keys = Keys(db)
    key_id, key = keys.new(5)
    server = start_server(tiny_model_dir, db=db, log_path=tmp_path / "drain.log",
                          args=["--max-queue", "0", "--concurrency", "1"])
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post, server, cheap_body(num_inference_steps=30, strength=1.0), key)
            wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 1, 60, "the generation to start")

            full = post(server, cheap_body(), key)
            assert "queue" in assert_json_error(full, 503)["error"]
            assert int(full.headers["retry-after"]) >= 1
            assert full.headers["x-remaining-credits"] == "4"  # only the running one holds a credit

            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: requests.get(server.url + "/readyz", timeout=TIMEOUT).status_code == 503, 10,
                       "/readyz to report draining")
            ready = requests.get(server.url + "/readyz", timeout=TIMEOUT)
            assert int(ready.headers["retry-after"]) >= 1 and "draining" in ready.json()["error"]
            draining = post(server, cheap_body(), key)
            assert "shutting down" in assert_json_error(draining, 503)["error"]
            assert "retry-after" in draining.headers

            finished = in_flight.result(timeout=TIMEOUT)  # the in-flight request still completes
            assert jpeg_size(finished) == (256, 256)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop(signal.SIGKILL)
    assert keys.balance(key_id) == 4
    assert keys.store.open_reservations() == []


def test_sigkill_mid_load_then_restart_keeps_balance_equal_to_start_minus_delivered(tiny_model_dir, tmp_path):
    db = tmp_path / "crash.db"
    keys = Keys(db)
    start = 30
    key_id, key = keys.new(start)
    server = start_server(tiny_model_dir, db=db, log_path=tmp_path / "crash.log", args=["--max-queue", "32"])

    def one(_: int) -> bool:
        try:
            r = post(server, cheap_body(), key)
            return r.status_code == 200 and jpeg_size(r) == (256, 256)  # a whole JPEG arrived
        except requests.RequestException:
            return False  # connection dropped by the kill: nothing delivered

    delivered = 0
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        for done, future in enumerate(as_completed(futures), start=1):
            delivered += future.result()
            if done == 3:
                server.stop(signal.SIGKILL)
    assert 3 <= delivered < 12
    assert keys.store.open_reservations(), "the kill should have left reservations open"
    assert keys.balance(key_id) < start - delivered

    restarted = start_server(tiny_model_dir, db=db, log_path=tmp_path / "crash-restart.log")
    try:
        assert keys.balance(key_id) == start - delivered
        assert keys.store.open_reservations() == []
        r = post(restarted, {"prompt": "no image"}, key)  # any authenticated answer reports the balance
        assert_json_error(r, 400)
        assert r.headers["x-remaining-credits"] == str(start - delivered)
        assert "refunded" in restarted.log()
    finally:
        assert restarted.stop() == 0


def test_no_auth_serves_without_keys_or_credit_headers(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, log_path=tmp_path / "noauth.log", args=["--no-auth"])
    try:
        r = post(server, cheap_body())
        assert jpeg_size(r) == (256, 256)
        assert "x-remaining-credits" not in r.headers and r.headers["x-seed"] == "5"
        assert_json_error(post(server, cheap_body(img_height=100)), 400)
    finally:
        assert server.stop() == 0


def test_serve_refuses_a_bad_configuration(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    for args, message in ((["--port", "1"], "--db is required"),
                          (["--no-auth", "--price", "0"], "--price must be >= 1"),
                          (["--db", "postgresql://outpaint:s3cret@127.0.0.1:1/none"],
                           "--db: cannot open the credits database postgresql://outpaint:***@127.0.0.1:1/none")):
        result = subprocess.run([sys.executable, "-m", "outpaint.cli", "serve", "--model", str(tiny_model_dir),
                                 *args], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and message in result.stderr


def test_fast_flag_serves_the_fast_path(tiny_model_dir, tmp_path):
    from outpaint.engine.cpu_features import fast_backend

    log = tmp_path / "fast.log"
    server = start_server(tiny_model_dir, log_path=log, args=["--no-auth", "--fast"])
    try:
        r = post(server, cheap_body(strength=1.0))
        assert jpeg_size(r) == (256, 256) and r.headers["x-seed"] == "5"
        assert_json_error(post(server, cheap_body(img_width=100)), 400)
    finally:
        assert server.stop() == 0
    # Without --backend, --fast runs the fastest precision this CPU has natively and logs why.
    choice = fast_backend()
    text = log.read_text()
    assert f"({choice.backend}, fast path)" in text and f"--fast: {choice.reason}" in text
