"""The `Idempotency-Key` request header: a retry of a charged request gets the same image, not a second charge.

Our extension of the hosted API, after the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header) and Stripe's model. Per (API key, Idempotency-Key):

- first use: the request runs as usual; its key is claimed with its credit reservation, and its
  JPEG and headers are stored before the charge (idempotency_store.py);
- same key, same body (SHA-256 of the body bytes), charged: the stored response again, 200 with
  `Idempotent-Replayed: true`, nothing charged, the current balance in `x-remaining-credits`;
- same key, still running: 409 with Retry-After; same key, another body: 422;
- a request that failed was refunded and its key released: a retry runs again.

Without a credits store (--no-auth) nothing is charged and the header is ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from .errors import ApiError
from .idempotency_store import AlreadyDone, Claim, IdempotencyOutcome, InProgress, KeyReused, StoredResponse
from .metrics import Metrics
from .store import CreditStore

log = logging.getLogger("outpaint.server")
HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"  # Stripe's response header for a replay
ORIGINAL_REQUEST_ID = "x-original-request-id"
NOT_STORED = frozenset({"x-remaining-credits", "x-request-id"})  # answered fresh on a replay
MAX_KEY_CHARS = 255  # Stripe's limit; a UUID (the draft's suggestion) is 36
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_CHARS}}}")  # visible ASCII
_SF_ESCAPE = re.compile(r'\\(["\\])')


def parse_key(value: str | None) -> str | None:
    """The key in a header value (None when absent): the draft's quoted sf-string or a bare token."""
    if value is None:
        return None
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _SF_ESCAPE.sub(r"\1", text[1:-1])
    if not _KEY.fullmatch(text):
        raise ApiError(400, f"Idempotency-Key: must be 1 to {MAX_KEY_CHARS} visible ASCII characters "
                            "(a UUID is a good key), optionally in double quotes", include_field=True)
    return text


class Replay(Exception):
    """Answer with a stored response (raised instead of running the request)."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__(stored.request_id)
        self.stored = stored

    def response(self, extra_headers: dict[str, str]) -> Response:
        headers = {**self.stored.headers, REPLAYED: "true", ORIGINAL_REQUEST_ID: self.stored.request_id,
                   **extra_headers}
        return Response(self.stored.body, media_type="image/jpeg", headers=headers)


def _fingerprint(scope: bytes, body: bytes) -> bytes:
    digest = hashlib.sha256()
    if scope:
        digest.update(scope + b"\0")
    digest.update(body)
    return digest.digest()


class Idempotency:
    """The steps a request with an Idempotency-Key takes, in the order app.py calls them."""

    def __init__(self, store: CreditStore | None, metrics: Metrics, retry_after: Callable[[], int]) -> None:
        self.store = store
        self.metrics = metrics
        self.retry_after = retry_after

    async def precheck(
        self, request: Request, key_id: int | None, read_body: Callable[[], Awaitable[bytes]], scope: bytes = b""
    ) -> str | None:
        """Before the balance check (a retry of a charged request needs no credit left): a key
        whose request still runs is a 409 at once; one whose request was charged reads the body
        and replays (or 422s). Returns the key, or None without one."""
        if self.store is None or key_id is None:
            return None
        key = parse_key(request.headers.get(HEADER))
        if key is None:
            return None
        found = await asyncio.to_thread(self.store.idempotency_state, key_id, key)
        if found == "running":
            raise self.answer(InProgress(key))
        if found == "done":
            claim = await self.claim(key, await read_body(), scope)
            assert claim is not None
            try:
                await asyncio.to_thread(self.store.check_idempotency, key_id, claim)
            except IdempotencyOutcome as outcome:
                raise self.answer(outcome) from None
            # Expired or evicted between the two reads, and the body is read: it cannot run now.
            raise ApiError(409, "the response stored for this Idempotency-Key just expired; send the request "
                                "again to run it", headers={"retry-after": "1"})
        return key

    async def claim(self, key: str | None, body: bytes, scope: bytes = b"") -> Claim | None:
        """The key with the body's fingerprint (hashed off the event loop: a body is up to 16 MiB).
        `scope` (a route's name; empty for the blocking route) is hashed first, so the same body sent
        to another route does not match."""
        if key is None:
            return None
        return Claim(key, await asyncio.to_thread(_fingerprint, scope, body))

    def answer(self, outcome: IdempotencyOutcome) -> ApiError | Replay:
        if isinstance(outcome, AlreadyDone):
            self.metrics.idempotency.labels("replayed").inc()
            return Replay(outcome.stored)
        if isinstance(outcome, KeyReused):
            self.metrics.idempotency.labels("mismatch").inc()
            return ApiError(422, "this Idempotency-Key was already used with a different request body; "
                                 "use a new key for a new request")
        self.metrics.idempotency.labels("conflict").inc()
        return ApiError(409, "a request with this Idempotency-Key is still running; retry after it finishes "
                             "to get its image", headers={"retry-after": str(self.retry_after())})

    async def store_response(self, claim: Claim | None, request_id: str, headers: dict[str, str], jpeg: bytes) -> None:
        """Keep the response for replays, before the charge. A failure only costs the replay."""
        if self.store is None or claim is None:
            return
        kept = {name: value for name, value in headers.items() if name.lower() not in NOT_STORED}
        try:
            await asyncio.to_thread(self.store.store_response, request_id, kept, jpeg)
        except Exception:
            log.exception("could not store the response of request %s for its Idempotency-Key", request_id)
