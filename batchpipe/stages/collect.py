"""The collector: streams batch output and error files into images on disk and rows in the ledger.

Pipeline for one file (all stages concurrent, every queue bounded, so memory is a few lines in flight
whatever the file size)::

    HTTP stream ──chunks──▶ line splitter ──(line, end offset)──▶ bounded queue
        ──▶ worker threads: orjson parse, base64 decode, store.put (tmp+fsync+rename), C2PA check, cost
        ──▶ ledger writer: one transaction per group of lines + the committed byte offset

*Join on custom_id in any order* (gotchas #1): each line names its ``custom_id``; the batch's items are
loaded once as a dict. *Exact bytes* (gotchas #12): the decoded ``b64_json`` bytes are what is stored and
checked, never re-encoded. *Resume*: the ledger keeps, per batch and file, the byte offset below which every
line is committed; a restarted collector asks the server for the rest (``Range``), or skips that many bytes
when the server sends the whole file. A cut connection resumes from the last complete line read.

Line outcomes (SPEC-OLD ``BatchRequestOutput``; FACTS §3): ``response.status_code == 200`` → succeeded;
another status → failed with ``response.body.error`` (retryable for 5xx / 429); ``error.code`` of
``batch_expired`` → expired, ``batch_cancelled`` → cancelled, other ``error`` → failed.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal

import orjson
import pybase64
import structlog
from PIL import Image

from batchpipe.domain.backoff import Backoff
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.modeltable import ModelTable
from batchpipe.domain.redact import redact
from batchpipe.domain.spec import request_cost_usd
from batchpipe.errors import ApiConnectionError
from batchpipe.ports import AsyncLedger, BatchApi, ImageStore, Ledger, Verifier

__all__ = [
    "RETRYABLE_ERROR_CODES",
    "CollectStats",
    "Collector",
    "ItemTarget",
    "LineResult",
    "Verifier",
    "process_line",
]

log = structlog.get_logger("batchpipe.stages.collect")

#: Per-request error codes worth another attempt (gotchas #2, #4; FACTS §5): service-side and capacity
#: failures. Moderation blocks and invalid requests are final.
RETRYABLE_ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        "batch_expired",
        "batch_cancelled",
        "server_error",
        "internal_error",
        "rate_limit_exceeded",
        "token_limit_exceeded",
        "timeout",
        "service_unavailable",
        "missing",
    }
)
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"RIFF", "webp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"<?xml", "svg"),
    (b"<svg", "svg"),
)
#: Waits between reconnects of a cut download: 0.1 s doubling to 2 s.
_RECONNECT_BACKOFF: Final = Backoff(0.1, 2.0)
_EXT: Final[dict[str, str]] = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif", "svg": "svg"}
#: MIME types for C2PA (c2pa-python ``Reader.get_supported_mime_types``); the default is ``image/<format>``.
_MIME: Final[dict[str, str]] = {"svg": "image/svg+xml"}
_SVG_SIZE: Final = re.compile(rb"<svg\b[^>]*?\bwidth=\"(\d+)(?:px)?\"[^>]*?\bheight=\"(\d+)(?:px)?\"", re.S)


def _image_size(raw: bytes, fmt: str) -> tuple[int | None, int | None]:
    """``(width, height)`` in pixels from the image header (an SVG's root ``width``/``height``); Nones if unreadable.

    Raises ``Exception`` from Pillow for a raster image it cannot read.
    """
    if fmt == "svg":
        match = _SVG_SIZE.search(raw[:4096])
        return (int(match.group(1)), int(match.group(2))) if match else (None, None)
    with Image.open(io.BytesIO(raw)) as img:
        width, height = img.size
    return width, height


@dataclass(frozen=True, slots=True)
class ItemTarget:
    """What the collector needs to know of one submitted item: its key and request (model, format)."""

    custom_id: str
    key: str
    model: str
    models: ModelTable | None = None  #: the model table for its cost (default: the shipped one)


@dataclass(slots=True)
class LineResult:
    """The outcome of one output/error line: the item's new status and the ledger columns to set."""

    custom_id: str
    status: ItemStatus
    fields: dict[str, object]
    images: int = 0
    image_bytes: int = 0


@dataclass(slots=True)
class CollectStats:
    """Counts for one collected file: ``lines``, ``bytes_read`` (bytes of the file processed this time),
    ``images``, ``image_bytes``, ``unknown`` (custom_ids not in the batch), ``reconnects``, ``elapsed_s``."""

    lines: int = 0
    bytes_read: int = 0
    images: int = 0
    image_bytes: int = 0
    unknown: int = 0
    reconnects: int = 0
    elapsed_s: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)


def _decode_b64(text: str | memoryview) -> bytes:
    """Base64 → bytes with pybase64's SIMD decoder (~10x ``binascii`` here, measured): JSON strings carry no
    line breaks, so the strict fast path applies; anything else falls back to the lenient decoder.
    Raises ``binascii.Error`` for input that is not base64."""
    try:
        return pybase64.b64decode(text, validate=True)
    except binascii.Error:
        return pybase64.b64decode(text, validate=False)


def _sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _error_fields(code: str | None, message: str | None, *, status_code: int | None) -> dict[str, object]:
    retryable = (code in RETRYABLE_ERROR_CODES) or (
        status_code is not None and (status_code >= 500 or status_code == 429)
    )
    return {
        "error_code": code or (f"http_{status_code}" if status_code else "unknown_error"),
        "error_message": redact(str(message or ""))[:2000],
        "retryable": 1 if retryable else 0,
    }


_B64_KEY: Final = b'"b64_json":"'


def split_payloads(line: bytes) -> tuple[bytes, list[memoryview]] | None:
    """The line with every ``b64_json`` string emptied, and the payloads as zero-copy slices, in order.

    Parsing a 2 MB line with orjson copies each base64 payload into a Python ``str`` while holding the GIL;
    slicing them out of the raw bytes leaves only a few hundred bytes to parse. A key preceded by an escaped
    quote cannot match (inside a JSON string every ``"`` is escaped), and a payload holding a backslash (a
    JSON-escaped slash) returns None so the caller parses the whole line instead.
    """
    view = memoryview(line)
    payloads: list[memoryview] = []
    parts: list[bytes] = []
    position = 0
    while (found := line.find(_B64_KEY, position)) != -1:
        start = found + len(_B64_KEY)
        end = line.find(b'"', start)
        if end == -1 or line.find(b"\\", start, end) != -1:
            return None
        parts.append(line[position:start])
        payloads.append(view[start:end])
        position = end
    if not payloads:
        return None
    parts.append(line[position:])
    return b"".join(parts), payloads


def process_line(
    line: bytes,
    targets: Mapping[str, ItemTarget],
    store: ImageStore,
    verifier: Verifier | None,
) -> LineResult | None:
    """Turn one output/error line into a :class:`LineResult` (runs in a worker thread).

    Writes every image of a 200 response through ``store`` and checks it with ``verifier``. Returns None
    for a custom_id that is not one of ``targets`` (the caller counts it). Malformed lines become a failed
    result when the custom_id can be read, else raise ``ValueError``.
    """
    split = split_payloads(line)
    payloads: list[memoryview] | None = None
    if split is not None:
        record = orjson.loads(split[0])
        payloads = split[1]
    else:
        record = orjson.loads(line)
    custom_id = record.get("custom_id") if isinstance(record, dict) else None
    if not isinstance(custom_id, str):
        raise ValueError("output line without a custom_id")
    target = targets.get(custom_id)
    if target is None:
        return None
    error = record.get("error")
    response = record.get("response")
    if isinstance(error, dict) and error:
        code = error.get("code")
        status = {"batch_expired": ItemStatus.EXPIRED, "batch_cancelled": ItemStatus.CANCELLED}.get(
            str(code), ItemStatus.FAILED
        )
        return LineResult(custom_id, status, _error_fields(code, error.get("message"), status_code=None))
    if not isinstance(response, dict):
        return LineResult(
            custom_id,
            ItemStatus.FAILED,
            _error_fields("malformed_output", "line has no response", status_code=None),
        )
    status_code = response.get("status_code")
    body = response.get("body")
    if status_code != 200 or not isinstance(body, dict):
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        return LineResult(
            custom_id,
            ItemStatus.FAILED,
            _error_fields(
                err.get("code"),
                err.get("message"),
                status_code=status_code if isinstance(status_code, int) else None,
            ),
        )
    data = body.get("data")
    if not isinstance(data, list) or not data:
        return LineResult(
            custom_id,
            ItemStatus.FAILED,
            _error_fields("empty_response", "no images in response", status_code=200),
        )
    images: list[dict[str, object]] = []
    total = 0
    if payloads is not None and len(payloads) != len(data):
        payloads = None  # a b64_json key somewhere unexpected: trust only the full parse
        record = orjson.loads(line)
        body = record["response"]["body"]
        data = body["data"]
    for index, entry in enumerate(data):
        b64: str | memoryview | None = entry.get("b64_json") if isinstance(entry, dict) else None
        if payloads is not None and isinstance(b64, str):
            b64 = payloads[index]
        if not isinstance(b64, (str, memoryview)):
            return LineResult(
                custom_id,
                ItemStatus.FAILED,
                _error_fields("missing_b64_json", f"data[{index}] has no b64_json", status_code=200),
            )
        try:
            raw = _decode_b64(b64)
        except binascii.Error as exc:
            return LineResult(
                custom_id,
                ItemStatus.FAILED,
                _error_fields("invalid_base64", f"data[{index}]: {exc}", status_code=200),
            )
        fmt = _sniff_format(raw) or str(body.get("output_format") or "png")
        location = store.location_for(target.key, index, _EXT.get(fmt, fmt))
        stored = store.put(location, raw)
        width = height = None
        try:
            width, height = _image_size(raw, fmt)
        except Exception as exc:  # an undecodable image is still recorded; C2PA will say "unreadable"
            log.warning("image header unreadable", custom_id=custom_id, error=str(exc)[:200])
        report = verifier.verify_bytes(raw, _MIME.get(fmt, f"image/{fmt}")) if verifier is not None else None
        images.append(
            {
                "uri": stored.location,
                "sha256": stored.sha256,
                "bytes": stored.size_bytes,
                "format": fmt,
                "width": width,
                "height": height,
                "c2pa": report.to_dict() if report is not None else None,
            }
        )
        total += stored.size_bytes
    first = images[0]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    cost = request_cost_usd(target.model, usage, models=target.models) if usage else None
    states = [str(c["state"]) for c in (img["c2pa"] for img in images) if isinstance(c, dict)]
    order = ["unreadable", "invalid", "missing", "valid", "trusted"]
    worst = min(states, key=lambda s: order.index(s) if s in order else 0) if states else None
    fields: dict[str, object] = {
        "output_uri": first["uri"],
        "sha256": first["sha256"],
        "bytes": first["bytes"],
        "format": first["format"],
        "width": first["width"],
        "height": first["height"],
        "c2pa_state": worst,
        "c2pa_json": orjson.dumps(images if len(images) > 1 else first["c2pa"]).decode() if states else None,
        "usage_json": orjson.dumps(usage).decode() if usage else None,
        "cost_usd": cost,
        "error_code": None,
        "error_message": None,
        "retryable": None,
    }
    return LineResult(custom_id, ItemStatus.SUCCEEDED, fields, images=len(images), image_bytes=total)


class _OffsetTracker:
    """The byte offset below which every line is done (lines finish out of order)."""

    def __init__(self, start: int) -> None:
        self.committed = start
        self._next_seq = 0
        self._done: dict[int, int] = {}

    def done(self, seq: int, end_offset: int) -> None:
        self._done[seq] = end_offset
        while self._next_seq in self._done:
            self.committed = self._done.pop(self._next_seq)
            self._next_seq += 1


class Collector:
    """Collects output and error files of finished batches into the store and the ledger.

    ``client`` is a :class:`batchpipe.adapters.openai.OpenAIClient`; ``verifier`` None turns C2PA checks off.
    ``ledger``: the runner's :class:`~batchpipe.ports.AsyncLedger`, or a plain :class:`~batchpipe.ports.Ledger`
    (wrapped in one this collector owns); every ledger call runs on the ledger's thread, each group of lines in
    one transaction there.
    ``workers``: worker threads for parse/decode/write/verify (default 4: twice the cores here, since fsync
    and C2PA reads wait outside the GIL);
    ``queue_lines``: lines in flight (bounds memory: about ``queue_lines`` × the largest line);
    ``commit_every`` / ``commit_every_s``: a ledger transaction (with the resume offset) every this many lines
    or seconds, whichever comes first; ``chunk_bytes``: HTTP read size.
    """

    def __init__(
        self,
        client: BatchApi,
        ledger: AsyncLedger | Ledger,
        store: ImageStore,
        verifier: Verifier | None,
        *,
        workers: int = 4,
        queue_lines: int = 8,
        commit_every: int = 64,
        commit_every_s: float = 1.0,
        chunk_bytes: int = 1 << 20,
        max_reconnects: int = 20,
        clock: Callable[[], float] = time.monotonic,
        models: ModelTable | None = None,
    ) -> None:
        self._client = client
        self._models = models
        self._owns_ledger = not isinstance(ledger, AsyncLedger)
        self._ledger = ledger if isinstance(ledger, AsyncLedger) else AsyncLedger(ledger)
        self._store = store
        self._verifier = verifier
        self._workers = workers
        self._queue_lines = queue_lines
        self._commit_every = commit_every
        self._commit_every_s = commit_every_s
        self._chunk_bytes = chunk_bytes
        self._max_reconnects = max_reconnects
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect")

    def close(self) -> None:
        """Stop the worker threads (and the ledger thread if this collector made it)."""
        self._pool.shutdown(wait=True)
        if self._owns_ledger:
            self._ledger.close()

    async def targets_for_batch(self, batch_id: str) -> dict[str, ItemTarget]:
        """The batch's items by custom_id (at most 50,000: a dict is fine)."""
        return {
            row.custom_id: ItemTarget(row.custom_id, row.item_key, row.model, self._models)
            for row in await self._ledger.items(batch_id=batch_id)
        }

    async def collect_file(
        self,
        batch_id: str,
        file_id: str,
        kind: Literal["output", "error"],
        targets: Mapping[str, ItemTarget],
    ) -> CollectStats:
        """Stream ``file_id`` and apply every line to the ledger; resumes from the committed offset.

        Raises :class:`~batchpipe.errors.ApiError` when the file cannot be read after ``max_reconnects``.
        """
        batch = await self._ledger.batch(batch_id)
        start = batch.offset(kind) if batch else 0
        stats = CollectStats()
        began = self._clock()
        tracker = _OffsetTracker(start)
        queue: asyncio.Queue[tuple[int, bytes, int] | None] = asyncio.Queue(maxsize=self._queue_lines)
        results: asyncio.Queue[tuple[int, int, LineResult | None] | None] = asyncio.Queue(maxsize=self._queue_lines * 4)
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while (entry := await queue.get()) is not None:
                seq, line, end = entry
                try:
                    result = await loop.run_in_executor(
                        self._pool, process_line, line, targets, self._store, self._verifier
                    )
                except ValueError as exc:  # not JSON, or no custom_id: nothing to join it to
                    log.warning("unusable line", file_id=file_id, kind=kind, seq=seq, error=str(exc)[:200])
                    result = None
                await results.put((seq, end, result))
            await results.put(None)

        async def writer() -> None:
            finished_workers = 0
            pending: list[tuple[int, int, LineResult | None]] = []
            last_commit = self._clock()
            while finished_workers < self._workers:
                entry = await results.get()
                if entry is None:
                    finished_workers += 1
                else:
                    pending.append(entry)
                due = len(pending) >= self._commit_every or self._clock() - last_commit >= self._commit_every_s
                if pending and (due or entry is None):
                    # on the ledger thread: the commit's fsync must not stall the reader on the event loop
                    await self._ledger.call(partial(self._apply, batch_id, kind, pending, tracker, stats))
                    pending = []
                    last_commit = self._clock()
            if pending:
                await self._ledger.call(partial(self._apply, batch_id, kind, pending, tracker, stats))

        async def reader() -> None:
            await self._read_lines(file_id, start, queue, stats)
            for _ in range(self._workers):
                await queue.put(None)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(reader())
                for _ in range(self._workers):
                    group.create_task(worker())
                group.create_task(writer())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        await self._ledger.set_batch_progress(batch_id, **{f"{kind}_offset": tracker.committed, f"{kind}_done": 1})
        stats.elapsed_s = self._clock() - began
        log.info(
            "file collected",
            batch_id=batch_id,
            file_id=file_id,
            kind=kind,
            lines=stats.lines,
            images=stats.images,
            mb=round(stats.bytes_read / 1e6, 1),
            s=round(stats.elapsed_s, 2),
        )
        return stats

    def _apply(
        self,
        batch_id: str,
        kind: str,
        entries: list[tuple[int, int, LineResult | None]],
        tracker: _OffsetTracker,
        stats: CollectStats,
        db: Ledger,
    ) -> None:
        """Apply a group of line results in one transaction of ``db`` (called on the ledger thread)."""
        self._store.sync()  # files first: a committed row always has its file on disk
        with db.transaction():
            for seq, end, result in entries:
                if result is None:
                    stats.unknown += 1
                else:
                    changed = db.transition_items(
                        [result.custom_id],
                        result.status,
                        from_statuses=[ItemStatus.SUBMITTED],
                        fields=result.fields,
                        strict=False,
                    )
                    if changed:
                        stats.by_status[result.status] = stats.by_status.get(result.status, 0) + 1
                    stats.images += result.images
                    stats.image_bytes += result.image_bytes
                tracker.done(seq, end)
            db.set_batch_progress(batch_id, **{f"{kind}_offset": tracker.committed})

    async def _read_lines(
        self,
        file_id: str,
        start: int,
        queue: asyncio.Queue[tuple[int, bytes, int] | None],
        stats: CollectStats,
    ) -> None:
        """Download from ``start`` and enqueue complete lines with their end offsets; reconnect on cuts."""
        position = start  # offset of the first byte not yet part of an enqueued line
        seq = 0
        reconnects = 0
        while True:
            buffer = bytearray()
            try:
                async with self._client.stream_file_content(file_id, start_byte=position) as stream:
                    # FileStream yields bytes from start_byte on, whether or not the server honoured Range
                    async for chunk in stream.aiter_bytes(self._chunk_bytes):
                        stats.bytes_read += len(chunk)
                        buffer += chunk
                        begin = 0
                        while (newline := buffer.find(b"\n", begin)) != -1:
                            with memoryview(buffer) as view:  # one copy of the line, not two
                                line = bytes(view[begin:newline])
                            position += newline + 1 - begin
                            begin = newline + 1
                            if line.strip():
                                await queue.put((seq, line, position))
                                seq += 1
                                stats.lines += 1
                        if begin:
                            del buffer[:begin]
                if buffer.strip():  # a last line without a trailing newline
                    position += len(buffer)
                    await queue.put((seq, bytes(buffer), position))
                    stats.lines += 1
                return
            except ApiConnectionError as exc:
                reconnects += 1
                stats.reconnects += 1
                if reconnects > self._max_reconnects:
                    raise
                log.warning(
                    "download cut, resuming",
                    file_id=file_id,
                    offset=position,
                    attempt=reconnects,
                    error=str(exc),
                )
                await asyncio.sleep(_RECONNECT_BACKOFF.delay_s(reconnects - 1))
