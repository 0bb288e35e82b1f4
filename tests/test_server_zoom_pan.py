"""POST /v1/sd1.5-outpaint/zoom and /pan on a real `outpaint serve` process (server/sequences.py).

Priced at 2 credits an outpaint, so "price x outpaints" cannot pass by counting requests. Costs are
kept small: the tiny model, 256 px canvases (the API's minimum) and strength 0.1 (2 of 25 steps).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import pytest

pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import requests
from PIL import Image, ImageSequence

from outpaint.engine.coherence import COHERENCE_DEFAULT
from outpaint.engine.pan import plan_panorama
from outpaint.server.process import ServerProcess, start_server
from outpaint.server.store import open_store

from .test_server import B64, ROUTE, TIMEOUT, assert_json_error, metric, wait_until

ZOOM = ROUTE + "/zoom"
PAN = ROUTE + "/pan"
PRICE = 2
MAX_ZOOM_STEPS = 3
MAX_PAN_OUTPAINTS = 6
STEPS = "outpaint_denoise_step_seconds_count"


def chain_body(**overrides) -> dict:
    body = {"image": B64, "prompt": "streets in italy", "img_width": 256, "img_height": 256,
            "strength": 0.1, "seed": 11}
    body.update(overrides)
    return body


def frame_count(image: Image.Image) -> int:
    return sum(1 for _ in ImageSequence.Iterator(image))


def post(server: ServerProcess, path: str, body: dict, key: str, **headers: str) -> requests.Response:
    return requests.post(server.url + path, json=body, headers={"x-api-key": key, **headers}, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chains")
    db = folder / "credits.db"
    open_store(db).close()
    proc = start_server(tiny_model_dir, db=db, log_path=folder / "server.log",
                        args=["--price", str(PRICE), "--max-zoom-steps", str(MAX_ZOOM_STEPS),
                              "--max-pan-outpaints", str(MAX_PAN_OUTPAINTS), "--max-pan-width", "2048",
                              "--timeout", "120", "--log-level", "warning"])
    store = open_store(db)
    yield proc, store
    store.close()
    assert proc.stop() == 0, proc.log()[-3000:]


def test_zoom_returns_a_video_of_every_frame_and_charges_price_per_step(served):
    server, store = served
    key_id, key = store.create_key(10)
    steps_before = metric(server, STEPS)
    r = post(server, ZOOM, chain_body(zoom_steps=2, frames_per_step=3, mask_expand=8), key)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "image/webp"
    video = Image.open(io.BytesIO(r.content))
    assert video.format == "WEBP" and video.size == (256, 256)
    assert frame_count(video) == 2 * 3 + 1 == int(r.headers["x-frames"])
    assert r.headers["x-seed"] == "11" and r.headers["x-outpaints"] == "2"
    scores = [float(s) for s in r.headers["x-seam-scores"].split(",")]
    assert len(scores) == 2 and float(r.headers["x-seam-score"]) == pytest.approx(max(scores), abs=1e-3)
    assert r.headers["x-remaining-credits"] == "6" and store.balance(key_id) == 10 - 2 * PRICE
    # Two outpaints of 2 denoising steps, each with its coherence pass's (engine/coherence.py).
    assert metric(server, STEPS) - steps_before == 2 * (2 + COHERENCE_DEFAULT.steps)
    assert store.open_reservations() == []


def test_zoom_as_gif_and_the_same_seed_gives_the_same_video(served):
    server, store = served
    key_id, key = store.create_key(2 * PRICE)
    body = chain_body(zoom_steps=1, frames_per_step=2, format="gif", seed=-1)
    first = post(server, ZOOM, body, key)
    assert first.status_code == 200, first.text[:500]
    assert first.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(first.content))
    assert gif.format == "GIF" and gif.size == (256, 256) and frame_count(gif) == 3
    again = post(server, ZOOM, {**body, "seed": int(first.headers["x-seed"])}, key)
    assert again.content == first.content
    assert store.balance(key_id) == 0


def test_pan_returns_the_requested_width_and_charges_price_per_planned_outpaint(served):
    server, store = served
    key_id, key = store.create_key(40)
    # The 128 px source is scaled to the panorama's height, 256: 256 px wide, grown to 640.
    outpaints = len(plan_panorama(256, 256, 640).windows)
    r = post(server, PAN, chain_body(pan_width=640, mask_expand=8), key)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG" and image.size == (640, 256)
    assert int(r.headers["x-outpaints"]) == outpaints >= 3
    assert len(r.headers["x-seam-scores"].split(",")) == outpaints
    start, stop = (int(c) for c in r.headers["x-source-columns"].split(","))
    assert stop - start == 256
    assert store.balance(key_id) == 40 - PRICE * outpaints
    assert r.headers["x-remaining-credits"] == str(40 - PRICE * outpaints)
    # A chunk of 192 px per outpaint: fewer outpaints, fewer credits.
    fewer = len(plan_panorama(256, 256, 640, 192).windows)
    assert fewer < outpaints
    r = post(server, PAN, chain_body(pan_width=640, chunk=192), key)
    assert r.status_code == 200 and int(r.headers["x-outpaints"]) == fewer
    assert store.balance(key_id) == 40 - PRICE * (outpaints + fewer)


BAD_FIELDS = [
    (ZOOM, {"zoom_steps": MAX_ZOOM_STEPS + 1}, "zoom_steps", f"1 to {MAX_ZOOM_STEPS}"),
    (ZOOM, {"zoom_steps": "two"}, "zoom_steps", "number"),
    (ZOOM, {"frames_per_step": 49}, "frames_per_step", "1 to 48"),
    (ZOOM, {"zoom_scale": 1.0}, "zoom_scale", "0.9"),
    (ZOOM, {"format": "mp4"}, "format", "webp, gif"),
    (ZOOM, {"scale": 0.5}, "scale", "set by the zoom"),
    (ZOOM, {"offset_x": 64}, "offset_x", "set by the zoom"),
    (ZOOM, {"img_width": 300}, "img_width", "multiple of 64"),
    (PAN, {}, "pan_width", "required"),
    (PAN, {"pan_width": 4096}, "pan_width", "2048"),
    (PAN, {"pan_width": 200}, "pan_width", "wider than the source"),
    (PAN, {"pan_width": 640, "chunk": 250}, "chunk", "between 64"),
    (PAN, {"pan_width": 2048, "chunk": 64}, "pan_width", f"limit of {MAX_PAN_OUTPAINTS}"),
    (PAN, {"pan_width": 640, "offset_y": 0}, "offset_y", "set by the panorama"),
]


@pytest.mark.parametrize(("path", "fields", "field", "allowed"), BAD_FIELDS,
                         ids=[f"{p.rsplit('/', 1)[1]}-{f}-{i}" for i, (p, _, f, _) in enumerate(BAD_FIELDS)])
def test_a_bad_field_is_a_400_naming_it_and_charges_nothing(served, path, fields, field, allowed):
    server, store = served
    key_id, key = store.create_key(20)
    steps_before = metric(server, STEPS)
    r = post(server, path, chain_body(**fields), key)
    body = assert_json_error(r, 400)
    assert body["field"] == field and body["error"].startswith(field), body
    assert allowed in body["error"], body
    assert r.headers["x-remaining-credits"] == "20" and store.balance(key_id) == 20
    assert metric(server, STEPS) == steps_before


def test_a_transparent_source_is_refused_before_any_outpaint(served):
    server, store = served
    key_id, key = store.create_key(20)
    rgba = io.BytesIO()
    Image.new("RGBA", (128, 128), (10, 20, 30, 0)).save(rgba, format="PNG")
    image = base64.b64encode(rgba.getvalue()).decode()
    for path, extra in ((ZOOM, {}), (PAN, {"pan_width": 640})):
        body = assert_json_error(post(server, path, chain_body(image=image, **extra), key), 400)
        assert body["field"] == "image" and "transparent" in body["error"]
    assert store.balance(key_id) == 20


def test_not_enough_credits_for_every_outpaint_is_406_and_charges_nothing(served):
    server, store = served
    steps_before = metric(server, STEPS)
    key_id, key = store.create_key(2 * PRICE - 1)  # one zoom step's worth and some, not two
    r = post(server, ZOOM, chain_body(zoom_steps=2), key)
    message = assert_json_error(r, 406)["error"]
    assert "2 outpaints" in message and f"costs {2 * PRICE}" in message
    assert r.headers["x-remaining-credits"] == str(2 * PRICE - 1)
    outpaints = len(plan_panorama(256, 256, 640).windows)
    r = post(server, PAN, chain_body(pan_width=640), key)
    assert f"{outpaints} outpaints" in assert_json_error(r, 406)["error"]
    _, broke = store.create_key(0)
    assert_json_error(post(server, PAN, chain_body(pan_width=640), broke), 406)
    assert store.balance(key_id) == 2 * PRICE - 1
    assert metric(server, STEPS) == steps_before
    assert store.open_reservations() == []


def test_a_client_that_leaves_mid_zoom_stops_it_and_gets_everything_refunded(served):
    server, store = served
    key_id, key = store.create_key(3 * PRICE)
    refunds = metric(server, "outpaint_credit_refunds_total", reason="disconnect")
    steps_before = metric(server, STEPS)
    payload = json.dumps(chain_body(zoom_steps=3, num_inference_steps=100, strength=1.0)).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(f"POST {ZOOM} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nx-api-key: {key}\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 1, 60, "the zoom to start")
    wait_until(lambda: store.balance(key_id) == 0, 10, "the whole zoom to be reserved")
    sock.close()
    closed = time.monotonic()
    wait_until(lambda: metric(server, "outpaint_generations_in_progress") == 0, 30, "the zoom to stop")
    assert time.monotonic() - closed < 10
    assert metric(server, STEPS) - steps_before < 3 * 100  # stopped before the last outpaint's last step
    wait_until(lambda: store.balance(key_id) == 3 * PRICE, 10, "the refund")
    assert metric(server, "outpaint_credit_refunds_total", reason="disconnect") == refunds + 1
    assert store.open_reservations() == []


def test_an_idempotent_retry_replays_the_video_and_another_route_is_not_a_replay(served):
    server, store = served
    key_id, key = store.create_key(10)
    body = chain_body(zoom_steps=1, frames_per_step=2)
    first = post(server, ZOOM, body, key, **{"Idempotency-Key": "zoom-1"})
    assert first.status_code == 200, first.text[:500]
    again = post(server, ZOOM, body, key, **{"Idempotency-Key": "zoom-1"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.headers["content-type"] == "image/webp" and again.content == first.content
    assert store.balance(key_id) == 10 - PRICE
    # The same key and body on the blocking route: a different request, 422, not the video.
    other = post(server, ROUTE, body, key, **{"Idempotency-Key": "zoom-1"})
    assert_json_error(other, 422)
    assert store.balance(key_id) == 10 - PRICE


def test_openapi_documents_both_routes(served):
    server, _ = served
    schema = requests.get(server.url + "/openapi.json", timeout=TIMEOUT).json()
    zoom = schema["paths"][ZOOM]["post"]
    props = zoom["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert props["zoom_steps"]["maximum"] == MAX_ZOOM_STEPS and props["frames_per_step"]["maximum"] == 48
    assert props["format"]["enum"] == ["webp", "gif"]
    assert not {"scale", "offset_x", "offset_y"} & set(props)
    assert {"image/webp", "image/gif"} <= set(zoom["responses"]["200"]["content"])
    pan = schema["paths"][PAN]["post"]
    pan_schema = pan["requestBody"]["content"]["application/json"]["schema"]
    assert pan_schema["properties"]["pan_width"]["maximum"] == 2048
    assert set(pan_schema["required"]) == {"image", "prompt", "pan_width"}
    assert "image/jpeg" in pan["responses"]["200"]["content"]
    for operation in (zoom, pan):
        assert {"200", "400", "401", "406", "413", "503"} <= set(operation["responses"])


# -- the gate's part, in process ------------------------------------------------------------------


def _one_outpaint(pipeline, _ticket, count: int = 1) -> int:
    from outpaint.engine.canvas import decode_image

    from .conftest import make_png, make_request

    source = decode_image(make_png(128, 128))
    for _ in range(count):
        for _item in pipeline.generate(source, make_request(num_inference_steps=2)):
            pass
    return count


def test_a_chain_that_runs_another_count_than_it_reserved_fails(tiny_pipeline):
    import asyncio
    import functools

    from outpaint.server.gate import Gate, Ticket

    gate = Gate(tiny_pipeline)
    try:
        far = time.monotonic() + 600
        assert asyncio.run(gate.run_sequence(functools.partial(_one_outpaint, count=2), 2, Ticket(far))) == 2
        for ran, planned in ((1, 2), (3, 2)):
            with pytest.raises(RuntimeError, match="planned"):
                asyncio.run(gate.run_sequence(functools.partial(_one_outpaint, count=ran), planned, Ticket(far)))
        assert gate.running == 0
    finally:
        gate.shutdown()


def test_a_chain_stops_at_its_first_step_when_the_outpaints_after_it_cannot_finish(tiny_pipeline):
    import asyncio

    from outpaint.server.gate import DeadlineExceeded, Gate, Ticket

    steps = []
    gate = Gate(tiny_pipeline, on_step=steps.append)
    try:
        # A minute is plenty for one outpaint, never for a million of them: stopped after its first step.
        with pytest.raises(DeadlineExceeded):
            asyncio.run(gate.run_sequence(_one_outpaint, 10**6, Ticket(time.monotonic() + 60)))
        assert len(steps) == 1
    finally:
        gate.shutdown()
