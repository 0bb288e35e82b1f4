"""The playground page at `/` (server/playground.py) in a real headless Chromium, against a real
`outpaint serve` on loopback: enter a key, upload, drag, submit a job, watch its step previews, get a
result of the requested size; errors in plain words (a bad field, 406, 401).

The browser is Debian's `chromium`, driven by Playwright over CDP (Playwright's own browser download
cannot work here). `make test` installs the package when it is missing and it can (.ci/ensure-chromium);
without a browser these tests skip, unless OUTPAINT_REQUIRE_BROWSER=1 (CI) makes that a failure.

Screenshots go to the test's tmp folder; OUTPAINT_PLAYGROUND_SCREENSHOTS=docs/images writes them there
instead (docs/images/playground.png in the README; made with OUTPAINT_PLAYGROUND_MODEL pointing at the
exported small trained model, whose picture means something, where the tiny random model's does not).
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("requests")

import requests

from outpaint.engine.coherence import COHERENCE_DEFAULT
from outpaint.scenes import HELD_OUT_START, render, scene_from_seed
from outpaint.server.process import ServerProcess, start_server
from outpaint.server.store import open_store

from .conftest import make_png

REQUIRE = os.environ.get("OUTPAINT_REQUIRE_BROWSER") == "1"
TIMEOUT_MS = 60_000  # any single wait in the page; a job on the tiny model takes a few seconds
SCENE = HELD_OUT_START + 3  # a held-out landscape (the demo's): sun, ridges, water
SOURCE_SIZE = 128
CANVAS = 256


def _missing(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (OUTPAINT_REQUIRE_BROWSER=1: the browser test must run)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """OUTPAINT_CHROMIUM, else Debian's `chromium` (or another Chromium/Chrome) on PATH."""
    named = os.environ.get("OUTPAINT_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def source_png() -> bytes:
    from PIL import Image

    pixels = render(scene_from_seed(SCENE), SOURCE_SIZE, SOURCE_SIZE)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def scene_caption() -> str:
    return scene_from_seed(SCENE).caption()


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        _missing("no Chromium found: apt-get install chromium (make test does it as root), or set OUTPAINT_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        # Containers give /dev/shm 64 MB; the sandbox cannot start as root (CI); the page is our own, on loopback.
        args = ["--disable-dev-shm-usage", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(request, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    named = os.environ.get("OUTPAINT_PLAYGROUND_MODEL")
    model = Path(named) if named else request.getfixturevalue("tiny_model_dir")
    folder = tmp_path_factory.mktemp("playground")
    db = folder / "credits.db"
    open_store(db).close()
    server = start_server(model, db=db, log_path=folder / "server.log",
                          args=["--timeout", "120", "--log-level", "warning"])
    yield server, db
    code = server.stop()
    assert code == 0, server.log()[-3000:]


@pytest.fixture(scope="module")
def server(served) -> ServerProcess:
    return served[0]


@pytest.fixture(scope="module")
def new_key(served):
    store = open_store(served[1])

    def create(credits: int) -> str:
        return store.create_key(credits)[1]

    yield create
    store.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("OUTPAINT_PLAYGROUND_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser, server):
    """A fresh page on the playground; fails the test on any script error or CSP violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" and "status of 4" not in message.text else None)
    response = page.goto(server.url + "/")
    assert response is not None and response.status == 200
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()
    # A 4xx the page asked for on purpose is logged by Chromium as "failed to load resource: ... status
    # of 4xx"; anything else on the console (a refused script or image: a CSP violation) is a defect.
    assert not problems, problems


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(locator)


def enter_key(page, key: str) -> None:
    page.fill("#api_key", key)
    page.press("#api_key", "Tab")  # "change" fires when the field loses focus


def upload(page) -> None:
    page.set_input_files("#image", files=[{"name": "lake.png", "mimeType": "image/png", "buffer": source_png()}])
    expect(page.locator("#image-info")).to_contain_text("128×128")


def value(page, selector: str) -> float:
    return float(page.input_value(selector))


def set_canvas(page, width: int, height: int) -> None:
    page.fill("#img_width", str(width))
    page.fill("#img_height", str(height))


def message(page) -> str:
    page.wait_for_selector("#message:not([hidden])")
    return page.text_content("#message") or ""


# -- served as it should be -----------------------------------------------------------------------


def test_page_and_assets_are_served_with_a_strict_policy(server):
    response = requests.get(server.url + "/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "img-src 'self' blob: data:" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # Nothing from another origin: no CDN, no font service.
    assert "http://" not in response.text and "https://" not in response.text
    for asset, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        got = requests.get(f"{server.url}/playground/{asset}", timeout=30)
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind), asset
        assert "http://" not in got.text and "https://" not in got.text
    missing = requests.get(server.url + "/playground/../server.log", timeout=30)
    assert missing.status_code == 404
    assert requests.get(server.url + "/playground/nope.js", timeout=30).json()["error"]


# -- placing the image ----------------------------------------------------------------------------


def test_key_upload_drag_and_the_fields_stay_in_sync(page, new_key):
    enter_key(page, new_key(7))
    expect(page.locator("#credits")).to_have_text("7")
    # The limits are the server's own (from its OpenAPI), the scheduler list too.
    assert page.get_attribute("#num_inference_steps", "min") == "25"
    assert page.get_attribute("#num_inference_steps", "max") == "100"
    assert page.get_attribute("#img_width", "step") == "64"
    assert "DDIM" in page.eval_on_selector_all("#scheduler option", "options => options.map(o => o.value)")

    set_canvas(page, CANVAS, CANVAS)
    upload(page)
    assert (value(page, "#offset_x"), value(page, "#offset_y")) == (64, 64)  # centred: (256 - 128) / 2
    assert value(page, "#scale") == 1

    # Drag the image 100 x 50 screen pixels: the canvas is shown larger than its 256 pixels.
    box = page.locator("#canvas").bounding_box()
    assert box is not None
    ratio = CANVAS / box["width"]
    start_x, start_y = box["x"] + 128 / ratio, box["y"] + 128 / ratio  # the image's centre on screen
    page.mouse.move(start_x, start_y)
    page.mouse.down()
    page.mouse.move(start_x + 50, start_y + 25, steps=3)
    page.mouse.move(start_x + 100, start_y + 50, steps=3)
    page.mouse.up()
    assert value(page, "#offset_x") == pytest.approx(64 + 100 * ratio, abs=1)
    assert value(page, "#offset_y") == pytest.approx(64 + 50 * ratio, abs=1)

    # A field typed in moves the picture: the canvas pixel at (20, 20) is the source's corner pixel.
    page.fill("#offset_x", "10")
    page.fill("#offset_y", "10")
    corner = page.evaluate("() => Array.from(document.getElementById('canvas').getContext('2d')"
                           ".getImageData(20, 20, 1, 1).data.slice(0, 3))")
    from PIL import Image

    expected = np.asarray(Image.open(io.BytesIO(source_png())).convert("RGB"))[10, 10]
    assert corner == pytest.approx(expected.tolist(), abs=3)

    # Dragging never takes the image off the canvas (the API's 0 .. and overlap limits).
    page.mouse.move(start_x, start_y)
    page.mouse.down()
    page.mouse.move(start_x - 800, start_y + 2000, steps=4)
    page.mouse.up()
    assert value(page, "#offset_x") == 0
    assert value(page, "#offset_y") == CANVAS - 1

    # The wheel scales, the slider and the number follow each other; the keyboard moves it too.
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.wheel(0, 200)
    scaled = value(page, "#scale")
    assert 0.1 <= scaled < 1
    assert float(page.input_value("#scale_slider")) == pytest.approx(math.log10(scaled), abs=0.01)
    page.fill("#scale", "2")
    assert float(page.input_value("#scale_slider")) == pytest.approx(0.301, abs=0.01)
    page.fill("#offset_x", "64")
    page.fill("#offset_y", "64")
    page.focus("#canvas")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    assert (value(page, "#offset_x"), value(page, "#offset_y")) == (65, 80)

    # A file dropped on the drop zone replaces the source (and is centred again, at scale 1).
    dropped = base64.b64encode(make_png(64, 96)).decode()
    page.eval_on_selector("#drop-zone", """(zone, data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", dropped)
    expect(page.locator("#image-info")).to_have_text("dropped.png: 64×96")
    assert (value(page, "#scale"), value(page, "#offset_x"), value(page, "#offset_y")) == (1, 96, 80)


# -- a job, start to finish -----------------------------------------------------------------------


def fill_job(page, *, steps: int = 25, seed: int = 5, prompt: str | None = None) -> None:
    set_canvas(page, CANVAS, CANVAS)
    upload(page)
    page.fill("#prompt", prompt or scene_caption())
    page.fill("#num_inference_steps", str(steps))
    page.fill("#seed", str(seed))


def test_a_job_from_submit_to_download(page, new_key, screenshots):
    key = new_key(3)
    enter_key(page, key)
    expect(page.locator("#credits")).to_have_text("3")
    fill_job(page)
    sent = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("x-api-key"))))
    page.click("#submit")
    expect(page.locator("#result-box")).to_be_visible()
    assert "Done" in message(page)

    # Step previews arrived while it ran (each one a data: image the policy allows), and the bar is full.
    assert int(page.get_attribute("#preview", "data-count") or 0) >= 1
    assert (page.get_attribute("#preview", "src") or "").startswith(("data:image/jpeg;base64,", "data:image/webp;"))
    # 25 denoising steps and the coherence pass's (on by default), numbered as one request.
    total = 25 + COHERENCE_DEFAULT.steps
    expect(page.locator("#progress-label")).to_have_text(f"Step {total} of {total}")
    assert page.eval_on_selector("#progress", "p => [p.value, p.max]") == [total, total]

    # The result: decoded by the browser at the requested size, downloadable, with its seed and seam score.
    size = page.eval_on_selector("#result", "image => [image.complete, image.naturalWidth, image.naturalHeight]")
    assert size == [True, CANVAS, CANVAS]
    href = page.get_attribute("#download", "href") or ""
    assert href.startswith("blob:") and page.get_attribute("#download", "download") == "outpaint-5.jpg"
    info = page.text_content("#result-info") or ""
    assert "seed 5" in info and "seam score" in info and f"{CANVAS}×{CANVAS}" in info
    with page.expect_download() as download_info:
        page.click("#download")
    jpeg = Path(download_info.value.path()).read_bytes()
    from PIL import Image

    assert Image.open(io.BytesIO(jpeg)).size == (CANVAS, CANVAS)
    expect(page.locator("#credits")).to_have_text("2")  # one image charged, shown from the server's header
    # The event stream was read with the key as a header (fetch), never with the key in its URL.
    events = [(url, header) for url, header in sent if url.endswith("/events")]
    assert events and all(header == key for _, header in events)
    assert not any(key in url for url, _ in sent)
    page.screenshot(path=str(screenshots / "playground.png"), full_page=True)


def test_cancel_stops_a_running_job_without_a_charge(page, new_key):
    enter_key(page, new_key(1))
    expect(page.locator("#credits")).to_have_text("1")
    fill_job(page, steps=100)
    page.click("#submit")
    expect(page.locator("#preview")).to_be_visible()  # running: its first step preview is here
    page.click("#cancel")
    expect(page.locator("#message")).to_have_text("The job was cancelled; nothing was charged.")
    expect(page.locator("#progress-label")).to_have_text("Cancelled")
    step = page.eval_on_selector("#progress", "p => p.value")
    assert 1 <= step < 100
    expect(page.locator("#credits")).to_have_text("1")
    assert page.is_enabled("#submit") and not page.is_enabled("#cancel")


# -- errors in plain words ------------------------------------------------------------------------


def test_errors_are_shown_in_plain_words(page, new_key, screenshots):
    key = new_key(2)
    enter_key(page, key)
    expect(page.locator("#credits")).to_have_text("2")
    fill_job(page)

    # The page's own limit stops 5 steps before anything is sent ...
    page.fill("#num_inference_steps", "5")
    page.click("#submit")
    assert "num_inference_steps" in message(page)
    assert page.get_attribute("#num_inference_steps", "aria-invalid") == "true"

    # ... and with the limit removed (a client bypassing it) the server's 400 names the field and its range.
    page.eval_on_selector("#num_inference_steps", "input => input.removeAttribute('min')")
    page.click("#submit")
    expect(page.locator("#message")).to_contain_text("The server refused a field")
    text = message(page)
    assert "num_inference_steps" in text and "25" in text and "100" in text and "(HTTP 400)" in text, text
    assert page.get_attribute("#num_inference_steps", "aria-invalid") == "true"
    expect(page.locator("#credits")).to_have_text("2")  # nothing charged
    page.screenshot(path=str(screenshots / "playground-400.png"), full_page=True)

    # 406: a key with no credits.
    page.fill("#num_inference_steps", "25")
    enter_key(page, new_key(0))
    expect(page.locator("#credits")).to_have_text("0")
    page.click("#submit")
    expect(page.locator("#message")).to_contain_text("Not enough credits")
    text = message(page)
    assert "(HTTP 406)" in text and "Nothing was charged" in text, text

    # 401: a key the server does not know.
    enter_key(page, "op-not-a-key")
    expect(page.locator("#message")).to_contain_text("The API key was not accepted")
    page.click("#submit")
    expect(page.locator("#message")).to_contain_text("(HTTP 401)")

    # The words for the codes this server answers only under load or with big inputs (its own tests
    # make those happen: test_server*.py); here only the page's wording of them.
    words = page.evaluate("""() => [explain(413, "body: 40 MB is over the limit of 32 MB"),
                                   explain(503, "the queue is full (8 waiting)", "3")]""")
    assert words[0] == ("Too large for this server: body: 40 MB is over the limit of 32 MB. Try a smaller image or "
                        "canvas, or fewer steps. (HTTP 413)")
    assert words[1] == "The service is unavailable: the queue is full (8 waiting). Try again in 3 s. (HTTP 503)"

    # No key at all: the page says so before sending anything.
    enter_key(page, "")
    page.click("#submit")
    expect(page.locator("#message")).to_have_text("Enter your API key first.")


def test_the_key_stays_out_of_urls_cookies_and_local_storage(page, new_key, server):
    key = new_key(1)
    enter_key(page, key)
    expect(page.locator("#credits")).to_have_text("1")
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.reload()
    expect(page.locator("#credits")).to_have_text("1")  # the tab's session storage kept it
    assert page.input_value("#api_key") == key
    assert page.evaluate("() => localStorage.length") == 0
    assert page.context.cookies() == []
    assert urls and not any(key in url for url in urls)
