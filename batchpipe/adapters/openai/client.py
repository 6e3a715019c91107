"""Async client for the OpenAI Files and Batches API (SPEC paths ``/files...``, ``/batches...``).

One :class:`OpenAIClient` wraps one ``httpx.AsyncClient``; the transport, ``sleep``, ``clock`` and
``rand`` are injectable so tests run against ``httpx.MockTransport`` or the emulator with no real waiting.
Every call goes through one retry loop driven by :func:`batchpipe.adapters.openai.retry.decide`; ``POST /files`` and
``POST /batches`` use the non-idempotent rules (gotchas #9). Failures are raised as the
:mod:`batchpipe.errors` tree, mapped in one place (:func:`status_error`, :func:`connection_error`).
Messages, reprs and logs carry the method, URL, status and request id, never headers or the API key.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Container, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiofiles
import aiofiles.os
import httpx
import orjson
import structlog

from batchpipe.adapters.openai.retry import RetryPolicy, decide, parse_duration_s, parse_retry_after
from batchpipe.adapters.openai.settings import ApiSettings
from batchpipe.domain.api import Batch, FileObject, Page
from batchpipe.errors import (
    ApiConnectionError,
    ApiError,
    ApiProtocolError,
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
from batchpipe.ports import BatchApi

__all__ = [
    "ClientStats",
    "FileStream",
    "OpenAIClient",
    "RateLimitSnapshot",
    "connection_error",
    "exception_class_for_status",
    "status_error",
]

log = structlog.get_logger("batchpipe.adapters.openai")

_UPLOAD_CHUNK_BYTES = 1 << 20
_DEFAULT_LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=30.0)
"""A few concurrent downloads plus polling; more would only contend for the same rate limit."""

# Transport errors raised before any byte of the request left this process: safe to retry even a create.
_UNSENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)

_STATUS_CLASSES: dict[int, type[ApiStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


# --------------------------------------------------------------------------------------------- error mapping


def exception_class_for_status(status_code: int) -> type[ApiStatusError]:
    """The :mod:`batchpipe.errors` class for an HTTP error status (openai-python ``_make_status_error``).

    400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError,
    409 ConflictError, 429 RateLimitError, >= 500 ServerError, anything else ApiStatusError.
    """
    if status_code >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status_code, ApiStatusError)


def _parse_body(content: bytes) -> object:
    """Parsed JSON when the body is JSON, else the text (possibly empty)."""
    try:
        parsed: object = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", errors="replace")
    return parsed


def _redact_bearer(content: bytes, request: httpx.Request) -> bytes:
    """``content`` with the request's bearer token replaced by ``[redacted]``: a server (a proxy, an old
    gateway, a 401 page) that echoes the key must not carry it into exceptions, logs or the ledger."""
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if len(token) < 8:
        return content
    return content.replace(token.encode(), b"[redacted]")


def status_error(response: httpx.Response, *, now_s: float) -> ApiStatusError:
    """Build the exception for an error ``response`` whose body has been read.

    Carries ``status_code``, ``request_id`` (``x-request-id``), the parsed ``body`` (SPEC ``ErrorResponse``
    when JSON), ``retry_after_s`` (:func:`~batchpipe.adapters.openai.retry.parse_retry_after` at ``now_s``, unix
    seconds), and the request method and URL. Headers are never copied, and the bearer token is redacted
    from the body should the server echo it.
    """
    body = _parse_body(_redact_bearer(response.content, response.request))
    message = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or "")
    elif isinstance(body, str):
        message = body[:200]
    request = response.request
    method, url = request.method, str(request.url)
    text = f"{method} {url} -> HTTP {response.status_code}"
    if message:
        text = f"{text}: {message}"
    cls = exception_class_for_status(response.status_code)
    return cls(
        text,
        status_code=response.status_code,
        method=method,
        url=url,
        request_id=response.headers.get("x-request-id"),
        body=body,
        retry_after_s=parse_retry_after(response.headers, now_s),
    )


def connection_error(exc: httpx.TransportError, *, method: str, url: str) -> ApiConnectionError:
    """Map an httpx transport error: timeouts to :class:`ApiTimeoutError`, the rest to
    :class:`ApiConnectionError`. The caller raises it ``from exc``."""
    cls = ApiTimeoutError if isinstance(exc, httpx.TimeoutException) else ApiConnectionError
    detail = str(exc) or type(exc).__name__
    return cls(f"{method} {url}: {type(exc).__name__}: {detail}", method=method, url=url)


# ------------------------------------------------------------------------------------------- stats and limits


@dataclass
class ClientStats:
    """Counters since the client was created.

    ``requests``: requests sent per ``(method, route template)``, retries included, e.g.
    ``("GET", "/batches/{batch_id}")``; ``responses``: responses per HTTP status; ``retries``: retries
    performed; ``rate_limited``: 429 responses; ``connection_errors``: transport failures (before a response
    or in a body); ``rate_limit_waits``: times a request waited for ``x-ratelimit-reset-requests``;
    ``bytes_downloaded``: file-content bytes received (skipped bytes included); ``cursor_cycles``: list
    walks ended because the service gave a cursor already followed.
    """

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses: Counter[int] = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0
    connection_errors: int = 0
    rate_limit_waits: int = 0
    bytes_downloaded: int = 0
    cursor_cycles: int = 0


@dataclass(frozen=True, slots=True)
class RateLimitSnapshot:
    """The last request-rate headers seen (fact sheet §5, G-RL), all None before any were seen.

    ``limit_requests`` / ``remaining_requests`` from ``x-ratelimit-limit-requests`` /
    ``x-ratelimit-remaining-requests``; ``reset_requests_s`` (seconds) parsed from the duration string in
    ``x-ratelimit-reset-requests``; ``reset_at_s`` = clock at receipt + ``reset_requests_s`` (unix seconds).
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    reset_at_s: float | None = None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------- file stream

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first_byte, total_bytes)`` from a ``Content-Range`` header (RFC 9110 §14.4); None where unknown."""
    if value is None:
        return None, None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


class FileStream:
    """The body of ``GET /files/{file_id}/content``, from byte ``start_byte`` on, read once.

    ``status_code``: 200, 206, or 416 (nothing left: ``start_byte`` equals the file size); ``resumed``: True
    when the server honoured ``Range`` (206 or 416), False when it answered 200 with the whole file, in which
    case this stream **skips the first ``start_byte`` bytes itself**, so the caller always receives the bytes
    from ``start_byte`` on either way (``resumed`` only tells whether bytes were downloaded twice);
    ``total_bytes``: size of the whole file when known (``Content-Range`` total or 200 ``Content-Length``);
    ``bytes_received``: bytes read off the wire so far.

    The download asks for ``Accept-Encoding: identity``, so raw and decoded bytes coincide and offsets are
    file offsets. A connection cut partway (or a body shorter than announced) raises
    :class:`~batchpipe.errors.ApiConnectionError` (:class:`~batchpipe.errors.ApiTimeoutError` on a read
    timeout); the caller resumes with ``start_byte`` = bytes it has safely stored. Never retried here.
    """

    def __init__(self, response: httpx.Response, *, start_byte: int, stats: ClientStats) -> None:
        self._response = response
        self._stats = stats
        self.start_byte = start_byte
        self.status_code = response.status_code
        self.resumed = response.status_code in (206, 416)
        self.bytes_received = 0
        self._consumed = False
        length = _int_header(response.headers, "content-length")
        self._expected_bytes: int | None = length
        self._skip = 0
        method, url = response.request.method, str(response.request.url)
        if response.status_code == 206:
            first, total = _content_range(response.headers.get("content-range"))
            if first != start_byte:
                raise ApiError(
                    f"{method} {url}: asked for bytes from {start_byte}, got Content-Range "
                    f"{response.headers.get('content-range')!r}",
                    method=method,
                    url=url,
                )
            self.total_bytes: int | None = total
        elif response.status_code == 416:
            self.total_bytes = start_byte
            self._expected_bytes = 0
        else:
            self.total_bytes = length
            self._skip = start_byte

    def __repr__(self) -> str:
        return (
            f"FileStream(status_code={self.status_code}, resumed={self.resumed}, "
            f"start_byte={self.start_byte}, total_bytes={self.total_bytes}, "
            f"bytes_received={self.bytes_received})"
        )

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """Yield the content from ``start_byte`` on, in chunks of ``chunk_size`` bytes (the first chunk may be
        shorter after a skip). Raises ApiConnectionError / ApiTimeoutError when the stream is cut."""
        return self._iterate(self._response.aiter_bytes(chunk_size))

    def aiter_raw(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """Like :meth:`aiter_bytes` without content decoding (identical here: identity encoding is asked).

        A response whose body is already in memory (e.g. built by ``httpx.MockTransport``) is served from
        memory, since httpx cannot replay its raw stream."""
        try:
            _ = self._response.content
        except httpx.ResponseNotRead:
            return self._iterate(self._response.aiter_raw(chunk_size))
        return self._iterate(self._response.aiter_bytes(chunk_size))

    async def _iterate(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        if self._consumed:
            raise RuntimeError("FileStream can be iterated once")
        self._consumed = True
        request = self._response.request
        method, url = request.method, str(request.url)
        if self.status_code == 416:
            return
        skip = self._skip
        try:
            async for chunk in chunks:
                self.bytes_received += len(chunk)
                self._stats.bytes_downloaded += len(chunk)
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if chunk:
                    yield chunk
        except httpx.TransportError as exc:
            self._stats.connection_errors += 1
            raise connection_error(exc, method=method, url=url) from exc
        if self._expected_bytes is not None and self.bytes_received < self._expected_bytes:
            self._stats.connection_errors += 1
            raise ApiConnectionError(
                f"{method} {url}: stream ended after {self.bytes_received} of {self._expected_bytes} bytes",
                method=method,
                url=url,
            )
        if skip:
            raise ApiConnectionError(
                f"{method} {url}: file ended before start_byte {self.start_byte}", method=method, url=url
            )


# ---------------------------------------------------------------------------------------------------- client


def _seg(object_id: str) -> str:
    """An object ID as one URL path segment (IDs come from the server; quote anyway)."""
    return urllib.parse.quote(object_id, safe="")


def _quote_filename(name: str) -> str:
    """A filename safe inside a quoted multipart ``Content-Disposition`` parameter (WHATWG form encoding)."""
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class OpenAIClient:
    """Files and Batches calls with retries, error mapping, rate-limit pacing and counters.

    ``settings``: where and how to connect (key used only in headers); ``transport``: an httpx transport
    (``httpx.MockTransport``, ``httpx.ASGITransport``), default a real pooled one; ``retry``: the
    :class:`RetryPolicy`; ``sleep(seconds)``, ``clock() -> unix seconds``, ``rand() -> [0, 1)``: injected
    for tests. Use as ``async with OpenAIClient(...) as client:`` or call :meth:`aclose`.

    Rate-limit pacing: after a response with ``x-ratelimit-remaining-requests: 0``, the next requests wait
    until the ``x-ratelimit-reset-requests`` moment (at most ``retry.max_retry_after_s``; past that the
    server's 429 and ``retry-after`` take over). One state is kept for the whole client.

    httpx's ``trust_env`` is off: the client reads no environment variables (proxy settings included).
    """

    def __init__(
        self,
        settings: ApiSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, immutable default
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.retry = retry
        self.stats = ClientStats()
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._rate_limit = RateLimitSnapshot()
        self._http = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/") + "/",
            headers=settings.headers(),
            timeout=settings.timeouts.to_httpx(),
            limits=_DEFAULT_LIMITS,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self.settings.base_url!r})"

    @property
    def rate_limit(self) -> RateLimitSnapshot:
        """The last seen request-rate headers (see :class:`RateLimitSnapshot`)."""
        return self._rate_limit

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------ plumbing

    def _observe_rate_limit(self, headers: httpx.Headers) -> None:
        remaining = _int_header(headers, "x-ratelimit-remaining-requests")
        reset_raw = headers.get("x-ratelimit-reset-requests")
        limit = _int_header(headers, "x-ratelimit-limit-requests")
        if remaining is None and reset_raw is None and limit is None:
            return
        reset_s = parse_duration_s(reset_raw) if reset_raw is not None else None
        self._rate_limit = RateLimitSnapshot(
            limit_requests=limit,
            remaining_requests=remaining,
            reset_requests_s=reset_s,
            reset_at_s=self._clock() + reset_s if reset_s is not None else None,
        )

    async def _pace(self, method: str, route: str) -> None:
        snap = self._rate_limit
        if snap.remaining_requests != 0 or snap.reset_at_s is None:
            return
        wait_s = min(snap.reset_at_s - self._clock(), self.retry.max_retry_after_s)
        if wait_s <= 0:
            return
        self.stats.rate_limit_waits += 1
        log.info("api.rate_limit_wait", method=method, route=route, delay_s=round(wait_s, 3))
        await self._sleep(wait_s)

    async def _send(
        self,
        method: str,
        route: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str | int] | None = None,
        json: object = None,
        content: Callable[[], AsyncIterable[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        accept: Container[int] = (),
    ) -> httpx.Response:
        """Send one logical call, retrying per policy; return the first response with status < 400 (or in
        ``accept``). ``route`` is the template for stats and logs; ``content`` builds a fresh body per
        attempt. With ``stream=True`` the returned response is open and the caller must close it."""
        attempt = 0
        while True:
            await self._pace(method, route)
            request = self._http.build_request(
                method,
                path,
                params=params,
                json=json,
                content=content() if content is not None else None,
                headers=headers,
            )
            url = str(request.url)
            self.stats.requests[(method, route)] += 1
            try:
                response = await self._http.send(request, stream=stream)
                if stream and (response.status_code >= 400 and response.status_code not in accept):
                    await response.aread()
            except httpx.TransportError as exc:
                self.stats.connection_errors += 1
                error: ApiError = connection_error(exc, method=method, url=url)
                decision = decide(
                    self.retry,
                    attempt=attempt,
                    status_code=None,
                    headers={},
                    now_s=self._clock(),
                    rand=self._rand(),
                    idempotent=idempotent,
                    request_sent=not isinstance(exc, _UNSENT_ERRORS),
                )
                if not decision.retry:
                    raise error from exc
                status: int | None = None
            else:
                self.stats.responses[response.status_code] += 1
                self._observe_rate_limit(response.headers)
                if response.status_code < 400 or response.status_code in accept:
                    return response
                await response.aclose()
                if response.status_code == 429:
                    self.stats.rate_limited += 1
                status_exc = status_error(response, now_s=self._clock())
                decision = decide(
                    self.retry,
                    attempt=attempt,
                    status_code=response.status_code,
                    headers=response.headers,
                    now_s=self._clock(),
                    rand=self._rand(),
                    idempotent=idempotent,
                    error_code=status_exc.code,
                )
                if not decision.retry:
                    raise status_exc
                status = response.status_code
            attempt += 1
            self.stats.retries += 1
            log.warning(
                "api.retry",
                method=method,
                route=route,
                status=status,
                attempt=attempt,
                delay_s=round(decision.delay_s, 3),
                reason=decision.reason,
            )
            await self._sleep(decision.delay_s)

    async def _json(
        self,
        method: str,
        route: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str | int] | None = None,
        json: object = None,
        content: Callable[[], AsyncIterable[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, object]:
        response = await self._send(
            method,
            route,
            path,
            idempotent=idempotent,
            params=params,
            json=json,
            content=content,
            headers=headers,
        )
        try:
            body: Any = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                f"{method} {response.request.url}: response is not JSON",
                method=method,
                url=str(response.request.url),
            ) from exc
        if not isinstance(body, dict):
            raise ApiError(
                f"{method} {response.request.url}: expected a JSON object, got {type(body).__name__}",
                method=method,
                url=str(response.request.url),
            )
        return body

    # --------------------------------------------------------------------------------------------- files

    async def upload_file(
        self, path: Path, *, purpose: str, filename: str | None = None, expires_after_s: int | None = None
    ) -> FileObject:
        """``POST /files`` (SPEC ``CreateFileRequest``), streaming ``path`` from disk as multipart form data.

        ``purpose``: e.g. ``"batch"``; ``filename``: name sent (default ``path.name``); ``expires_after_s``:
        sent as ``expires_after[anchor]=created_at`` and ``expires_after[seconds]`` (SPEC
        ``FileExpirationAfter``: 3600..2592000). Returns the ``OpenAIFile`` object. Non-idempotent: retried
        only on 429 or when nothing was sent. Raises the ApiError family; OSError if the file is unreadable
        or shrinks while being sent.
        """
        size_bytes = (await aiofiles.os.stat(path)).st_size
        boundary = secrets.token_hex(16)
        fields: list[tuple[str, str]] = [("purpose", purpose)]
        if expires_after_s is not None:
            fields += [
                ("expires_after[anchor]", "created_at"),
                ("expires_after[seconds]", str(expires_after_s)),
            ]
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{_quote_filename(filename or path.name)}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def body() -> AsyncIterator[bytes]:
            yield head
            left = size_bytes
            async with aiofiles.open(path, "rb") as handle:
                while left > 0:
                    chunk = await handle.read(min(_UPLOAD_CHUNK_BYTES, left))
                    if not chunk:
                        raise OSError(f"{path} shrank during upload")
                    left -= len(chunk)
                    yield chunk
            yield tail

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size_bytes + len(tail)),
        }
        raw = await self._json("POST", "/files", "files", idempotent=False, content=body, headers=headers)
        return FileObject.parse(raw, what="POST /files")

    async def retrieve_file(self, file_id: str) -> FileObject:
        """``GET /files/{file_id}``: the ``OpenAIFile``. Raises NotFoundError and the ApiError family."""
        raw = await self._json("GET", "/files/{file_id}", f"files/{_seg(file_id)}", idempotent=True)
        return FileObject.parse(raw, what="GET /files/{file_id}")

    async def list_files(
        self,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str = "desc",
    ) -> Page[FileObject]:
        """``GET /files`` (SPEC ``listFiles``): one ``ListFilesResponse`` page ``{data, first_id, last_id,
        has_more}``, parsed (:class:`~batchpipe.domain.api.Page`). ``limit`` 1..10,000 (server default 10,000);
        ``order`` ``asc``|``desc`` by created_at."""
        params: dict[str, str | int] = {"order": order}
        if purpose is not None:
            params["purpose"] = purpose
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        raw = await self._json("GET", "/files", "files", idempotent=True, params=params)
        return Page.parse(raw, FileObject, what="GET /files")

    async def delete_file(self, file_id: str) -> dict[str, object]:
        """``DELETE /files/{file_id}``: ``DeleteFileResponse`` ``{id, object, deleted}``. Treated as
        idempotent, so a retried delete whose first attempt succeeded surfaces as NotFoundError."""
        return await self._json("DELETE", "/files/{file_id}", f"files/{_seg(file_id)}", idempotent=True)

    @asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[FileStream]:
        """``GET /files/{file_id}/content`` as a :class:`FileStream`, from ``start_byte`` (``Range`` request).

        Sends ``Accept: application/binary`` (as openai-python does) and ``Accept-Encoding: identity``. The
        opening (connect, status) is retried per policy; the body never is. Raises the ApiError family;
        ValueError for a negative ``start_byte``.
        """
        if start_byte < 0:
            raise ValueError("start_byte must be >= 0")
        headers = {"Accept": "application/binary", "Accept-Encoding": "identity"}
        if start_byte > 0:
            headers["Range"] = f"bytes={start_byte}-"
        route = "/files/{file_id}/content"
        response = await self._send(
            "GET",
            route,
            f"files/{_seg(file_id)}/content",
            idempotent=True,
            headers=headers,
            stream=True,
            accept=(416,) if start_byte > 0 else (),
        )
        try:
            if response.status_code == 416:
                _, total = _content_range(response.headers.get("content-range"))
                if total != start_byte:
                    await response.aread()
                    raise status_error(response, now_s=self._clock())
            yield FileStream(response, start_byte=start_byte, stats=self.stats)
        finally:
            await response.aclose()

    # ------------------------------------------------------------------------------------------- batches

    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, str] | None = None,
        output_expires_after_s: int | None = None,
    ) -> Batch:
        """``POST /batches`` (SPEC ``CreateBatchRequest``) with ``completion_window="24h"``; returns the
        ``Batch``. ``metadata``: at most 16 pairs (SPEC ``Metadata``); ``output_expires_after_s``: sent as
        ``output_expires_after={anchor: created_at, seconds}`` (SPEC ``BatchFileExpirationAfter``).

        Non-idempotent (gotchas #9): retried only on 429 or when the request was never sent; after a 5xx or
        a timeout the error is raised and the caller must reconcile (look for its metadata in
        :meth:`iter_batches`) before creating again.
        """
        body: dict[str, object] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if metadata is not None:
            body["metadata"] = metadata
        if output_expires_after_s is not None:
            body["output_expires_after"] = {"anchor": "created_at", "seconds": output_expires_after_s}
        raw = await self._json("POST", "/batches", "batches", idempotent=False, json=body)
        return Batch.parse(raw, what="POST /batches")

    async def retrieve_batch(self, batch_id: str) -> Batch:
        """``GET /batches/{batch_id}``: the ``Batch``. Raises NotFoundError and the ApiError family."""
        raw = await self._json("GET", "/batches/{batch_id}", f"batches/{_seg(batch_id)}", idempotent=True)
        return Batch.parse(raw, what="GET /batches/{batch_id}")

    async def retrieve_model(self, model: str) -> dict[str, object]:
        """``GET /models/{model}``: the ``Model`` (SPEC ``retrieveModel``; SDK ``types/model.py``: ``id``,
        ``created``, ``owned_by``, ``shutdown_date`` ``YYYY-MM-DD`` or null). Raises NotFoundError for a model the
        service does not know, and the ApiError family."""
        return await self._json("GET", "/models/{model}", f"models/{_seg(model)}", idempotent=True)

    async def list_batches(self, *, after: str | None = None, limit: int = 100) -> Page[Batch]:
        """``GET /batches`` (SPEC ``listBatches``): one ``ListBatchesResponse`` page, newest first, parsed
        (:class:`~batchpipe.domain.api.Page`); ``limit`` 1..100."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        raw = await self._json("GET", "/batches", "batches", idempotent=True, params=params)
        return Page.parse(raw, Batch, what="GET /batches")

    async def iter_batches(
        self, *, limit: int = 100, stop: Callable[[Batch], bool] | None = None
    ) -> AsyncIterator[Batch]:
        """Every batch, newest first, following ``has_more`` with ``after=last_id`` (the last item's ``id``
        when ``last_id`` is absent; SPEC ``ListBatchesResponse`` makes it optional). When ``stop(batch)`` is
        true, iteration ends *without* yielding that batch (e.g. ``created_at`` older than a horizon).
        A page with no items ends iteration even if it claims ``has_more``. A cursor already followed (a list
        that repeats or cycles) raises :class:`~batchpipe.errors.ApiProtocolError` (counted in ``cursor_cycles``):
        such a list can never prove that a batch is absent."""
        after: str | None = None
        followed: set[str] = set()
        while True:
            page = await self.list_batches(after=after, limit=limit)
            for batch in page.data:
                if stop is not None and stop(batch):
                    return
                yield batch
            if not page.has_more or not page.data or page.last_id is None:
                return
            if page.last_id in followed:
                self.stats.cursor_cycles += 1
                raise ApiProtocolError(
                    f"GET /batches: the list's cursor repeats (after={page.last_id} was answered before), so the "
                    "list cannot be walked to its end; a gateway or proxy in front of the API may be caching pages",
                    method="GET",
                    url="/batches",
                )
            followed.add(page.last_id)
            after = page.last_id

    async def cancel_batch(self, batch_id: str) -> Batch:
        """``POST /batches/{batch_id}/cancel``: the ``Batch``, usually ``cancelling``. Cancelling twice has
        the same effect as once, so it is retried as idempotent."""
        raw = await self._json(
            "POST", "/batches/{batch_id}/cancel", f"batches/{_seg(batch_id)}/cancel", idempotent=True
        )
        return Batch.parse(raw, what="POST /batches/{batch_id}/cancel")


if TYPE_CHECKING:  # mypy proves that OpenAIClient implements the BatchApi port; nothing runs
    _conforms: BatchApi = OpenAIClient(ApiSettings())
