"""The emulator's HTTP service: Files, Batches and the direct Images routes under ``/v1`` (Starlette).

Every response carries ``x-request-id`` and the six ``x-ratelimit-*`` headers. In front of the routes, one
ASGI layer does, in order: auth (401), the requests-per-minute limit (429), injected HTTP faults
(429/500/503), injected latency; then it logs ``method path status duration_ms`` (never headers).

Shapes are the SPEC's: ``OpenAIFile``, ``ListFilesResponse``, ``DeleteFileResponse``, ``Batch``,
``ListBatchesResponse``, ``ImagesResponse``, ``Model``, ``ListModelsResponse``, ``ErrorResponse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchpipe.domain import spec
from batchpipe.emulator.config import EmulatorConfig
from batchpipe.emulator.faults import FaultInjector, server_error_body
from batchpipe.emulator.lineup import model_not_found_body, model_object
from batchpipe.emulator.processor import BatchProcessor, CancelRefused, ExecutorLike
from batchpipe.emulator.ratelimit import RateDecision, RateLimiter, rate_limit_body
from batchpipe.emulator.state import FileRecord, StateStore, new_id

__all__ = ["MISSING_KEY_MESSAGE", "EmulatorService", "api_error", "create_app", "route_name"]

log = structlog.get_logger("batchpipe.emulator")

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username. You can obtain an API key "
    "from https://platform.openai.com/account/api-keys."
)
UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
#: Default expiry of purpose=batch uploads (SPEC ``FileExpirationAfter`` description: 30 days).
BATCH_FILE_DEFAULT_EXPIRY_S = 30 * 86_400
_CHUNK_BYTES = 64 * 1024

_ROUTE_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/v1/files$"), "files.create"),
    ("GET", re.compile(r"^/v1/files$"), "files.list"),
    ("GET", re.compile(r"^/v1/files/[^/]+$"), "files.retrieve"),
    ("DELETE", re.compile(r"^/v1/files/[^/]+$"), "files.delete"),
    ("GET", re.compile(r"^/v1/files/[^/]+/content$"), "files.content"),
    ("POST", re.compile(r"^/v1/batches$"), "batches.create"),
    ("GET", re.compile(r"^/v1/batches$"), "batches.list"),
    ("GET", re.compile(r"^/v1/batches/[^/]+$"), "batches.retrieve"),
    ("POST", re.compile(r"^/v1/batches/[^/]+/cancel$"), "batches.cancel"),
    ("POST", re.compile(r"^/v1/images/generations$"), "images.generations"),
    ("POST", re.compile(r"^/v1/images/edits$"), "images.edits"),
    ("GET", re.compile(r"^/v1/models$"), "models.list"),
    ("GET", re.compile(r"^/v1/models/[^/]+$"), "models.retrieve"),
)


def route_name(method: str, path: str) -> str | None:
    """The route name (``config.ROUTES``) of ``method path``, or None for an unknown route."""
    for route_method, pattern, name in _ROUTE_PATTERNS:
        if method == route_method and pattern.match(path):
            return name
    return None


class JSONBody(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content)


def api_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error response with the SPEC ``ErrorResponse`` body ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONBody(body, status_code=status, headers=headers)


@dataclass
class EmulatorService:
    """Everything the routes share. ``processor`` and ``executor`` exist while the app is running."""

    config: EmulatorConfig
    store: StateStore
    faults: FaultInjector
    limiter: RateLimiter
    executor_factory: Callable[[EmulatorConfig], ExecutorLike]
    clock: Callable[[], float] = time.time
    executor: ExecutorLike | None = None
    processor: BatchProcessor | None = field(default=None)

    def require_processor(self) -> BatchProcessor:
        """The running processor (the lifespan has started)."""
        if self.processor is None:
            raise RuntimeError("emulator not started")
        return self.processor

    def require_executor(self) -> ExecutorLike:
        """The running image executor."""
        if self.executor is None:
            raise RuntimeError("emulator not started")
        return self.executor


def _service(request: Request) -> EmulatorService:
    service: EmulatorService = request.app.state.service
    return service


# ------------------------------------------------------------------------ files
def _parse_expires_after(form_get: Callable[[str], object], prefix: str) -> tuple[int | None, Response | None]:
    """Read ``prefix[anchor]``/``prefix[seconds]`` (as the SDK sends them) → seconds, or an error."""
    anchor = form_get(f"{prefix}[anchor]")
    seconds = form_get(f"{prefix}[seconds]")
    if anchor is None and seconds is None:
        return None, None
    if anchor != "created_at":
        return None, api_error(
            400,
            f"Invalid value for '{prefix}.anchor': {anchor!r}. Supported values are: 'created_at'.",
            param=f"{prefix}.anchor",
            code="invalid_value",
        )
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    if not spec.FILE_EXPIRY_MIN_S <= value <= spec.FILE_EXPIRY_MAX_S:
        return None, api_error(
            400,
            f"Invalid '{prefix}.seconds': must be an integer between {spec.FILE_EXPIRY_MIN_S} and "
            f"{spec.FILE_EXPIRY_MAX_S}.",
            param=f"{prefix}.seconds",
            code="integer_out_of_range",
        )
    return value, None


async def create_file(request: Request) -> Response:
    """``POST /v1/files`` (multipart ``file``, ``purpose``, optional ``expires_after[...]``) → ``OpenAIFile``.

    The upload is spooled to disk by Starlette's form parser and copied to the state directory in chunks.
    Batch inputs must be ``.jsonl`` and at most ``spec.EMULATOR_MAX_BATCH_FILE_BYTES``.
    """
    service = _service(request)
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception:
        return api_error(400, "Could not parse multipart form data.", param="file")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(form.close)
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose is None:
            return api_error(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            return api_error(
                400,
                f"Invalid value for 'purpose': {purpose!r}. Supported values are: "
                + ", ".join(f"'{p}'" for p in sorted(UPLOAD_PURPOSES))
                + ".",
                param="purpose",
                code="invalid_value",
            )
        if not isinstance(upload, UploadFile):
            return api_error(
                400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
            )
        expires_s, problem = _parse_expires_after(form.get, "expires_after")
        if problem is not None:
            return problem
        filename = upload.filename or "upload"
        size = upload.size
        if size is None:
            upload.file.seek(0, 2)
            size = upload.file.tell()
        if purpose == "batch":
            if not filename.endswith(".jsonl"):
                return api_error(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
            if size > spec.EMULATOR_MAX_BATCH_FILE_BYTES:
                return api_error(
                    400,
                    f"File is too large: {size} bytes is larger than the "
                    f"{spec.EMULATOR_MAX_BATCH_FILE_BYTES} maximum for batch input files.",
                    param="file",
                )
        file_id = new_id("file-", 22)
        target = service.store.file_path(file_id)
        upload.file.seek(0)
        await run_in_threadpool(_copy_to, upload.file, target)
        now = int(service.clock())
        if expires_s is None and purpose == "batch":
            expires_s = BATCH_FILE_DEFAULT_EXPIRY_S
        record = FileRecord(
            file_id,
            Path(filename).name,
            purpose,
            target.stat().st_size,
            now,
            None if expires_s is None else now + expires_s,
        )
        service.store.add_file(record)
        return JSONBody(record.to_api())
    raise AssertionError("unreachable")  # pragma: no cover


def _copy_to(source: Any, target: Path) -> None:
    with target.open("wb") as dst:
        shutil.copyfileobj(source, dst, _CHUNK_BYTES * 16)


def _file_not_found(file_id: str) -> Response:
    return api_error(404, f"No such File object: {file_id}", param="id")


async def list_files(request: Request) -> Response:
    """``GET /v1/files?purpose&limit&order&after`` → ``ListFilesResponse`` (limit 1..10,000, default 10k)."""
    service = _service(request)
    params = request.query_params
    raw_order = params.get("order", "desc")
    if raw_order not in ("asc", "desc"):
        return api_error(400, f"Invalid value for 'order': {raw_order!r}.", param="order", code="invalid_value")
    order: Literal["asc", "desc"] = "asc" if raw_order == "asc" else "desc"
    limit, problem = _limit(params.get("limit"), default=10_000, maximum=10_000)
    if problem is not None:
        return problem
    records, has_more = service.store.list_files(
        purpose=params.get("purpose"),
        limit=limit,
        order=order,
        after=params.get("after"),
    )
    data = [r.to_api() for r in records]
    return JSONBody(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


def _limit(raw: str | None, *, default: int, maximum: int) -> tuple[int, Response | None]:
    if raw is None:
        return default, None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        return 0, api_error(
            400,
            f"Invalid 'limit': {raw!r}. Expected an integer between 1 and {maximum}.",
            param="limit",
            code="integer_out_of_range",
        )
    return value, None


async def retrieve_file(request: Request) -> Response:
    """``GET /v1/files/{file_id}`` → ``OpenAIFile`` or 404."""
    file_id = request.path_params["file_id"]
    record = _service(request).store.get_file(file_id)
    return _file_not_found(file_id) if record is None else JSONBody(record.to_api())


async def delete_file(request: Request) -> Response:
    """``DELETE /v1/files/{file_id}`` → ``DeleteFileResponse`` or 404."""
    file_id = request.path_params["file_id"]
    if not _service(request).store.delete_file(file_id):
        return _file_not_found(file_id)
    return JSONBody({"id": file_id, "object": "file", "deleted": True})


class _FileStream(Response):
    """Streams ``path[start:end]`` (``end`` defaults to the file's ``size``) from disk in chunks; with
    ``cut_after`` set, sends that many body bytes and then drops the connection (the ASGI app returns without
    finishing the response), or, with ``drop`` False, ends the body there normally.

    ``send_length`` False leaves out Content-Length (the server then frames the body as chunked).
    ``garble_at``: the body byte at this offset is sent as ``~`` (an unreadable-download fault).
    """

    def __init__(
        self,
        path: Path,
        *,
        start: int,
        size: int,
        status: int,
        cut_after: int | None,
        end: int | None = None,
        send_length: bool = True,
        drop: bool = True,
        garble_at: int | None = None,
    ) -> None:
        end = size if end is None else end
        headers = {"accept-ranges": "bytes"}
        if send_length:
            headers["content-length"] = str(end - start)
        if status == 206:
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        super().__init__(status_code=status, headers=headers, media_type="application/octet-stream")
        if not send_length:  # Response adds "content-length: 0" for its own (empty) body
            self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._path = path
        self._start = start
        self._end = end
        self._cut_after = cut_after
        self._drop = drop
        self._garble_at = garble_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send headers, then chunks; finish normally unless cut."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        sent = 0
        with self._path.open("rb") as fh:
            fh.seek(self._start)
            while True:
                chunk = await run_in_threadpool(fh.read, min(_CHUNK_BYTES, self._end - self._start - sent))
                if not chunk:
                    break
                if self._garble_at is not None and sent <= self._garble_at < sent + len(chunk):
                    at = self._garble_at - sent
                    chunk = chunk[:at] + b"~" + chunk[at + 1 :]
                if self._cut_after is not None and sent + len(chunk) >= self._cut_after:
                    head = chunk[: self._cut_after - sent]
                    if head:
                        await send({"type": "http.response.body", "body": head, "more_body": True})
                    if not self._drop:
                        break
                    log.info("emulator.fault.download_cut", after_bytes=self._cut_after)
                    return  # uvicorn closes the connection: the client sees a truncated body
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_RANGE = re.compile(r"^bytes=(\d+)-$")


async def file_content(request: Request) -> Response:
    """``GET /v1/files/{file_id}/content`` → the raw bytes, streamed from disk.

    Emulator extension (real-service support unverified): a single ``Range: bytes=N-`` answers 206 with
    ``Content-Range``; N past the end answers 416. Other Range forms are ignored (200, whole file).
    """
    service = _service(request)
    file_id = request.path_params["file_id"]
    record = service.store.get_file(file_id)
    path = service.store.file_path(file_id)
    if record is None or not path.exists():
        return _file_not_found(file_id)
    size = path.stat().st_size
    start, status = 0, 200
    match = _RANGE.match(request.headers.get("range", "").strip())
    if match:
        start = int(match.group(1))
        if start >= size and size > 0:
            return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
        status = 206
    if record.purpose == "batch_output":
        kind = service.faults.bad_download()
        if kind is not None:
            log.warning("emulator.fault.bad_download", file_id=file_id, kind=kind)
            return await _bad_download(path, start=start, size=size, status=status, kind=kind)
    return _FileStream(path, start=start, size=size, status=status, cut_after=service.faults.download_cut_after())


#: The body of an unreadable download of kind ``html``: a CDN's error page, served with 200.
BAD_DOWNLOAD_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>"
    b"\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


def _cut_point(path: Path, start: int, size: int) -> int:
    """Where a ``short*`` download of ``path[start:size]`` stops: half the body, moved back one byte when that
    lands just after a newline so the cut is always mid-line (0 for an empty body)."""
    cut = (size - start) // 2
    if cut > 0:
        with path.open("rb") as fh:
            fh.seek(start + cut - 1)
            if fh.read(1) == b"\n":
                cut -= 1
    return cut


def _garbled_offset(path: Path, start: int, size: int) -> int | None:
    """The offset (from ``start``) of the line a ``garbled_line`` download breaks: the first line starting after
    the body's middle byte, else the first line; None for an empty body."""
    if size <= start:
        return None
    with path.open("rb") as fh:
        fh.seek(start + (size - start) // 2)
        fh.readline()
        offset = fh.tell() - start
    return offset if start + offset < size else 0


async def _bad_download(path: Path, *, start: int, size: int, status: int, kind: str) -> Response:
    """The response of an unreadable download of ``path[start:size]`` (``config.BAD_DOWNLOAD_KINDS``): ``html`` and
    ``json_error`` answer 200 whatever was asked; the others keep ``status`` (206 with ``Content-Range`` for a
    ``Range`` request, describing the bytes actually sent for ``short``)."""
    if kind == "html":
        return Response(BAD_DOWNLOAD_HTML, status_code=200, media_type="text/html")
    if kind == "json_error":
        return JSONBody(server_error_body(500), status_code=200)
    if kind == "garbled_line":
        offset = await run_in_threadpool(_garbled_offset, path, start, size)
        return _FileStream(path, start=start, size=size, status=status, cut_after=None, garble_at=offset)
    cut = await run_in_threadpool(_cut_point, path, start, size)
    if kind == "short":
        return _FileStream(path, start=start, size=size, end=start + cut, status=status, cut_after=None)
    return _FileStream(
        path, start=start, size=size, status=status, cut_after=cut, send_length=False, drop=kind == "cut_no_length"
    )


# ---------------------------------------------------------------------- batches
async def _json_body(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None, api_error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON.)",
        )
    if not isinstance(body, dict):
        return None, api_error(400, "The request body must be a JSON object.")
    return body, None


_CREATE_BATCH_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})


def _check_metadata(metadata: object) -> Response | None:
    """SPEC ``Metadata``: null or up to 16 string pairs, keys <= 64 chars, values <= 512 chars."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return api_error(400, "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type")
    if len(metadata) > spec.METADATA_MAX_PAIRS:
        return api_error(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most "
            f"{spec.METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > spec.METADATA_MAX_KEY_CHARS:
            return api_error(
                400,
                f"Invalid 'metadata': key {key[:20]!r}... is longer than {spec.METADATA_MAX_KEY_CHARS} characters.",
                param="metadata",
                code="invalid_value",
            )
        if not isinstance(value, str):
            return api_error(
                400,
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > spec.METADATA_MAX_VALUE_CHARS:
            return api_error(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{spec.METADATA_MAX_VALUE_CHARS}, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return None


async def create_batch(request: Request) -> Response:
    """``POST /v1/batches`` (SPEC ``CreateBatchRequest``) → ``Batch`` in ``validating``.

    Request-field problems answer 400; problems with the file's content make the created batch fail.
    """
    service = _service(request)
    body, problem = await _json_body(request)
    if problem is not None or body is None:
        return problem or api_error(400, "Empty body.")
    for key in body:
        if key not in _CREATE_BATCH_FIELDS:
            return api_error(400, f"Unrecognized request argument supplied: {key}", param=key, code="unknown_parameter")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if key not in body:
            return api_error(400, f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
    if not isinstance(body["input_file_id"], str) or not body["input_file_id"]:
        return api_error(400, "Invalid 'input_file_id': expected a string.", param="input_file_id", code="invalid_type")
    if body["endpoint"] not in spec.BATCH_ENDPOINTS:
        return api_error(
            400,
            f"Invalid value for 'endpoint': {body['endpoint']!r}. Supported values are: "
            + ", ".join(f"'{e}'" for e in sorted(spec.BATCH_ENDPOINTS))
            + ".",
            param="endpoint",
            code="invalid_value",
        )
    if body["completion_window"] != spec.COMPLETION_WINDOW:
        return api_error(
            400,
            f"Invalid value for 'completion_window': {body['completion_window']!r}. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    problem = _check_metadata(body.get("metadata"))
    if problem is not None:
        return problem
    expiry_s: int | None = None
    expires_after = body.get("output_expires_after")
    if expires_after is not None:
        if not isinstance(expires_after, dict):
            return api_error(
                400,
                "Invalid type for 'output_expires_after'.",
                param="output_expires_after",
                code="invalid_type",
            )
        expiry_s, problem = _parse_expires_after(
            lambda key: expires_after.get(key.split("[")[1].rstrip("]")), "output_expires_after"
        )
        if problem is not None:
            return problem
    record = service.require_processor().create(
        input_file_id=body["input_file_id"],
        endpoint=body["endpoint"],
        metadata=body.get("metadata"),
        output_expires_after_s=expiry_s,
    )
    mode = service.faults.ambiguous_create()
    if mode is not None:
        return await _ambiguous_create(service, record.id, mode)
    return JSONBody(service.require_processor().render(record))


#: ``ErrorResponse`` of a gateway that gave up waiting (an ambiguous create in mode ``"504"``).
GATEWAY_TIMEOUT_BODY: dict[str, object] = {
    "error": {"message": "Gateway timeout.", "type": "server_error", "param": None, "code": None}
}


class _DroppedResponse(Response):
    """A 200 whose status line and headers (``content-length: 1024``) are sent, then the connection closes before
    any body byte: the client cannot tell whether the request took effect."""

    def __init__(self) -> None:
        super().__init__(status_code=200, headers={"content-length": "1024"}, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers only (the ASGI app returns without finishing the response)."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})


async def _ambiguous_create(service: EmulatorService, batch_id: str, mode: str) -> Response:
    """The answer to a create that succeeded but must look failed (``FaultConfig.ambiguous_create_*``): after
    ``ambiguous_create_delay_s``, a 500 ``server_error``, a 504 :data:`GATEWAY_TIMEOUT_BODY`, or a dropped
    connection (``mode`` ``"500"``, ``"504"``, ``"drop"``)."""
    delay = service.config.faults.ambiguous_create_delay_s
    if delay:
        await asyncio.sleep(delay)
    log.warning("emulator.fault.ambiguous_create", batch_id=batch_id, mode=mode)
    if mode == "504":
        return JSONBody(GATEWAY_TIMEOUT_BODY, status_code=504)
    if mode == "drop":
        return _DroppedResponse()
    return JSONBody(server_error_body(500), status_code=500)


def _batch_not_found(batch_id: str) -> Response:
    return api_error(404, f"No batch found with id '{batch_id}'.", param="batch_id")


async def retrieve_batch(request: Request) -> Response:
    """``GET /v1/batches/{batch_id}`` → ``Batch`` or 404."""
    processor = _service(request).require_processor()
    batch_id = request.path_params["batch_id"]
    record = processor.get(batch_id)
    return _batch_not_found(batch_id) if record is None else JSONBody(processor.render(record))


async def list_batches(request: Request) -> Response:
    """``GET /v1/batches?after&limit`` → ``ListBatchesResponse``, newest first (limit 1..100, default 20)."""
    processor = _service(request).require_processor()
    limit, problem = _limit(request.query_params.get("limit"), default=20, maximum=100)
    if problem is not None:
        return problem
    records, has_more = processor.list_batches(after=request.query_params.get("after"), limit=limit)
    data = [processor.render(r) for r in records]
    return JSONBody(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


async def cancel_batch(request: Request) -> Response:
    """``POST /v1/batches/{batch_id}/cancel`` → ``Batch`` (``cancelling``); 404 unknown; 409 not cancellable."""
    processor = _service(request).require_processor()
    batch_id = request.path_params["batch_id"]
    try:
        record = processor.cancel(batch_id)
    except CancelRefused as exc:
        return api_error(409, str(exc))
    return _batch_not_found(batch_id) if record is None else JSONBody(processor.render(record))


# ----------------------------------------------------------------------- images
async def _image_route(request: Request, endpoint: str) -> Response:
    service = _service(request)
    if not request.headers.get("content-type", "").startswith("application/json"):
        return api_error(
            400,
            "The emulator accepts only the JSON request body on this route (EditImageBodyJsonParam / "
            "CreateImageRequest); multipart uploads are not emulated.",
        )
    body, problem = await _json_body(request)
    if problem is not None or body is None:
        return problem or api_error(400, "Empty body.")
    outcome = await service.require_executor().execute(endpoint, body, open_file=service.store.read_file_bytes)
    return JSONBody(outcome.body, status_code=outcome.status_code)


async def image_generations(request: Request) -> Response:
    """``POST /v1/images/generations`` (JSON ``CreateImageRequest``) → ``ImagesResponse`` or an error."""
    return await _image_route(request, "/v1/images/generations")


async def image_edits(request: Request) -> Response:
    """``POST /v1/images/edits`` (JSON ``EditImageBodyJsonParam``) → ``ImagesResponse`` or an error."""
    return await _image_route(request, "/v1/images/edits")


# ----------------------------------------------------------------------- models
async def list_models(request: Request) -> Response:
    """``GET /v1/models`` → SPEC ``ListModelsResponse`` ``{"object": "list", "data": [Model...]}``: every row of
    the emulator's model table, shut-down ones included (their ``shutdown_date`` says so), sorted by id."""
    table = _service(request).config.models
    return JSONBody({"object": "list", "data": [model_object(f) for f in sorted(table, key=lambda f: f.name)]})


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{model}`` → SPEC ``Model`` (shut-down rows included), or 404 ``model_not_found`` with
    the API's message for a model the table does not hold."""
    name = request.path_params["model"]
    facts = _service(request).config.models.get(name)
    if facts is None:
        return JSONBody(model_not_found_body(name), status_code=404)
    return JSONBody(model_object(facts))


# ------------------------------------------------------------------- front door
class FrontDoor:
    """ASGI layer: request id, auth, rate limit, injected faults and latency, rate-limit headers, logging."""

    def __init__(self, app: ASGIApp, service: EmulatorService) -> None:
        self._app = app
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one HTTP request (lifespan and other scopes pass through)."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        request_id = "req_" + secrets.token_hex(16)
        status_box = [0]
        decision: RateDecision | None = None

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if decision is not None:
                    headers.extend((k.encode(), v.encode()) for k, v in decision.headers().items())
                message = {**message, "headers": headers}
            await send(message)

        try:
            headers = dict(scope.get("headers", []))
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                await api_error(401, MISSING_KEY_MESSAGE)(scope, receive, send_wrapped)
                return
            name = route_name(method, path)
            decision = self._service.limiter.hit()
            if not decision.allowed:
                body = rate_limit_body(decision, self._service.config.org)
                await JSONBody(body, status_code=429)(scope, receive, send_wrapped)
                return
            injected = self._service.faults.http_status(name) if name else None
            latency = self._service.faults.latency_s()
            if latency:
                await asyncio.sleep(latency)
            if injected == 429:
                forced = RateDecision(
                    allowed=False,
                    limit=decision.limit,
                    remaining=0,
                    reset_s=1.0,
                    used=decision.limit + 1,
                    tokens_limit=decision.tokens_limit,
                    tokens_remaining=decision.tokens_remaining,
                    tokens_reset_s=decision.tokens_reset_s,
                )
                decision = forced
                body = rate_limit_body(forced, self._service.config.org)
                await JSONBody(body, status_code=429)(scope, receive, send_wrapped)
                return
            if injected is not None:
                await JSONBody(server_error_body(injected), status_code=injected)(scope, receive, send_wrapped)
                return
            await self._app(scope, receive, send_wrapped)
        finally:
            log.info(
                "emulator.request",
                method=method,
                path=path,
                status=status_box[0],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                request_id=request_id,
            )


async def _not_found(request: Request, exc: Exception) -> Response:
    return api_error(404, f"Invalid URL ({request.method} {request.url.path})")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return api_error(405, f"Method not allowed ({request.method} {request.url.path})")


def create_app(
    config: EmulatorConfig,
    *,
    state_dir: Path,
    executor_factory: Callable[[EmulatorConfig], ExecutorLike],
    clock: Callable[[], float] = time.time,
) -> tuple[ASGIApp, EmulatorService]:
    """Build the ASGI app and its shared service over the state in ``state_dir``.

    The app's lifespan creates the executor (``executor_factory(config)``) and the batch processor, and
    resumes unfinished batches; on shutdown it stops the batch tasks (state stays on disk) and closes all.
    Returns ``(asgi_app, service)``.
    """
    store = StateStore(state_dir, clock=clock)
    service = EmulatorService(
        config=config,
        store=store,
        faults=FaultInjector(config.faults),
        limiter=RateLimiter(config.rpm_limit, config.tpm_limit, clock=time.monotonic, window_s=config.rate_window_s),
        executor_factory=executor_factory,
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        service.executor = executor_factory(config)
        service.processor = BatchProcessor(
            store=store, config=config, executor=service.executor, faults=service.faults, clock=clock
        )
        await service.processor.resume_all()
        try:
            yield
        finally:
            await service.processor.aclose()
            await service.executor.aclose()
            store.close()

    routes = [
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
        Route("/v1/images/generations", image_generations, methods=["POST"]),
        Route("/v1/images/edits", image_edits, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model}", retrieve_model, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    app.state.service = service
    return FrontDoor(app, service), service
