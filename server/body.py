"""Reading a request body: size limit, content type, JSON object, base64 image. Errors are ApiErrors."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .errors import ApiError, bad_request

# A body over the limit is still read (and thrown away) up to this much more, so that an ordinary
# client that does not wait for "100 Continue" reads our 413 instead of a connection reset.
DISCARD_FACTOR = 4
_DATA_URL = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)
_URLSAFE = str.maketrans("-_", "+/")


class Disconnected(Exception):
    """The client went away while sending its body."""


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, or 413 when it is (or declares itself) larger than `limit` bytes, or 408 when
    it has not arrived within `timeout_s` (a slow or stalled sender holds a queue slot meanwhile)."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is larger than the limit of {limit} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit * (DISCARD_FACTOR + 1):
        raise too_large  # not worth reading: the connection is closed after the answer
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
                elif size > limit * (DISCARD_FACTOR + 1):
                    raise too_large
    except ClientDisconnect as exc:
        raise Disconnected("the client disconnected while sending the body") from exc
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s "
                            f"({size} bytes received); nothing was charged",
                       headers={"connection": "close"}) from None
    if size > limit:
        raise too_large
    return b"".join(chunks)


def check_content_type(request: Request) -> None:
    """JSON, or no content type at all (some clients send JSON without saying so), not encoded:
    a gzip body would be read as broken JSON, so it is refused by name rather than a confusing 400."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, f"content-encoding {encoding!r} is not accepted: send the JSON body uncompressed")
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise ApiError(415, f"the body must be application/json, got content-type {content_type!r}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 saying why it is not one."""
    if not body.strip():
        raise bad_request("the body is empty; send a JSON object with at least \"image\" and \"prompt\"")
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digit limits
        raise bad_request(f"the body is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise bad_request(f"the body must be a JSON object, got {_json_type(value)}")
    return value


def image_bytes(fields: dict[str, Any]) -> bytes:
    """The `image` field decoded from base64 (a data: URL prefix, line breaks and the URL-safe
    alphabet are accepted, as clients produce them)."""
    value = fields.get("image")
    if value is None:
        raise bad_request("is required: the base64 of a PNG, JPEG or WebP file", "image")
    if not isinstance(value, str):
        raise bad_request(f"must be a base64 string of a PNG, JPEG or WebP file, got {_json_type(value)}", "image")
    text = "".join(_DATA_URL.sub("", value.strip(), count=1).split()).translate(_URLSAFE)
    if not text:
        raise bad_request("is empty: send the base64 of a PNG, JPEG or WebP file", "image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"is not valid base64 ({exc})", "image") from None


def parse_request_body(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON object and its decoded image: CPU work on up to the body limit, run off the event loop."""
    fields = parse_object(body)
    return fields, image_bytes(fields)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
