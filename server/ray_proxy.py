"""Ray Serve's HTTP proxy, made to answer in the API's error format (api.md).

The replicas run the unchanged app, so everything they answer is already right. The proxy in
front of them answers a few requests itself: 503 when every replica is at `max_ongoing_requests`
and the proxy's own queue (`max_queued_requests`) is full, 503 while no replica is up, 500 when
the replica serving a request died, 408 past Ray's request timeout. Ray writes those as plain text;
this middleware turns them into `{"error": "..."}` and makes sure a 503 carries `Retry-After`.
It also keeps one `x-request-id`: Ray's proxy appends its own id to every response, after the
one our app set (server/context.py), and a client must see one id, ours, the one in our logs and
the credits ledger (a client-chosen id is never used for either: it could collide on purpose).

Ray loads it into every proxy from the environment:
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=outpaint.server.ray_proxy:middlewares`, set on every
node before Ray starts there (`outpaint serve-ray` sets it for the local Ray it starts; the
KubeRay example in docs/ray.md sets it on the head and worker containers).

Its own answers to an authenticated request carry `x-remaining-credits` like the app's (api.md:
every response to an authenticated request): the proxy opens the credits store named by
`OUTPAINT_CREDITS_DB` (the same `--db` string as the replicas; `outpaint serve-ray` sets it) and
looks the key up only when it answers itself, which is under overload or after a crash: one indexed
read, as the app does before its own 503.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

IMPORT_PATH = "outpaint.server.ray_proxy:middlewares"
ENV_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
RETRY_AFTER_S = 5  # when Ray's own 503 names no delay (no replica up yet)
CREDITS_ENV = "OUTPAINT_CREDITS_DB"
MAX_KEY_CHARS = 256  # as server/app.py: a longer x-api-key is no key of ours, never looked up
_store: Any = None
_store_lock = threading.Lock()


def _balance_of(key: str) -> int | None:
    """The balance of an active key, or None (no store configured, unknown key). Blocking."""
    global _store
    db = os.environ.get(CREDITS_ENV)
    if not db or not key or len(key) > MAX_KEY_CHARS:
        return None
    with _store_lock:
        if _store is None:
            from .loading import open_credit_store

            _store = open_credit_store(db)
    key_id = _store.authenticate(key)
    return None if key_id is None else _store.balance(key_id)


async def _credit_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    key = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-api-key"), "")
    try:
        balance = await asyncio.to_thread(_balance_of, key) if key else None
    except Exception:  # the answer matters more than the header: a store error leaves it out
        return []
    return [] if balance is None else [(b"x-remaining-credits", str(balance).encode())]


def middlewares() -> list[Middleware]:
    return [Middleware(ApiErrorsAtTheProxy)]


def _message_for(status: int, text: str, request_id: str | None) -> str:
    ref = f" (request id {request_id})" if request_id else ""
    if status == 503:
        return ("the service is at capacity or has no healthy replica right now; retry after the "
                f"Retry-After delay{ref}; nothing was charged")
    if status == 500:
        return (f"internal error{ref}: the replica serving this request stopped; any credit it reserved "
                "is refunded")
    if status == 408:
        return f"the request took longer than the proxy's time limit{ref}; any credit it reserved is refunded"
    if status == 404:
        return f"no such path{ref}: the API is POST /v1/sd1.5-outpaint"
    return text or f"HTTP {status}{ref}"


class ApiErrorsAtTheProxy:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of a plain-text error of Ray's, sent once rewritten
        parts: list[bytes] = []
        started = False

        async def send_api_shaped(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                headers, request_id, is_json = _one_request_id(message.get("headers", []))
                message = {**message, "headers": headers}
                if message["status"] >= 400 and not is_json:
                    held = {**message, "request_id": request_id}
                    return
                started = True
                await send(message)
            elif message["type"] == "http.response.body" and held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status = held["status"]
                text = b"".join(parts).decode("utf-8", "replace").strip()
                body = json.dumps({"error": _message_for(status, text, held["request_id"])}).encode()
                headers = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
                headers += await _credit_headers(scope)
                started = True
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_api_shaped)
        except Exception:
            if started:
                raise
            await _internal_error(scope, send)
            return
        if not started:  # the replica died before answering: Ray sends nothing, uvicorn a text 500
            await _internal_error(scope, send)


async def _internal_error(scope: Scope, send: Send) -> None:
    request_id = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-request-id"),
                      None)
    body = json.dumps({"error": _message_for(500, "", request_id)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    headers += await _credit_headers(scope)
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _one_request_id(raw: list) -> tuple[list[tuple[bytes, bytes]], str | None, bool]:
    """The headers with only the first x-request-id, that id, and whether the body is JSON."""
    headers: list[tuple[bytes, bytes]] = []
    request_id = None
    is_json = False
    for name, value in raw:
        name, value = bytes(name), bytes(value)
        lower = name.lower()
        if lower == b"x-request-id":
            if request_id is not None:
                continue
            request_id = value.decode("latin-1")
        elif lower == b"content-type":
            is_json = value.lower().startswith(b"application/json")
        headers.append((name, value))
    return headers, request_id, is_json
