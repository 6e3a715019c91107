"""A hostile OpenAI-compatible Files + Batches server, independent of batchpipe (it imports nothing from it).

It behaves the way real services, gateways and proxies sometimes do (issue 11): a list that lags behind an
ambiguous create, downloads that are not the JSONL they claim to be, odd field types and statuses, waits that
never end, bad images inside 200 lines, and error text that echoes the bearer token. One :class:`Scenario`
selects the behaviour; :class:`HostileState` holds every object and counts everything, and the test reads it
in-process (there is deliberately no HTTP route that exposes the counters).

Only the routes ``batchpipe run`` needs exist, all under ``/v1``: models (retrieve), files (create, list,
retrieve, content, delete), batches (create, list, retrieve, cancel). Batches move on with wall time:
``validating`` → ``in_progress`` → ``completed`` within ``Scenario.complete_after_s``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "BAD_DOWNLOADS",
    "IMAGE_FAULTS",
    "HostileApp",
    "HostileState",
    "Scenario",
    "create_app",
    "jpeg_bytes",
    "png_bytes",
]

#: Download faults (scenario 2). ``html``/``json_error``: a 200 whose body is an error page; ``short``: whole
#: lines only, fewer than the file's ``bytes``, with a matching Content-Length; ``truncated``: no Content-Length
#: (chunked), cut in the middle of a line, response ended cleanly (a proxy that lost its upstream);
#: ``cut``: no Content-Length, connection dropped mid-line; ``bad_line``: one line replaced by garbage of the
#: same length, so the size still matches.
BAD_DOWNLOADS = ("html", "json_error", "short", "truncated", "cut", "bad_line")
#: Image faults in 200 lines (scenario 5).
IMAGE_FAULTS = ("nonstrict_b64", "empty_b64", "not_image", "wrong_format", "duplicate_line")

_TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _image_bytes(fmt: str, colour: tuple[int, int, int], size: int = 1024) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def png_bytes(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real 1024x1024 PNG (about 3 KB)."""
    return _image_bytes("PNG", colour)


def jpeg_bytes(colour: tuple[int, int, int] = (30, 30, 200)) -> bytes:
    """A real 1024x1024 JPEG."""
    return _image_bytes("JPEG", colour)


def _nonstrict_b64(data: bytes) -> str:
    """URL-safe alphabet where the standard one is expected: a lenient decoder drops ``-``/``_`` and returns
    shifted garbage that still starts with the PNG magic. Guaranteed to contain at least one such character."""
    text = base64.b64encode(data).decode()
    if "+" not in text and "/" not in text:
        text = text[:40] + "_" + text[40:]
    return text.replace("+", "-").replace("/", "_")


@dataclass
class Scenario:
    """What the server does wrong. Defaults: a faithful, fast server."""

    name: str = "faithful"
    complete_after_s: float = 0.4
    # -- 1. ambiguous creates and list lag
    create_fault: str | None = None  # "500" | "drop" | "timeout" (batch IS created) | "503_forever" (never created)
    create_faults: int = 1  # how many creates get the fault; -1 = all
    list_lag_s: float = 0.0  # a faulted create's batch is absent from GET /v1/batches for this long
    lag_all: bool = False  # every new batch lags in the list, not only faulted ones
    timeout_hang_s: float = 2.0  # "timeout": hang this long, then 504 from the "gateway"
    # -- 2. downloads
    bad_download: str | None = None  # one of BAD_DOWNLOADS
    bad_downloads: int = -1  # first K content downloads of output/error files are bad; -1 = always
    # -- 3. odd fields
    usage_kind: str | None = None  # "list" | "string" | "huge" (in every line and in the Batch object)
    created_at_string: bool = False
    unknown_status: str | None = None  # e.g. "throttled": shown instead of in_progress ...
    unknown_status_s: float = 1.5  # ... for this long
    backwards: bool = False  # completed → in_progress (on the 2nd read after completion) → completed
    # -- 4. unbounded waits
    list_cycle: str | None = None  # "repeat" (same last_id forever) | "cycle" (A, B, A, B ...)
    create_429_retry_after: int | None = None  # 429 with this retry-after on every create
    # -- 5. bad images
    image_fault: str | None = None  # one of IMAGE_FAULTS
    image_fault_every: int = 3  # lines 0, 3, 6 ... of each batch get the fault
    image_fault_batches: int = -1  # only the first K batches' lines; -1 = all
    # -- 6. secret echo
    echo_secret: str | None = None  # "line_errors" | "batch_errors"
    fail_every: int = 0  # with echo_secret="line_errors": every Nth line fails with an echoing message


@dataclass
class HostileState:
    """Every object and every counter; read by the test in-process."""

    scenario: Scenario
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    internal: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch_id → private facts
    outputs: set[str] = field(default_factory=set)  # ids of output and error files
    requests: Counter[str] = field(default_factory=Counter)  # "METHOD path-template" → count
    create_attempts: int = 0
    batches_created: int = 0
    batches_per_shard: Counter[str] = field(default_factory=Counter)  # metadata batchpipe_shard → created
    custom_id_batches: Counter[str] = field(default_factory=Counter)  # custom_id → batches created holding it
    emitted_ok: set[str] = field(default_factory=set)  # custom_ids with a 200 line in some output file
    emitted_err: set[str] = field(default_factory=set)  # custom_ids in some error file
    faulted: set[str] = field(default_factory=set)  # custom_ids whose 200 line carried an image fault
    downloads: Counter[str] = field(default_factory=Counter)  # file_id → content requests
    bad_served: int = 0
    collected_until: dict[str, int] = field(default_factory=dict)  # file_id → true bytes served from offset 0
    files_deleted: list[str] = field(default_factory=list)
    deleted_uncollected: list[str] = field(default_factory=list)  # output/error files deleted before fully served
    lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: int = 0

    def next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}_{self._seq:06d}{secrets.token_hex(4)}"

    def summary(self) -> dict[str, object]:
        return {
            "scenario": self.scenario.name,
            "create_attempts": self.create_attempts,
            "batches_created": self.batches_created,
            "batches_per_shard": dict(self.batches_per_shard),
            "custom_ids_in_2_batches": sorted(k for k, v in self.custom_id_batches.items() if v > 1),
            "downloads": dict(self.downloads),
            "bad_served": self.bad_served,
            "files_deleted": len(self.files_deleted),
            "deleted_uncollected": self.deleted_uncollected,
            "requests": dict(self.requests),
        }


# ------------------------------------------------------------------------------------------------ helpers


def _error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers={"x-request-id": "req_" + secrets.token_hex(8)})


def _ok(body: object, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={"x-request-id": "req_" + secrets.token_hex(8)})


def _state(request: Request) -> HostileState:
    state: HostileState = request.app.state.hostile
    return state


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ").strip()


def _usage(kind: str | None) -> object:
    if kind == "list":
        return [10, 20, 30]
    if kind == "string":
        return "plenty"
    if kind == "huge":
        big = 10**19
        return {
            "input_tokens": big,
            "input_tokens_details": {"text_tokens": big, "image_tokens": 0},
            "output_tokens": big,
            "output_tokens_details": {"image_tokens": big, "text_tokens": 0},
            "total_tokens": 2 * big,
        }
    return {
        "input_tokens": 12,
        "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
        "output_tokens": 272,
        "output_tokens_details": {"image_tokens": 272, "text_tokens": 0},
        "total_tokens": 284,
    }


# ----------------------------------------------------------------------------------------- batch lifecycle


def _run_batch(state: HostileState, batch_id: str) -> None:
    """Produce the output and error files of a batch that reached completion (once)."""
    sc = state.scenario
    inner = state.internal[batch_id]
    batch = state.batches[batch_id]
    ordinal = inner["ordinal"]
    faulty_batch = sc.image_fault is not None and (sc.image_fault_batches < 0 or ordinal < sc.image_fault_batches)
    ok_lines: list[bytes] = []
    err_lines: list[bytes] = []
    for index, line in enumerate(inner["lines"]):
        custom_id = line["custom_id"]
        body = line.get("body") or {}
        fmt = str(body.get("output_format") or "png")
        if sc.echo_secret == "line_errors" and sc.fail_every and index % sc.fail_every == 0:
            message = f"Invalid prompt for request authorised by Bearer {inner['token']} (key {inner['token']})"
            err_lines.append(
                json.dumps(
                    {
                        "id": state.next_id("batch_req"),
                        "custom_id": custom_id,
                        "response": {
                            "status_code": 400,
                            "request_id": "req_" + secrets.token_hex(8),
                            "body": {
                                "error": {
                                    "message": message,
                                    "type": "invalid_request_error",
                                    "param": "prompt",
                                    "code": "invalid_prompt",
                                }
                            },
                        },
                        "error": None,
                    }
                ).encode()
            )
            state.emitted_err.add(custom_id)
            continue
        image = jpeg_bytes() if fmt == "jpeg" else png_bytes()
        b64: str = base64.b64encode(image).decode()
        extra: list[str] = []
        if faulty_batch and index % sc.image_fault_every == 0:
            state.faulted.add(custom_id)
            if sc.image_fault == "nonstrict_b64":
                b64 = _nonstrict_b64(image)
            elif sc.image_fault == "empty_b64":
                b64 = ""
            elif sc.image_fault == "not_image":
                b64 = base64.b64encode(b"<html>upstream said no</html>" * 4).decode()
            elif sc.image_fault == "wrong_format":
                b64 = base64.b64encode(jpeg_bytes() if fmt != "jpeg" else png_bytes()).decode()
            elif sc.image_fault == "duplicate_line":
                other = jpeg_bytes((0, 160, 0)) if fmt == "jpeg" else png_bytes((0, 160, 0))
                extra.append(base64.b64encode(other).decode())
        for payload in [b64, *extra]:
            response_body = {
                "created": int(time.time()),
                "data": [{"b64_json": payload}],
                "background": "opaque",
                "output_format": fmt,
                "quality": body.get("quality", "low"),
                "size": body.get("size", "1024x1024"),
                "usage": _usage(sc.usage_kind),
            }
            ok_lines.append(
                json.dumps(
                    {
                        "id": state.next_id("batch_req"),
                        "custom_id": custom_id,
                        "response": {
                            "status_code": 200,
                            "request_id": "req_" + secrets.token_hex(8),
                            "body": response_body,
                        },
                        "error": None,
                    }
                ).encode()
            )
        state.emitted_ok.add(custom_id)
    now = int(time.time())
    total = len(inner["lines"])
    if ok_lines:
        batch["output_file_id"] = _store_file(state, b"\n".join(ok_lines) + b"\n", f"{batch_id}_output.jsonl", now)
    if err_lines:
        batch["error_file_id"] = _store_file(state, b"\n".join(err_lines) + b"\n", f"{batch_id}_error.jsonl", now)
    batch["request_counts"] = {"total": total, "completed": total - len(err_lines), "failed": len(err_lines)}
    batch["finalizing_at"] = now
    batch["completed_at"] = now
    if sc.usage_kind is not None:
        batch["usage"] = _usage(sc.usage_kind)


def _store_file(state: HostileState, content: bytes, filename: str, now: int, *, purpose: str = "batch_output") -> str:
    """Keep ``content`` as a file object; an output or error file (``purpose`` batch_output) is counted."""
    file_id = state.next_id("file")
    state.files[file_id] = {
        "id": file_id,
        "object": "file",
        "bytes": len(content),
        "created_at": now,
        "expires_at": now + 30 * 86_400,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    state.contents[file_id] = content
    if purpose == "batch_output":
        state.outputs.add(file_id)
    return file_id


def _view(state: HostileState, batch_id: str) -> dict[str, Any]:
    """The Batch object as this read sees it (advances its life with wall time; applies odd-field faults)."""
    sc = state.scenario
    batch = state.batches[batch_id]
    inner = state.internal[batch_id]
    age = time.monotonic() - inner["created_mono"]
    if batch["status"] not in _TERMINAL:
        if inner.get("fail_with_echo"):
            if age >= sc.complete_after_s:
                batch["status"] = "failed"
                batch["failed_at"] = int(time.time())
                token = inner["token"]
                batch["errors"] = {
                    "object": "list",
                    "data": [
                        {
                            "code": "invalid_request",
                            "message": f"Authorization 'Bearer {token}' may not create batches on this gateway",
                            "param": None,
                            "line": 1,
                        }
                    ],
                }
                batch["request_counts"] = {"total": len(inner["lines"]), "completed": 0, "failed": 0}
        elif age >= sc.complete_after_s + (sc.unknown_status_s if sc.unknown_status else 0.0):
            _run_batch(state, batch_id)
            batch["status"] = "completed"
        elif age >= sc.complete_after_s / 4:
            batch["status"] = "in_progress"
            batch["in_progress_at"] = batch["in_progress_at"] or int(time.time())
            if sc.unknown_status and age >= sc.complete_after_s / 2:
                batch["status"] = sc.unknown_status
    view = dict(batch)
    if batch["status"] == "completed" and sc.backwards:
        inner["reads_after_completion"] = inner.get("reads_after_completion", 0) + 1
        if inner["reads_after_completion"] == 2:
            view.update(status="in_progress", output_file_id=None, error_file_id=None, completed_at=None)
    if sc.created_at_string:
        view["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch["created_at"]))
    return view


# ------------------------------------------------------------------------------------------------- routes


async def retrieve_model(request: Request) -> Response:
    model = request.path_params["model"]
    return _ok({"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system", "shutdown_date": None})


async def create_file(request: Request) -> Response:
    state = _state(request)
    async with request.form() as form:
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose != "batch" or upload is None or isinstance(upload, str):
            return _error(400, "purpose must be 'batch' and file must be a file")
        content = await upload.read()
        filename = upload.filename
    file_id = _store_file(state, content, filename, int(time.time()), purpose="batch")
    return _ok(state.files[file_id])


async def list_files(request: Request) -> Response:
    state = _state(request)
    purpose = request.query_params.get("purpose")
    order = request.query_params.get("order", "desc")
    items = [f for f in state.files.values() if purpose is None or f["purpose"] == purpose]
    items.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order != "asc")
    after = request.query_params.get("after")
    if after:
        ids = [f["id"] for f in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(request.query_params.get("limit", "10000"))
    page = items[:limit]
    return _ok(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def retrieve_file(request: Request) -> Response:
    state = _state(request)
    file = state.files.get(request.path_params["file_id"])
    if file is None:
        return _error(404, f"No such File object: {request.path_params['file_id']}", code=None)
    return _ok(file)


async def delete_file(request: Request) -> Response:
    state = _state(request)
    file_id = request.path_params["file_id"]
    if state.files.pop(file_id, None) is None:
        return _error(404, f"No such File object: {file_id}")
    state.files_deleted.append(file_id)
    if file_id in state.outputs and state.collected_until.get(file_id, 0) < len(state.contents[file_id]):
        state.deleted_uncollected.append(file_id)
    return _ok({"id": file_id, "object": "file", "deleted": True})


def _served(state: HostileState, file_id: str, start: int, end: int) -> None:
    """Record that true bytes [start, end) of the file went out."""
    if start <= state.collected_until.get(file_id, 0):
        state.collected_until[file_id] = max(state.collected_until.get(file_id, 0), end)


class _RawBody:
    """An ASGI response that sends ``chunks`` without Content-Length, then either ends or drops the connection."""

    def __init__(self, chunks: list[bytes], *, drop: bool, status: int = 200, headers: dict[str, str]) -> None:
        self.chunks, self.drop, self.status, self.headers = chunks, drop, status, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.01)
        if self.drop:
            raise ConnectionAbortedError("hostile: dropping the connection mid-body")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def file_content(request: Request) -> Response | _RawBody:
    state = _state(request)
    sc = state.scenario
    file_id = request.path_params["file_id"]
    if file_id not in state.files:
        return _error(404, f"No such File object: {file_id}")
    content = state.contents[file_id]
    state.downloads[file_id] += 1
    is_output = file_id in state.outputs
    bad = (
        is_output
        and sc.bad_download is not None
        and (sc.bad_downloads < 0 or sum(state.downloads[f] for f in state.outputs) <= sc.bad_downloads)
    )
    hdr = {"x-request-id": "req_" + secrets.token_hex(8), "content-type": "application/octet-stream"}
    if bad:
        state.bad_served += 1
        kind = sc.bad_download
        if kind == "html":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"
            return Response(page, status_code=200, headers={**hdr, "content-type": "text/html"})
        if kind == "json_error":
            body = b'{"error": {"message": "upstream request timeout", "type": "server_error", "code": null}}'
            return Response(body, status_code=200, headers={**hdr, "content-type": "application/json"})
        lines = content.splitlines(keepends=True)
        if kind == "short":
            part = b"".join(lines[: max(1, len(lines) // 2)]) if len(lines) > 1 else content[: len(content) // 2]
            _served(state, file_id, 0, len(part))
            return Response(part, status_code=200, headers=hdr)
        if kind in ("truncated", "cut"):
            first = lines[0]
            part = first + (lines[1][: len(lines[1]) // 2] if len(lines) > 1 else b"")
            if len(lines) == 1:
                part = first[: len(first) // 2]
            _served(state, file_id, 0, len(part))
            pieces = [part[i : i + 4096] for i in range(0, len(part), 4096)]
            return _RawBody(pieces, drop=kind == "cut", headers=hdr)
        if kind == "bad_line":
            index = min(1, len(lines) - 1)
            _served(state, file_id, 0, len(b"".join(lines[:index])))  # the lines before the garbled one are true
            garbage = re.sub(rb"[^\n]", b"#", lines[index])
            lines[index] = b"<" + garbage[1:]
            return Response(b"".join(lines), status_code=200, headers=hdr)
    start = 0
    match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
    if match:
        start = int(match.group(1))
        if start >= len(content):
            return Response(b"", status_code=416, headers={**hdr, "content-range": f"bytes */{len(content)}"})
        _served(state, file_id, start, len(content))
        crange = f"bytes {start}-{len(content) - 1}/{len(content)}"
        return Response(content[start:], status_code=206, headers={**hdr, "content-range": crange})
    _served(state, file_id, 0, len(content))
    return Response(content, status_code=200, headers=hdr)


class _DropAfterHeaders:
    """200 headers announcing a body, a few bytes of it, then the connection is dropped."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"600")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id": "batch_', "more_body": True})
        raise ConnectionAbortedError("hostile: dropping the create response")


async def create_batch(request: Request) -> Response | _DropAfterHeaders:
    state = _state(request)
    sc = state.scenario
    token = _bearer(request)
    body = await request.json()
    state.create_attempts += 1
    attempt = state.create_attempts
    if sc.create_429_retry_after is not None:
        response = _error(429, "Rate limit reached for batches", type_="requests", code="rate_limit_exceeded")
        response.headers["retry-after"] = str(sc.create_429_retry_after)
        return response
    faulted = sc.create_fault is not None and (sc.create_faults < 0 or attempt <= sc.create_faults)
    if faulted and sc.create_fault == "503_forever":
        return _error(503, "The server is overloaded or not ready yet.", type_="server_error")
    input_file_id = body.get("input_file_id")
    if input_file_id not in state.files:
        return _error(404, f"No such File object: {input_file_id}")
    lines = [json.loads(raw) for raw in state.contents[input_file_id].splitlines() if raw.strip()]
    now = time.time()
    batch_id = state.next_id("batch")
    metadata = body.get("metadata") or {}
    state.batches[batch_id] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.get("endpoint"),
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": body.get("completion_window", "24h"),
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(now),
        "in_progress_at": None,
        "expires_at": int(now) + 86_400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        "metadata": metadata,
    }
    state.internal[batch_id] = {
        "created_mono": time.monotonic(),
        "lines": lines,
        "ordinal": state.batches_created,
        "token": token,
        "visible_at": time.monotonic() + (sc.list_lag_s if (faulted or sc.lag_all) else 0.0),
        "fail_with_echo": sc.echo_secret == "batch_errors",
        "seq": state._seq,
    }
    state.batches_created += 1
    state.batches_per_shard[str(metadata.get("batchpipe_shard", "?"))] += 1
    for line in lines:
        state.custom_id_batches[line.get("custom_id", "?")] += 1
    if faulted:
        if sc.create_fault == "500":
            return _error(500, "The server had an error while processing your request.", type_="server_error")
        if sc.create_fault == "drop":
            return _DropAfterHeaders()
        if sc.create_fault == "timeout":
            await asyncio.sleep(sc.timeout_hang_s)
            return _error(504, "Gateway Timeout", type_="server_error")
    return _ok(_view(state, batch_id))


async def retrieve_batch(request: Request) -> Response:
    state = _state(request)
    batch_id = request.path_params["batch_id"]
    if batch_id not in state.batches:
        return _error(404, f"No such Batch object: {batch_id}")
    return _ok(_view(state, batch_id))


async def list_batches(request: Request) -> Response:
    state = _state(request)
    sc = state.scenario
    limit = max(1, min(100, int(request.query_params.get("limit", "20"))))
    after = request.query_params.get("after")
    if sc.list_cycle is not None:
        # decoys newer than anything of ours, and a cursor that never advances
        now = int(time.time())
        tag = "b" if (sc.list_cycle == "cycle" and after == "batch_decoy_a") else "a"
        decoy = {
            "id": f"batch_decoy_{tag}",
            "object": "batch",
            "endpoint": "/v1/images/generations",
            "status": "in_progress",
            "created_at": now + 60,
            "input_file_id": "file_decoy",
            "completion_window": "24h",
            "request_counts": {"total": 1, "completed": 0, "failed": 0},
            "metadata": {},
        }
        page = {"object": "list", "data": [decoy], "first_id": decoy["id"], "last_id": decoy["id"], "has_more": True}
        return _ok(page)
    mono = time.monotonic()
    ids = [
        b
        for b in sorted(state.batches, key=lambda b: state.internal[b]["seq"], reverse=True)
        if state.internal[b]["visible_at"] <= mono
    ]
    if after:
        ids = ids[ids.index(after) + 1 :] if after in ids else []
    page = [_view(state, b) for b in ids[:limit]]
    return _ok(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }
    )


async def cancel_batch(request: Request) -> Response:
    state = _state(request)
    batch_id = request.path_params["batch_id"]
    if batch_id not in state.batches:
        return _error(404, f"No such Batch object: {batch_id}")
    batch = state.batches[batch_id]
    if batch["status"] not in _TERMINAL:
        batch["status"] = "cancelled"
        batch["cancelled_at"] = int(time.time())
    return _ok(_view(state, batch_id))


class HostileApp:
    """The ASGI app: a front door (bearer token required, every request counted) before the Starlette routes."""

    def __init__(self, state: HostileState) -> None:
        self.state = state
        routes = [
            Route("/v1/models/{model}", retrieve_model, methods=["GET"]),
            Route("/v1/files", create_file, methods=["POST"]),
            Route("/v1/files", list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
            Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
            Route("/v1/batches", create_batch, methods=["POST"]),
            Route("/v1/batches", list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            return _error(404, f"Invalid URL ({request.method} {request.url.path})")

        self.app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
        self.app.state.hostile = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode()
            path = re.sub(r"/(file|batch)_[0-9a-f]+", r"/{\1}", scope["path"])
            with self.state.lock:
                self.state.requests[f"{scope['method']} {path}"] += 1
            if not auth.startswith("Bearer ") or len(auth) < 12:
                await _error(401, "You didn't provide an API key.")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: HostileState) -> HostileApp:
    """The hostile ASGI app over ``state``."""
    return HostileApp(state)
