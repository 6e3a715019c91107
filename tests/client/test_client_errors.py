"""Status -> exception mapping and transport-error mapping, in one place."""

from __future__ import annotations

import httpx
import orjson
import pytest

from batchpipe.adapters.openai import connection_error, exception_class_for_status, status_error
from batchpipe.errors import (
    ApiConnectionError,
    ApiStatusError,
    ApiTimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (599, ServerError),
        (405, ApiStatusError),
        (408, ApiStatusError),
        (418, ApiStatusError),
        (422, ApiStatusError),
    ],
)
def test_exception_class_for_status(status: int, cls: type[ApiStatusError]) -> None:
    assert exception_class_for_status(status) is cls


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request(
        "POST", "http://emulator.test/v1/batches", headers={"Authorization": "Bearer sk-hidden-999"}
    )
    return httpx.Response(status, content=body, headers=headers or {}, request=request)


def test_status_error_carries_context() -> None:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit"}}
    response = _response(429, orjson.dumps(body), {"x-request-id": "req_123", "retry-after": "4"})
    exc = status_error(response, now_s=NOW)
    assert type(exc) is RateLimitError
    assert exc.status_code == 429
    assert exc.request_id == "req_123"
    assert exc.body == body
    assert (exc.code, exc.type, exc.param) == ("rate_limit", "requests", None)
    assert exc.retry_after_s == 4.0
    assert exc.method == "POST"
    assert exc.url == "http://emulator.test/v1/batches"
    assert str(exc) == "POST http://emulator.test/v1/batches -> HTTP 429: Rate limit reached"
    assert "sk-hidden-999" not in repr(exc.__dict__) + str(exc)


def test_status_error_non_json_body() -> None:
    exc = status_error(_response(502, b"<html>bad gateway</html>"), now_s=NOW)
    assert type(exc) is ServerError
    assert exc.body == "<html>bad gateway</html>"
    assert exc.code is None
    assert exc.request_id is None
    assert exc.retry_after_s is None
    assert "bad gateway" in str(exc)


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (httpx.ReadTimeout("timed out"), ApiTimeoutError),
        (httpx.ConnectTimeout("timed out"), ApiTimeoutError),
        (httpx.PoolTimeout("pool"), ApiTimeoutError),
        (httpx.ConnectError("refused"), ApiConnectionError),
        (httpx.ReadError("reset"), ApiConnectionError),
        (httpx.RemoteProtocolError("peer closed"), ApiConnectionError),
    ],
)
def test_connection_error(error: httpx.TransportError, cls: type[ApiConnectionError]) -> None:
    exc = connection_error(error, method="GET", url="http://emulator.test/v1/files")
    assert type(exc) is cls
    assert exc.method == "GET"
    assert exc.url == "http://emulator.test/v1/files"
    assert type(error).__name__ in str(exc)
