"""The playground page at `/`: try the job routes in a browser (docs/server.md, "The playground").

Plain HTML, CSS and JavaScript from the package folder `playground/`, read once when the app is made:
no build step, nothing loaded from another origin. The page speaks only the public API with the
key the user types (kept in the tab's memory and sessionStorage, sent only as the x-api-key header),
so it has no powers of its own: a page without a key can do nothing.

Its Content-Security-Policy allows scripts, styles and requests to this origin only, and images from
this origin, `blob:` (the result, the dropped source) and `data:` (the step previews of the event
stream); no inline script or style, no frames, no form posts, no plugins.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

ASSETS_PATH = "/playground"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # The page holds a key the user typed: never served from a shared cache, always the running version.
    "cache-control": "no-store",
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of the packaged folder, by name, with its media type (the folder is flat and small)."""
    folder = resources.files("outpaint.server") / "playground"
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            assets[entry.name] = (entry.read_bytes(), _MEDIA_TYPES[suffix])
    if "index.html" not in assets:
        raise RuntimeError(f"the playground's index.html is missing from {folder}: is the package data installed?")
    return assets


def add_playground(app: FastAPI) -> None:
    """`GET /` (the page) and `GET /playground/{name}` (its script and style sheet)."""
    assets = _load_assets()
    page, page_type = assets.pop("index.html")

    @app.get("/", include_in_schema=False)
    async def playground() -> Response:
        return Response(page, media_type=page_type, headers=SECURITY_HEADERS)

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    async def playground_asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return JSONResponse({"error": f"no such file: {ASSETS_PATH}/{name}"}, status_code=404)
        body, media_type = found
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)
