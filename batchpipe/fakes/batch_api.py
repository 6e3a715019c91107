"""An in-memory OpenAI Files + Batches API for fast tests of the runner and the stages (no HTTP, no threads).

:class:`MemoryBatchApi` keeps files and batches in dicts and answers with the SPEC's object shapes (``OpenAIFile``,
``Batch``, list pages, per-line output and error files), so the runner, the poller and the collector run against it
unchanged. Batches advance one step each time they are listed or retrieved: ``validating`` → ``in_progress`` →
``completed``, writing an output file (a 1x1 PNG per line, ``b64_json``) and, for lines whose prompt contains
``FAIL``, an error file. Hooks let a test lose a create's response after the batch exists (:attr:`lose_create`) or
die right after it (:attr:`crash_after_create`), the two cases that must never make a second batch.

It is a fake, not the emulator: it checks nothing about request bodies. For behaviour against the real wire use
:mod:`batchpipe.emulator`.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from batchpipe.errors import ApiConnectionError, NotFoundError
from batchpipe.ports import BatchApi

__all__ = ["PNG_1X1", "Crash", "MemoryBatchApi", "MemoryFileStream"]

#: A valid 1x1 RGBA PNG (67 bytes): every image the fake renders.
PNG_1X1: Final = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class Crash(BaseException):
    """Raised by :class:`MemoryBatchApi` to stand for the process being killed (not an ``Exception``: nothing in
    the pipeline may catch it)."""


@dataclass
class _File:
    id: str
    purpose: str
    filename: str
    data: bytes
    created_at: int


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str]
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})


class MemoryFileStream:
    """What :meth:`MemoryBatchApi.stream_file_content` yields: the file's bytes from ``start_byte`` on
    (the same surface the collector reads of ``adapters.openai.FileStream``)."""

    def __init__(self, data: bytes, start_byte: int) -> None:
        self.start_byte = start_byte
        self.status_code = 206 if start_byte else 200
        self.resumed = bool(start_byte)
        self.total_bytes: int | None = len(data)
        self.bytes_received = 0
        self._data = data[start_byte:]

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The content in chunks of ``chunk_size`` bytes (default: all at once)."""
        size = chunk_size or max(len(self._data), 1)
        for start in range(0, len(self._data), size):
            chunk = self._data[start : start + size]
            self.bytes_received += len(chunk)
            yield chunk


class MemoryBatchApi:
    """Files and Batches in memory. ``clock``: unix seconds for ``created_at``.

    Counters for tests: :attr:`creates` (``POST /batches`` calls that made a batch), :attr:`uploads`.
    Hooks: ``lose_create`` (int): that many next creates make the batch and then raise ``ApiConnectionError``
    (the response is lost); ``crash_after_create`` (int): likewise but raise :class:`Crash`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.creates = 0
        self.uploads = 0
        self.lose_create = 0
        self.crash_after_create = 0

    def _id(self, prefix: str) -> str:
        return f"{prefix}-fake{next(self._ids):06d}"

    def _file_object(self, f: _File) -> dict[str, object]:
        return {
            "id": f.id,
            "object": "file",
            "bytes": len(f.data),
            "created_at": f.created_at,
            "filename": f.filename,
            "purpose": f.purpose,
            "status": "processed",
            "expires_at": None,
        }

    def _batch_object(self, b: _Batch) -> dict[str, object]:
        return {
            "id": b.id,
            "object": "batch",
            "endpoint": b.endpoint,
            "input_file_id": b.input_file_id,
            "completion_window": "24h",
            "status": b.status,
            "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id,
            "created_at": b.created_at,
            "request_counts": dict(b.counts),
            "metadata": dict(b.metadata),
            "errors": None,
        }

    # -- Files -----------------------------------------------------------------------------------------
    async def upload_file(
        self, path: Path, *, purpose: str, filename: str | None = None, expires_after_s: int | None = None
    ) -> dict[str, object]:
        """``POST /files``: stores the file's bytes; returns the ``OpenAIFile``."""
        data = path.read_bytes()  # noqa: ASYNC240 - a fake for tests: shard files are small and local
        f = _File(self._id("file"), purpose, filename or path.name, data, int(self._clock()))
        self.files[f.id] = f
        self.uploads += 1
        return self._file_object(f)

    async def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None, order: str = "desc"
    ) -> dict[str, object]:
        """``GET /files``: one page of every file (``purpose`` filters), newest first."""
        files = [f for f in reversed(self.files.values()) if purpose is None or f.purpose == purpose]
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        page = files[: limit or 10_000]
        return {
            "object": "list",
            "data": [self._file_object(f) for f in page],
            "has_more": len(files) > len(page),
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    async def retrieve_file(self, file_id: str) -> dict[str, object]:
        """``GET /files/{id}``: the ``OpenAIFile``; raises ``NotFoundError`` for an unknown id."""
        f = self.files.get(file_id)
        if f is None:
            raise NotFoundError(f"no file {file_id}", status_code=404)
        return self._file_object(f)

    async def delete_file(self, file_id: str) -> dict[str, object]:
        """``DELETE /files/{id}``; raises ``NotFoundError`` for an unknown id."""
        if self.files.pop(file_id, None) is None:
            raise NotFoundError(f"no file {file_id}", status_code=404)
        return {"id": file_id, "object": "file", "deleted": True}

    @asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[MemoryFileStream]:
        """``GET /files/{id}/content`` from ``start_byte``; raises ``NotFoundError`` for an unknown id."""
        f = self.files.get(file_id)
        if f is None:
            raise NotFoundError(f"no file {file_id}", status_code=404)
        yield MemoryFileStream(f.data, start_byte)

    # -- Batches ---------------------------------------------------------------------------------------
    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, str] | None = None,
        output_expires_after_s: int | None = None,
    ) -> dict[str, object]:
        """``POST /batches``: makes the batch (then loses the response or crashes when a hook says so)."""
        if input_file_id not in self.files:
            raise NotFoundError(f"no file {input_file_id}", status_code=404)
        batch = _Batch(self._id("batch"), input_file_id, endpoint, dict(metadata or {}), int(self._clock()))
        self.batches[batch.id] = batch
        self.creates += 1
        if self.crash_after_create:
            self.crash_after_create -= 1
            raise Crash("killed between the create and recording it")
        if self.lose_create:
            self.lose_create -= 1
            raise ApiConnectionError("connection reset after the request was sent", method="POST", url="/batches")
        return self._batch_object(batch)

    def _advance(self, batch: _Batch) -> None:
        """One step of the batch's life: validating → in_progress → completed (output and error files)."""
        if batch.status == "validating":
            batch.status = "in_progress"
            batch.counts["total"] = sum(1 for line in self.files[batch.input_file_id].data.splitlines() if line)
        elif batch.status == "in_progress":
            out, err = [], []
            for raw in self.files[batch.input_file_id].data.splitlines():
                if not raw.strip():
                    continue
                line = orjson.loads(raw)
                custom_id, body = line["custom_id"], line["body"]
                if "FAIL" in str(body.get("prompt", "")):
                    error = {"message": "fake refusal", "type": "invalid_request_error", "param": None, "code": "x"}
                    response = {"status_code": 400, "request_id": "req-fake", "body": {"error": error}}
                    err.append({"id": self._id("resp"), "custom_id": custom_id, "response": response, "error": None})
                    continue
                images = [{"b64_json": base64.b64encode(PNG_1X1).decode()} for _ in range(int(body.get("n") or 1))]
                usage = {
                    "input_tokens": 10,
                    "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
                    "output_tokens": 100,
                    "total_tokens": 110,
                }
                response_body = {"created": batch.created_at, "data": images, "usage": usage, "output_format": "png"}
                response = {"status_code": 200, "request_id": "req-fake", "body": response_body}
                out.append({"id": self._id("resp"), "custom_id": custom_id, "response": response, "error": None})
            for records, attr in ((out, "output_file_id"), (err, "error_file_id")):
                if records:
                    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
                    f = _File(self._id("file"), "batch_output", f"{batch.id}.jsonl", data, int(self._clock()))
                    self.files[f.id] = f
                    setattr(batch, attr, f.id)
            batch.counts.update(completed=len(out), failed=len(err))
            batch.status = "completed"

    async def retrieve_batch(self, batch_id: str) -> dict[str, object]:
        """``GET /batches/{id}`` (advances the batch one step); raises ``NotFoundError`` for an unknown id."""
        batch = self.batches.get(batch_id)
        if batch is None:
            raise NotFoundError(f"no batch {batch_id}", status_code=404)
        self._advance(batch)
        return self._batch_object(batch)

    async def list_batches(self, *, after: str | None = None, limit: int = 100) -> dict[str, object]:
        """``GET /batches``: one page, newest first (each listed batch advances one step)."""
        batches = list(reversed(self.batches.values()))
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        for batch in page:
            self._advance(batch)
        return {
            "object": "list",
            "data": [self._batch_object(b) for b in page],
            "has_more": len(batches) > len(page),
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }

    async def iter_batches(
        self, *, limit: int = 100, stop: Callable[[dict[str, object]], bool] | None = None
    ) -> AsyncIterator[dict[str, object]]:
        """Every batch, newest first, ending before the first one ``stop`` accepts."""
        after: str | None = None
        while True:
            page = await self.list_batches(after=after, limit=limit)
            data: list[dict[str, Any]] = page["data"]  # type: ignore[assignment]
            for batch in data:
                if stop is not None and stop(batch):
                    return
                yield batch
            if not page["has_more"] or not data:
                return
            after = data[-1]["id"]

    async def retrieve_model(self, model: str) -> dict[str, object]:
        """``GET /models/{model}``: every model exists and none shuts down (lifecycle is the table's concern)."""
        return {"id": model, "object": "model", "created": 0, "owned_by": "openai", "shutdown_date": None}


if TYPE_CHECKING:  # mypy proves that MemoryBatchApi implements the BatchApi port; nothing runs
    _conforms: BatchApi = MemoryBatchApi()
