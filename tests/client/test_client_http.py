"""OpenAIClient over httpx.MockTransport / ASGITransport: retries, non-idempotent creates, pagination,
resumable downloads, rate-limit pacing, and the key kept out of errors and logs."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
import structlog
from client_fakes import API_KEY, FakeClock
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batchpipe.adapters.openai import FileStream, OpenAIClient, RetryPolicy
from batchpipe.domain.api import Batch
from batchpipe.errors import (
    ApiConnectionError,
    ApiError,
    ApiProtocolError,
    ApiTimeoutError,
    AuthenticationError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from batchpipe.stages.poll import Poller

MakeClient = Callable[..., OpenAIClient]


def err(status: int, message: str = "boom", code: str | None = None, **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers={k.replace("_", "-"): v for k, v in headers.items()})


def batch(batch_id: str, created_at: int = 0, status: str = "validating") -> dict[str, object]:
    return {"id": batch_id, "object": "batch", "status": status, "created_at": created_at}


# ------------------------------------------------------------------------------------------- retries


async def test_get_retried_on_5xx_with_backoff(make_client: MakeClient, clock: FakeClock) -> None:
    answers = [err(500), err(503, x_request_id="req_2"), httpx.Response(200, json=batch("batch_1"))]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    async with make_client(handler) as client:
        result = await client.retrieve_batch("batch_1")
    assert result.id == "batch_1"
    assert clock.sleeps == [0.5, 1.0]
    assert [str(r.url) for r in seen] == ["http://emulator.test/v1/batches/batch_1"] * 3
    assert seen[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert seen[0].headers["openai-organization"] == "org-1"
    assert seen[0].headers["user-agent"].startswith("batchpipe/")
    assert client.stats.requests[("GET", "/batches/{batch_id}")] == 3
    assert client.stats.responses == {500: 1, 503: 1, 200: 1}
    assert client.stats.retries == 2


async def test_retries_exhausted_raise_mapped_error(make_client: MakeClient, clock: FakeClock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return err(502, "bad gateway", x_request_id=f"req_{calls}")

    async with make_client(handler, retry=RetryPolicy(max_retries=2)) as client:
        with pytest.raises(ServerError) as info:
            await client.retrieve_file("file-1")
    assert calls == 3
    assert clock.sleeps == [0.5, 1.0]
    assert info.value.status_code == 502
    assert info.value.request_id == "req_3"
    assert info.value.method == "GET"
    assert info.value.url == "http://emulator.test/v1/files/file-1"


async def test_429_retry_after_honoured(make_client: MakeClient, clock: FakeClock) -> None:
    answers = [err(429, "slow down", retry_after="3"), httpx.Response(200, json=batch("b"))]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async with make_client(handler) as client:
        await client.retrieve_batch("b")
    assert clock.sleeps == [3.0]
    assert client.stats.rate_limited == 1


async def test_insufficient_quota_not_retried(make_client: MakeClient, clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return err(429, "You exceeded your current quota", code="insufficient_quota")

    async with make_client(handler) as client:
        with pytest.raises(RateLimitError) as info:
            await client.list_batches()
    assert info.value.code == "insufficient_quota"
    assert clock.sleeps == []


async def test_4xx_not_retried(make_client: MakeClient, clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return err(404, "No such File object: file-x")

    async with make_client(handler) as client:
        with pytest.raises(NotFoundError, match="No such File"):
            await client.delete_file("file-x")
    assert clock.sleeps == []


async def test_get_retried_on_read_timeout(make_client: MakeClient, clock: FakeClock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ReadTimeout("read timed out", request=request)
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})

    async with make_client(handler) as client:
        page = await client.list_files(purpose="batch", after="file-9", limit=5, order="asc")
    assert page.data == []
    assert calls == 2
    assert client.stats.connection_errors == 1


# --------------------------------------------------------------------------- create_batch (non-idempotent)


def _create_handler(first: Callable[[httpx.Request], httpx.Response]) -> tuple[list[dict[str, object]], object]:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/v1/batches"
        bodies.append(orjson.loads(request.content))
        if len(bodies) == 1:
            return first(request)
        return httpx.Response(200, json=batch("batch_new"))

    return bodies, handler


async def test_create_batch_not_retried_on_500(make_client: MakeClient, clock: FakeClock) -> None:
    bodies, handler = _create_handler(lambda r: err(500))
    async with make_client(handler) as client:
        with pytest.raises(ServerError):
            await client.create_batch(input_file_id="file-1", endpoint="/v1/images/generations")
    assert len(bodies) == 1
    assert clock.sleeps == []


async def test_create_batch_not_retried_on_read_timeout(make_client: MakeClient, clock: FakeClock) -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    bodies, handler = _create_handler(timeout)
    async with make_client(handler) as client:
        with pytest.raises(ApiTimeoutError) as info:
            await client.create_batch(input_file_id="file-1", endpoint="/v1/images/generations")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert len(bodies) == 1
    assert clock.sleeps == []


async def test_create_batch_retried_on_429(make_client: MakeClient, clock: FakeClock) -> None:
    bodies, handler = _create_handler(lambda r: err(429, "Rate limit reached for requests", retry_after="2"))
    async with make_client(handler) as client:
        created = await client.create_batch(
            input_file_id="file-1",
            endpoint="/v1/images/edits",
            metadata={"idempotency_key": "k1"},
            output_expires_after_s=7200,
        )
    assert created.id == "batch_new"
    assert clock.sleeps == [2.0]
    assert len(bodies) == 2
    assert (
        bodies[0]
        == bodies[1]
        == {
            "input_file_id": "file-1",
            "endpoint": "/v1/images/edits",
            "completion_window": "24h",
            "metadata": {"idempotency_key": "k1"},
            "output_expires_after": {"anchor": "created_at", "seconds": 7200},
        }
    )


async def test_create_batch_retried_on_connect_error(make_client: MakeClient, clock: FakeClock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=batch("batch_new"))

    async with make_client(handler) as client:
        created = await client.create_batch(input_file_id="file-1", endpoint="/v1/images/generations")
    assert created.id == "batch_new"
    assert calls == 2
    assert clock.sleeps == [0.5]


async def test_cancel_batch_is_retried(make_client: MakeClient, clock: FakeClock) -> None:
    answers = [err(500), httpx.Response(200, json=batch("b1", status="cancelling"))]
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(f"{request.method} {request.url.path}")
        return answers.pop(0)

    async with make_client(handler) as client:
        result = await client.cancel_batch("b1")
    assert result.status == "cancelling"
    assert paths == ["POST /v1/batches/b1/cancel"] * 2


async def test_non_object_json_is_an_error(make_client: MakeClient) -> None:
    async with make_client(lambda r: httpx.Response(200, json=[1, 2])) as client:
        with pytest.raises(ApiError, match="expected a JSON object"):
            await client.retrieve_batch("b")
    async with make_client(lambda r: httpx.Response(200, content=b"not json")) as client:
        with pytest.raises(ApiError, match="not JSON"):
            await client.retrieve_batch("b")


# ---------------------------------------------------------------------------------------- pagination


def _batches_server(total: int, *, omit_last_id: bool = False) -> tuple[list[dict[str, str]], object]:
    """``total`` batches, newest first (created_at descending), paged by ``after``/``limit``."""
    everything = [batch(f"batch_{i:04d}", created_at=10_000 - i) for i in range(total)]
    queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        queries.append(query)
        start = 0
        if "after" in query:
            start = next(i for i, b in enumerate(everything) if b["id"] == query["after"]) + 1
        page = everything[start : start + int(query["limit"])]
        body: dict[str, object] = {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "has_more": start + len(page) < total,
        }
        if not omit_last_id:
            body["last_id"] = page[-1]["id"] if page else None
        return httpx.Response(200, json=body)

    return queries, handler


@pytest.mark.parametrize("omit_last_id", [False, True])
async def test_iter_batches_follows_pages(make_client: MakeClient, omit_last_id: bool) -> None:
    queries, handler = _batches_server(250, omit_last_id=omit_last_id)
    async with make_client(handler) as client:
        got = [b.id async for b in client.iter_batches(limit=100)]
    assert got == [f"batch_{i:04d}" for i in range(250)]
    assert queries == [
        {"limit": "100"},
        {"limit": "100", "after": "batch_0099"},
        {"limit": "100", "after": "batch_0199"},
    ]


async def test_iter_batches_stop_ends_early(make_client: MakeClient) -> None:
    queries, handler = _batches_server(250)

    def too_old(b: Batch) -> bool:
        created_at = b.created_at
        assert isinstance(created_at, int)
        return created_at < 10_000 - 120

    async with make_client(handler) as client:
        got = [b.id async for b in client.iter_batches(limit=50, stop=too_old)]
    assert got == [f"batch_{i:04d}" for i in range(121)]
    assert len(queries) == 3  # pages 0-49, 50-99, 100-149; page four never requested


async def test_iter_batches_empty_page_with_has_more_terminates(make_client: MakeClient) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": True})

    async with make_client(handler) as client:
        assert [b async for b in client.iter_batches()] == []
    assert calls == 1


# ------------------------------------------------------------------------------------------ downloads

CONTENT = bytes(range(256)) * 40  # 10,240 bytes


def _ranged_handler(*, honour_range: bool, seen: list[httpx.Request]) -> object:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.path == "/v1/files/file-out/content"
        header = request.headers.get("range")
        if header and honour_range:
            start = int(header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(CONTENT):
                return httpx.Response(416, headers={"content-range": f"bytes */{len(CONTENT)}"})
            return httpx.Response(
                206,
                content=CONTENT[start:],
                headers={"content-range": f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}"},
            )
        return httpx.Response(200, content=CONTENT)

    return handler


async def _read(client: OpenAIClient, start_byte: int, chunk_size: int | None = 1000) -> tuple[bytes, FileStream]:
    async with client.stream_file_content("file-out", start_byte=start_byte) as stream:
        data = b"".join([c async for c in stream.aiter_bytes(chunk_size)])
    return data, stream


async def test_stream_whole_file(make_client: MakeClient) -> None:
    seen: list[httpx.Request] = []
    async with make_client(_ranged_handler(honour_range=True, seen=seen)) as client:
        data, stream = await _read(client, 0)
    assert data == CONTENT
    assert "range" not in seen[0].headers
    assert seen[0].headers["accept"] == "application/binary"
    assert seen[0].headers["accept-encoding"] == "identity"
    assert (stream.status_code, stream.resumed, stream.total_bytes) == (200, False, len(CONTENT))
    assert client.stats.bytes_downloaded == len(CONTENT)


async def test_stream_resume_with_206(make_client: MakeClient) -> None:
    seen: list[httpx.Request] = []
    async with make_client(_ranged_handler(honour_range=True, seen=seen)) as client:
        data, stream = await _read(client, 4321)
    assert seen[0].headers["range"] == "bytes=4321-"
    assert data == CONTENT[4321:]
    assert (stream.status_code, stream.resumed, stream.total_bytes) == (206, True, len(CONTENT))
    assert client.stats.bytes_downloaded == len(CONTENT) - 4321


@pytest.mark.parametrize("chunk_size", [None, 1, 1000, 4321, 100_000])
async def test_stream_resume_fallback_200_skips_prefix(make_client: MakeClient, chunk_size: int | None) -> None:
    seen: list[httpx.Request] = []
    async with make_client(_ranged_handler(honour_range=False, seen=seen)) as client:
        data, stream = await _read(client, 4321, chunk_size)
    assert data == CONTENT[4321:]
    assert (stream.status_code, stream.resumed, stream.total_bytes) == (200, False, len(CONTENT))
    assert stream.bytes_received == len(CONTENT)
    assert client.stats.bytes_downloaded == len(CONTENT)


async def test_stream_resume_at_end_416(make_client: MakeClient) -> None:
    seen: list[httpx.Request] = []
    async with make_client(_ranged_handler(honour_range=True, seen=seen)) as client:
        data, stream = await _read(client, len(CONTENT))
    assert data == b""
    assert (stream.status_code, stream.resumed, stream.total_bytes) == (416, True, len(CONTENT))


async def test_stream_416_beyond_end_is_error(make_client: MakeClient) -> None:
    seen: list[httpx.Request] = []
    async with make_client(_ranged_handler(honour_range=True, seen=seen)) as client:
        with pytest.raises(ApiError) as info:
            await _read(client, len(CONTENT) + 5)
    assert getattr(info.value, "status_code", None) == 416


class CutStream(httpx.AsyncByteStream):
    """Yields ``data`` in two halves' worth of bytes, then fails like a reset connection."""

    def __init__(self, data: bytes, cut_at: int) -> None:
        self.data = data
        self.cut_at = cut_at

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.cut_at]
        raise httpx.ReadError("connection reset by peer")


async def test_cut_stream_raises_then_resumes(make_client: MakeClient) -> None:
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("range"))
        if len(calls) == 1:
            return httpx.Response(200, stream=CutStream(CONTENT, 3000))
        start = int(request.headers["range"].removeprefix("bytes=").removesuffix("-"))
        return httpx.Response(
            206,
            content=CONTENT[start:],
            headers={"content-range": f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}"},
        )

    received = bytearray()
    async with make_client(handler) as client:
        with pytest.raises(ApiConnectionError) as info:
            async with client.stream_file_content("file-out") as stream:
                async for chunk in stream.aiter_raw():
                    received += chunk
        assert not isinstance(info.value, ApiTimeoutError)
        assert isinstance(info.value.__cause__, httpx.ReadError)
        assert bytes(received) == CONTENT[:3000]
        async with client.stream_file_content("file-out", start_byte=len(received)) as stream:
            async for chunk in stream.aiter_raw():
                received += chunk
    assert bytes(received) == CONTENT
    assert calls == [None, "bytes=3000-"]  # the middle of a body is never retried by the client itself


async def test_short_body_raises_connection_error(make_client: MakeClient) -> None:
    class Short(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield CONTENT[:100]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Short(), headers={"content-length": str(len(CONTENT))})

    async with make_client(handler) as client:
        with pytest.raises(ApiConnectionError, match="100 of 10240"):
            await _read(client, 0)


async def test_stream_open_retried(make_client: MakeClient, clock: FakeClock) -> None:
    answers = [err(503), httpx.Response(200, content=CONTENT)]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async with make_client(handler) as client:
        data, _ = await _read(client, 0)
    assert data == CONTENT
    assert clock.sleeps == [0.5]


async def test_stream_not_found(make_client: MakeClient) -> None:
    async with make_client(lambda r: err(404, "No such File object")) as client:
        with pytest.raises(NotFoundError):
            await _read(client, 0)


# --------------------------------------------------------------------------------------------- upload


def _upload_app(fail_first_with: int | None, received: list[dict[str, object]]) -> Starlette:
    async def create_file(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form["file"]
        assert isinstance(upload, UploadFile)
        data = await upload.read()
        received.append(
            {
                "purpose": form["purpose"],
                "anchor": form.get("expires_after[anchor]"),
                "seconds": form.get("expires_after[seconds]"),
                "filename": upload.filename,
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_length": int(request.headers["content-length"]),
                "auth_ok": request.headers["authorization"] == f"Bearer {API_KEY}",
            }
        )
        await form.close()
        if fail_first_with is not None and len(received) == 1:
            body = {"error": {"message": "nope", "type": "x", "param": None, "code": None}}
            return JSONResponse(body, status_code=fail_first_with)
        return JSONResponse(
            {"id": "file-abc", "object": "file", "bytes": len(data), "filename": upload.filename, "purpose": "batch"}
        )

    return Starlette(routes=[Route("/v1/files", create_file, methods=["POST"])])


JSONL = b'{"custom_id":"g-1","method":"POST","url":"/v1/images/generations","body":{}}\n' * 40_000
JSONL_SHA256 = hashlib.sha256(JSONL).hexdigest()  # ~3 MB: several upload chunks


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "shard-0001.jsonl"
    path.write_bytes(JSONL)
    return path


async def test_upload_streams_multipart(make_client: MakeClient, jsonl: Path) -> None:
    received: list[dict[str, object]] = []
    transport = httpx.ASGITransport(app=_upload_app(None, received))
    async with make_client(transport=transport) as client:
        result = await client.upload_file(jsonl, purpose="batch", expires_after_s=86_400)
    assert result.id == "file-abc"
    assert result.bytes == len(JSONL)
    [got] = received
    assert got["purpose"] == "batch"
    assert (got["anchor"], got["seconds"]) == ("created_at", "86400")
    assert got["filename"] == "shard-0001.jsonl"
    assert got["sha256"] == JSONL_SHA256
    assert got["auth_ok"] is True
    assert client.stats.requests[("POST", "/files")] == 1


async def test_upload_filename_override_and_no_expiry(make_client: MakeClient, jsonl: Path) -> None:
    received: list[dict[str, object]] = []
    transport = httpx.ASGITransport(app=_upload_app(None, received))
    async with make_client(transport=transport) as client:
        await client.upload_file(jsonl, purpose="batch", filename='we"ird name.jsonl')
    assert received[0]["anchor"] is None
    assert received[0]["filename"] == "we%22ird name.jsonl"


async def test_upload_retried_on_429_resends_whole_body(make_client: MakeClient, jsonl: Path, clock: FakeClock) -> None:
    received: list[dict[str, object]] = []
    transport = httpx.ASGITransport(app=_upload_app(429, received))
    async with make_client(transport=transport) as client:
        await client.upload_file(jsonl, purpose="batch")
    assert len(received) == 2
    assert received[0]["sha256"] == received[1]["sha256"] == JSONL_SHA256
    assert clock.sleeps == [0.5]


async def test_upload_not_retried_on_500(make_client: MakeClient, jsonl: Path, clock: FakeClock) -> None:
    received: list[dict[str, object]] = []
    transport = httpx.ASGITransport(app=_upload_app(500, received))
    async with make_client(transport=transport) as client:
        with pytest.raises(ServerError):
            await client.upload_file(jsonl, purpose="batch")
    assert len(received) == 1
    assert clock.sleeps == []


# ---------------------------------------------------------------------------------- rate-limit pacing


async def test_rate_limit_headers_pace_next_request(make_client: MakeClient, clock: FakeClock) -> None:
    def limits(remaining: str, reset: str) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": remaining,
            "x-ratelimit-reset-requests": reset,
        }

    headers = [limits("0", "6m0s"), limits("59", "1s"), {}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=batch("b"), headers=headers.pop(0))

    async with make_client(handler) as client:
        await client.retrieve_batch("b")
        snap = client.rate_limit
        assert (snap.limit_requests, snap.remaining_requests, snap.reset_requests_s) == (60, 0, 360.0)
        assert snap.reset_at_s == clock.now_s + 360.0
        assert clock.sleeps == []
        await client.retrieve_batch("b")  # waits for the reset, capped at max_retry_after_s (120 s)
        assert clock.sleeps == [120.0]
        assert client.rate_limit.remaining_requests == 59
        await client.retrieve_batch("b")  # remaining > 0: no wait; no headers: snapshot kept
        assert clock.sleeps == [120.0]
        assert client.rate_limit.remaining_requests == 59
    assert client.stats.rate_limit_waits == 1


async def test_rate_limit_short_reset_waits_exactly(make_client: MakeClient, clock: FakeClock) -> None:
    headers = [{"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, {}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=batch("b"), headers=headers.pop(0))

    async with make_client(handler) as client:
        await client.retrieve_batch("b")
        await client.retrieve_batch("b")
    assert clock.sleeps == [pytest.approx(0.02)]


# ------------------------------------------------------------------------------------ secrets in output


async def test_api_key_absent_from_errors_and_logs(make_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/unauth"):
            return err(401, "Incorrect API key provided: sk-test-***c")
        if path.endswith("/flaky"):
            raise httpx.ConnectError("connection refused", request=request)
        if path.endswith("/content"):
            return httpx.Response(200, stream=CutStream(CONTENT, 10))
        return err(500)

    errors: list[ApiError] = []
    with structlog.testing.capture_logs() as logs:
        async with make_client(handler, retry=RetryPolicy(max_retries=2)) as client:
            for batch_id in ("unauth", "flaky", "down"):
                try:
                    await client.retrieve_batch(batch_id)
                except ApiError as exc:
                    errors.append(exc)
            try:
                await client.create_batch(input_file_id="f", endpoint="/v1/images/generations")
            except ApiError as exc:
                errors.append(exc)
            try:
                await _read(client, 0)
            except ApiError as exc:
                errors.append(exc)
    assert [type(e).__name__ for e in errors] == [
        "AuthenticationError",
        "ApiConnectionError",
        "ServerError",
        "ServerError",
        "ApiConnectionError",
    ]
    assert isinstance(errors[0], AuthenticationError)
    for error in errors:
        for text in (str(error), repr(error), repr(vars(error)), repr(error.args)):
            assert API_KEY not in text
    retries = [entry for entry in logs if entry["event"] == "api.retry"]
    assert len(retries) == 4  # flaky x2, down x2; never the create
    assert {entry["route"] for entry in retries} == {"/batches/{batch_id}"}
    assert [entry["status"] for entry in retries] == [None, None, 500, 500]
    assert [entry["attempt"] for entry in retries] == [1, 2, 1, 2]
    assert all("delay_s" in entry for entry in retries)
    assert API_KEY not in repr(logs)
    assert "authorization" not in repr(logs).lower()


@pytest.mark.parametrize("cycle", [["b1"], ["b1", "b2"]])
async def test_a_list_cursor_that_repeats_or_cycles_is_a_protocol_error_not_a_loop(
    make_client: MakeClient, cycle: list[str]
) -> None:
    """A gateway that answers every page with the same (or a cycling) cursor: the walk stops with an error after
    the cursor comes round again, instead of listing forever."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        last = cycle[(calls - 1) % len(cycle)]
        body = {"object": "list", "data": [batch(last, created_at=10_000)], "has_more": True, "last_id": last}
        return httpx.Response(200, json=body)

    async with make_client(handler) as client:
        with pytest.raises(ApiProtocolError, match="cursor repeats"):
            _ = [b.id async for b in client.iter_batches(limit=100)]
        assert client.stats.cursor_cycles == 1
        poller = Poller(client)
        with pytest.raises(ApiProtocolError, match="cursor repeats"):
            await poller.poll({"batch_elsewhere": 1.0})
    assert calls <= 2 * (len(cycle) + 1)
