"""The service's error responses: always JSON, `{"error": "<human readable>", ...}`, never a traceback."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error a handler answers with `status` and a JSON body naming what was wrong."""

    def __init__(
        self, status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None,
        include_field: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        # 400s always carry "field" (null for body-level problems) so clients can rely on the key.
        self.include_field = include_field or field is not None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.include_field:
            body["field"] = self.field
        return body

    def response(self, extra_headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(extra_headers or {})})


def bad_request(message: str, field: str | None = None) -> ApiError:
    """A 400; `message` says what is wrong with `field` ("must be ...") and is prefixed with its name."""
    return ApiError(400, f"{field}: {message}" if field else message, field=field, include_field=True)
