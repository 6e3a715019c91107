"""The collector: streams batch output and error files into images on disk and rows in the ledger.

Pipeline for one file (all stages concurrent, every queue bounded, so memory is a few lines in flight
whatever the file size)::

    HTTP stream ──chunks──▶ line splitter ──(line, end offset)──▶ bounded queue
        ──▶ worker threads: orjson parse, base64 decode, store.put (tmp + rename), C2PA check, cost
        ──▶ ledger writer: store.sync() (the group's fsyncs), then one transaction per group of lines + the
            committed byte offset

*Join on custom_id in any order* (gotchas #1): each line names its ``custom_id``; the batch's items are
loaded once as a dict. *Exact bytes* (gotchas #12): the decoded ``b64_json`` bytes are what is stored and
checked, never re-encoded. *Resume*: the ledger keeps, per batch and file, the byte offset below which every
line is committed; a restarted collector asks the server for the rest (``Range``), or skips that many bytes
when the server sends the whole file. A cut connection resumes from the last complete line read.

*A download is verified before anything is judged on it* (issue 11, behaviour 2). Results are applied to the
ledger in file order, and a group's offset is committed with its rows, so nothing past a bad line is ever
committed. A body that ends before the file's ``bytes`` (``GET /files/{id}``), with or without a cut
connection, is re-requested from the last complete line; a line that is not a JSON object naming a
``custom_id`` (an HTML or JSON error page served with 200, a garbled or half line) stops the download and it
is downloaded again from the committed offset. Both are bounded (``download_attempts`` in a row without
getting further, ``max_reconnects`` in all, with backoff); then :class:`~batchpipe.errors.DownloadError`
(exit 3: the same command resumes). Only ``collect_file`` returning marks the file done, so rows are never
reconciled as missing, and the file is never deleted from the service, on the strength of a partial download.

Line outcomes (SPEC-OLD ``BatchRequestOutput``; FACTS §3): ``response.status_code == 200`` → succeeded, *if
every image is one* (behaviour 5): strict base64, not empty, the magic bytes and header of the format the item
asked for (``output_format``, default png); otherwise failed with ``invalid_base64`` / ``empty_image`` /
``invalid_image`` / ``wrong_image_format`` (or ``missing_b64_json`` / ``empty_response``), retryable on the
item's first attempt only (:data:`IMAGE_FAULT_CODES`). Another status → failed with ``response.body.error``
(retryable for 5xx / 429); ``error.code`` of ``batch_expired`` → expired, ``batch_cancelled`` → cancelled,
other ``error`` → failed. *The first line wins*: when a file holds several lines for one custom_id, the first in
file order decides the item and alone may write its image (:class:`FirstLineWins`); the others are counted
as ``duplicates`` and logged, so the file on disk is always the one whose sha256 the ledger holds.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import re
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
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
from batchpipe.errors import ApiConnectionError, DownloadError
from batchpipe.ports import AsyncLedger, BatchApi, ImageStore, Ledger, Verifier

__all__ = [
    "IMAGE_FAULT_CODES",
    "IMAGE_FAULT_RETRIES",
    "RETRYABLE_ERROR_CODES",
    "CollectStats",
    "Collector",
    "FirstLineWins",
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
#: Error codes of a 200 line whose image is not one (issue 11, behaviour 5): a service fault, so the item is
#: retryable, but only on its first :data:`IMAGE_FAULT_RETRIES` attempt(s), whatever ``max_attempts`` says.
IMAGE_FAULT_CODES: Final[frozenset[str]] = frozenset(
    {"invalid_base64", "empty_image", "invalid_image", "wrong_image_format", "missing_b64_json", "empty_response"}
)
#: Attempts of an item after which an image fault is no longer retryable (1: retried once).
IMAGE_FAULT_RETRIES: Final = 1
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"RIFF", "webp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"<?xml", "svg"),
    (b"<svg", "svg"),
)
#: Waits before downloading a file again (cut, short or unreadable): 0.5 s doubling to 8 s, by the number of
#: attempts in a row that got no further (with the default 5 attempts: 0.5 + 1 + 2 + 4 s at most).
_RETRY_BACKOFF: Final = Backoff(0.5, 8.0)
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_IEND: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_WEBP_CHUNKS: Final = (b"VP8 ", b"VP8L", b"VP8X")
_SVG_LEAD: Final = b"\xef\xbb\xbf \t\r\n"
#: Request ``output_format`` spellings → the format names used here.
_FORMAT_ALIASES: Final[dict[str, str]] = {"jpg": "jpeg"}
#: A line's start shown in a download error (enough to recognise an HTML or JSON error page).
_PREVIEW_BYTES: Final = 60
_B64_WHITESPACE: Final = re.compile(r"[ \t\r\n]+")
_EXT: Final[dict[str, str]] = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif", "svg": "svg"}
#: MIME types for C2PA (c2pa-python ``Reader.get_supported_mime_types``); the default is ``image/<format>``.
_MIME: Final[dict[str, str]] = {"svg": "image/svg+xml"}
_SVG_SIZE: Final = re.compile(rb"<svg\b[^>]*?\bwidth=\"(\d+)(?:px)?\"[^>]*?\bheight=\"(\d+)(?:px)?\"", re.S)


class ImageFault(ValueError):
    """The bytes of a 200 line are not an image of the requested format: ``code`` (one of
    :data:`IMAGE_FAULT_CODES`) and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _image_size(raw: bytes, fmt: str) -> tuple[int | None, int | None]:
    """``(width, height)`` in pixels from the image header (an SVG's root ``width``/``height``, Nones without).

    Raises :class:`ImageFault` (``invalid_image``) when Pillow cannot read a raster header or reads another
    format than ``fmt``.
    """
    if fmt == "svg":
        match = _SVG_SIZE.search(raw[:4096])
        return (int(match.group(1)), int(match.group(2))) if match else (None, None)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            actual = (img.format or "").lower()
    except Exception as exc:  # Pillow raises many types for unreadable headers
        raise ImageFault("invalid_image", f"the {fmt} header is unreadable ({type(exc).__name__})") from None
    if actual != fmt:
        raise ImageFault("invalid_image", f"Pillow reads a {actual or 'unknown'} image, not {fmt}")
    return width, height


def _sniff(raw: bytes) -> str | None:
    """The format named by ``raw``'s magic bytes (an SVG may start after a BOM or white space), or None."""
    fmt = _sniff_format(raw)
    if fmt is None and raw[:1] in (b"\xef", b" ", b"\t", b"\r", b"\n"):
        fmt = _sniff_format(raw[:256].lstrip(_SVG_LEAD))
        return fmt if fmt == "svg" else None
    return fmt


def _structure_problem(raw: bytes, fmt: str) -> str | None:
    """A cheap check of the container around the pixels (no decoding); None when it holds, else what is wrong.

    PNG: signature, ``IHDR`` first with a good CRC, ``IEND`` last (PNG 1.2 §5). JPEG: SOI first and EOI last
    (ITU T.81 B.2). WebP: ``RIFF`` size covering the data, ``WEBP`` and a ``VP8``/``VP8L``/``VP8X`` chunk
    (RFC 9649 §2). GIF: ``GIF87a``/``GIF89a`` and the ``;`` trailer. SVG: an ``<svg`` element near the start.
    """
    if fmt == "png":
        if len(raw) < 45 or not raw.startswith(_PNG_SIGNATURE) or raw[12:16] != b"IHDR":
            return "no PNG signature and IHDR header"
        if zlib.crc32(raw[12:29]) != int.from_bytes(raw[29:33], "big"):
            return "the PNG IHDR checksum is wrong"
        if not raw.endswith(_PNG_IEND):
            return "the PNG does not end with IEND (truncated)"
    elif fmt == "jpeg":
        if not raw.startswith(b"\xff\xd8\xff"):
            return "no JPEG start-of-image marker"
        if not raw.rstrip(b"\x00").endswith(b"\xff\xd9"):
            return "the JPEG does not end with its end-of-image marker (truncated)"
    elif fmt == "webp":
        if raw[8:12] != b"WEBP" or raw[12:16] not in _WEBP_CHUNKS:
            return "no RIFF/WEBP header with a VP8 chunk"
        if int.from_bytes(raw[4:8], "little") + 8 > len(raw):
            return "the WebP is shorter than its RIFF size (truncated)"
    elif fmt == "gif":
        if not raw.rstrip(b"\x00").endswith(b";"):
            return "the GIF does not end with its trailer (truncated)"
    elif fmt == "svg" and b"<svg" not in raw[:65536]:
        return "no <svg> element"
    return None


def check_image(raw: bytes, requested: str) -> tuple[int | None, int | None]:
    """Check that ``raw`` is an image of format ``requested`` (``png``, ``jpeg``, ``webp``, ``gif``, ``svg``):
    not empty, the magic bytes of that format, a sound container (:func:`_structure_problem`) and a header
    Pillow reads as that format. Returns ``(width, height)`` in pixels (Nones for an SVG without them).

    Raises :class:`ImageFault`: ``empty_image``, ``invalid_image`` (not an image, or a broken one) or
    ``wrong_image_format`` (an image of another format than the request asked for).
    """
    if not raw:
        raise ImageFault("empty_image", "the image is empty (0 bytes)")
    fmt = _sniff(raw)
    if fmt is None:
        raise ImageFault("invalid_image", f"not an image: starts with {bytes(raw[:16])!r}")
    if fmt != requested:
        raise ImageFault("wrong_image_format", f"a {fmt} image where {requested} was requested")
    problem = _structure_problem(raw, fmt)
    if problem is not None:
        raise ImageFault("invalid_image", problem)
    return _image_size(raw, fmt)


def requested_format(body_json: str | None) -> str:
    """The ``output_format`` a request body (JSON text) asks for, ``png`` when it names none (the API default,
    SPEC ``CreateImageRequest.output_format``); ``jpg`` is read as ``jpeg``."""
    if not body_json or '"output_format"' not in body_json:
        return "png"
    try:
        body = orjson.loads(body_json)
    except orjson.JSONDecodeError:
        return "png"
    fmt = body.get("output_format") if isinstance(body, dict) else None
    fmt = str(fmt or "png").lower()
    return _FORMAT_ALIASES.get(fmt, fmt)


@dataclass(frozen=True, slots=True)
class ItemTarget:
    """What the collector needs to know of one submitted item: its key and request (model, format)."""

    custom_id: str
    key: str
    model: str
    models: ModelTable | None = None  #: the model table for its cost (default: the shipped one)
    output_format: str = "png"  #: the format the request asked for (``png``, ``jpeg``, ``webp``, ...)
    attempt: int = 1  #: the item's attempt number (1 for the first): image faults are retried once


class FirstLineWins:
    """Which line of one download may write a custom_id's images: the first line for it in file order.

    Worker threads finish lines out of order, so each line claims its custom_id (:meth:`claim`, by ``seq``, its
    0-based number in the download) before doing anything, and writes under :meth:`writing`, which holds the
    custom_id's lock and says whether the line is still the first. The lowest ``seq`` therefore writes last
    or alone, and the collector, applying lines in file order, keeps exactly that line. ``decided``:
    custom_ids whose row had left ``submitted`` before the download began: no line may write over them.
    Thread-safe.
    """

    _STRIPES: Final = 64

    def __init__(self, decided: Iterable[str] = ()) -> None:
        self._decided = frozenset(decided)
        self._first: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(self._STRIPES)]

    def claim(self, custom_id: str, seq: int) -> bool:
        """Register line ``seq`` for ``custom_id``; False if the custom_id was decided before this download or
        an earlier line already holds it (this line is a duplicate: it must write nothing)."""
        if custom_id in self._decided:
            return False
        with self._lock:
            first = self._first.get(custom_id)
            if first is not None and first < seq:
                return False
            self._first[custom_id] = seq
            return True

    @contextmanager
    def writing(self, custom_id: str, seq: int) -> Iterator[bool]:
        """Hold ``custom_id``'s write lock for the block; yields True if line ``seq`` is still the first line
        for it (write), False if an earlier line has claimed it since (write nothing)."""
        with self._stripes[hash(custom_id) % self._STRIPES]:
            with self._lock:
                mine = self._first.get(custom_id) == seq and custom_id not in self._decided
            yield mine


@dataclass(slots=True)
class LineResult:
    """The outcome of one output/error line: the item's new status and the ledger columns to set."""

    custom_id: str
    status: ItemStatus
    fields: dict[str, object]
    images: int = 0
    image_bytes: int = 0
    duplicate: bool = False  #: an earlier line of the file decides this custom_id: nothing was written


@dataclass(slots=True)
class CollectStats:
    """Counts for one collected file: ``lines``, ``bytes_read`` (bytes of the file processed this time),
    ``images``, ``image_bytes``, ``unknown`` (custom_ids not in the batch), ``duplicates`` (lines for a
    custom_id an earlier line already decided), ``reconnects`` (cut or short bodies requested again),
    ``redownloads`` (downloads started again after an unreadable line), ``elapsed_s``."""

    lines: int = 0
    bytes_read: int = 0
    images: int = 0
    image_bytes: int = 0
    unknown: int = 0
    duplicates: int = 0
    reconnects: int = 0
    redownloads: int = 0
    elapsed_s: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)


def _decode_b64(text: str | memoryview) -> bytes:
    """Base64 → bytes with pybase64's SIMD decoder (~10x ``binascii`` here, measured), strictly: only the
    standard alphabet and correct padding (RFC 4648 §4; ``validate=True``), never the lenient decoder, which
    drops what it does not know (a URL-safe ``-``/``_``) and returns shifted garbage. The one tolerance is
    line breaks and spaces in a parsed JSON string (MIME-wrapped base64, RFC 2045 §6.8), removed before a
    second strict decode; a raw ``memoryview`` payload cannot hold them (JSON escapes control characters).
    Raises ``binascii.Error`` for input that is not strict base64."""
    try:
        return pybase64.b64decode(text, validate=True)
    except binascii.Error:
        if isinstance(text, str):
            cleaned = _B64_WHITESPACE.sub("", text)
            if cleaned != text:
                return pybase64.b64decode(cleaned, validate=True)
        raise


def _sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _error_fields(
    code: str | None, message: str | None, *, status_code: int | None, attempt: int = 1
) -> dict[str, object]:
    """Ledger columns of a failed line: ``error_code``, ``error_message`` (redacted, ≤ 2000 chars) and
    ``retryable`` (1 for :data:`RETRYABLE_ERROR_CODES`, 5xx and 429, and for :data:`IMAGE_FAULT_CODES` on
    attempts up to :data:`IMAGE_FAULT_RETRIES`)."""
    retryable = (
        (code in RETRYABLE_ERROR_CODES)
        or (status_code is not None and (status_code >= 500 or status_code == 429))
        or (code in IMAGE_FAULT_CODES and attempt <= IMAGE_FAULT_RETRIES)
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


def _image_failure(target: ItemTarget, code: str, message: str) -> LineResult:
    """The failed result of a 200 line whose image is not one (logged: a service fault worth seeing)."""
    log.warning("200 line without a valid image", custom_id=target.custom_id, error_code=code, error=message)
    return LineResult(
        target.custom_id,
        ItemStatus.FAILED,
        _error_fields(code, message, status_code=200, attempt=target.attempt),
    )


def process_line(
    line: bytes,
    targets: Mapping[str, ItemTarget],
    store: ImageStore,
    verifier: Verifier | None,
    *,
    seq: int = 0,
    winners: FirstLineWins | None = None,
) -> LineResult | None:
    """Turn one output/error line into a :class:`LineResult` (runs in a worker thread).

    Checks every image of a 200 response (:func:`check_image`: strict base64, not empty, the requested format)
    before writing any; then writes them through ``store`` and checks them with ``verifier``. ``seq`` is the
    line's 0-based number in this download and ``winners`` the download's :class:`FirstLineWins`: a line that
    is not the first for its custom_id writes nothing and returns a result with ``duplicate`` set. Returns None
    for a custom_id that is not one of ``targets`` (the caller counts it). Raises ``ValueError`` for a line that
    is not a JSON object with a string ``custom_id``: the file is not the JSONL it must be, which is a fault of
    the download, not of an item.
    """
    split = split_payloads(line)
    payloads: list[memoryview] | None = None
    if split is not None:
        record = orjson.loads(split[0])
        payloads = split[1]
    else:
        record = orjson.loads(line)
    custom_id = record.get("custom_id") if isinstance(record, dict) else None
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("a line that is not a JSON object with a custom_id")
    target = targets.get(custom_id)
    if target is None:
        return None
    if winners is not None and not winners.claim(custom_id, seq):
        return LineResult(custom_id, ItemStatus.SUBMITTED, {}, duplicate=True)
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
        return _image_failure(target, "empty_response", "no images in response")
    if payloads is not None and len(payloads) != len(data):
        payloads = None  # a b64_json key somewhere unexpected: trust only the full parse
        record = orjson.loads(line)
        body = record["response"]["body"]
        data = body["data"]
    fmt = target.output_format
    checked: list[tuple[bytes, int | None, int | None]] = []
    for index, entry in enumerate(data):
        b64: str | memoryview | None = entry.get("b64_json") if isinstance(entry, dict) else None
        if payloads is not None and isinstance(b64, str):
            b64 = payloads[index]
        if not isinstance(b64, (str, memoryview)):
            return _image_failure(target, "missing_b64_json", f"data[{index}] has no b64_json")
        try:
            raw = _decode_b64(b64)
        except binascii.Error as exc:
            return _image_failure(target, "invalid_base64", f"data[{index}] is not strict base64: {exc}")
        try:
            width, height = check_image(raw, fmt)
        except ImageFault as exc:
            return _image_failure(target, exc.code, f"data[{index}]: {exc}")
        checked.append((raw, width, height))
    images: list[dict[str, object]] = []
    total = 0
    with winners.writing(custom_id, seq) if winners is not None else _always_first() as first:
        if not first:
            return LineResult(custom_id, ItemStatus.SUBMITTED, {}, duplicate=True)
        stored = [store.put(store.location_for(target.key, i, _EXT.get(fmt, fmt), target.attempt), raw)
                  for i, (raw, _, _) in enumerate(checked)]  # fmt: skip
    for put, (raw, width, height) in zip(stored, checked, strict=True):
        report = verifier.verify_bytes(raw, _MIME.get(fmt, f"image/{fmt}")) if verifier is not None else None
        images.append(
            {
                "uri": put.location,
                "sha256": put.sha256,
                "bytes": put.size_bytes,
                "format": fmt,
                "width": width,
                "height": height,
                "c2pa": report.to_dict() if report is not None else None,
            }
        )
        total += put.size_bytes
    first_image = images[0]
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    cost = request_cost_usd(target.model, usage, models=target.models) if usage else None
    states = [str(c["state"]) for c in (img["c2pa"] for img in images) if isinstance(c, dict)]
    order = ["unreadable", "invalid", "missing", "valid", "trusted"]
    worst = min(states, key=lambda s: order.index(s) if s in order else 0) if states else None
    fields: dict[str, object] = {
        "output_uri": first_image["uri"],
        "sha256": first_image["sha256"],
        "bytes": first_image["bytes"],
        "format": first_image["format"],
        "width": first_image["width"],
        "height": first_image["height"],
        "c2pa_state": worst,
        "c2pa_json": orjson.dumps(images if len(images) > 1 else first_image["c2pa"]).decode() if states else None,
        "usage_json": orjson.dumps(usage).decode() if usage else None,
        "cost_usd": cost,
        "error_code": None,
        "error_message": None,
        "retryable": None,
    }
    return LineResult(custom_id, ItemStatus.SUCCEEDED, fields, images=len(images), image_bytes=total)


@contextmanager
def _always_first() -> Iterator[bool]:
    """:meth:`FirstLineWins.writing` for a caller without one: every line may write."""
    yield True


class _BadDownload(Exception):
    """This download of a file is not the JSONL it must be (``reason`` for people); ``final``: the retry budget
    is already spent (cuts counted by the reader), so no further attempt is made."""

    def __init__(self, reason: str, *, final: bool = False) -> None:
        self.reason = reason
        self.final = final
        super().__init__(reason)


@dataclass(slots=True)
class _LineFault:
    """A line that is not a JSON object with a custom_id, in file order among the results."""

    reason: str


@dataclass(slots=True)
class _Retries:
    """Downloads of one file started again: ``total``, ``stalled`` in a row that got no further than any
    before (``furthest``: the highest line boundary read, in bytes; lines read again after a re-download are
    not progress), and ``line_fault``: the last unreadable line seen, the most telling reason to report."""

    total: int = 0
    stalled: int = 0
    furthest: int = 0
    line_fault: str | None = None

    def failed(self, *, reached: int) -> None:
        """Count one more failed download that read whole lines up to byte ``reached``."""
        self.total += 1
        self.stalled = 0 if reached > self.furthest else self.stalled + 1
        self.furthest = max(self.furthest, reached)


@dataclass(slots=True)
class _Committed:
    """The byte offset below which every line of the file is committed (set after each transaction)."""

    offset: int


def _line_fault(line: bytes, end: int, exc: ValueError) -> _LineFault:
    """Say where the unreadable line is and how it starts (an error page is recognisable from that)."""
    preview = line[:_PREVIEW_BYTES].decode("utf-8", "replace")
    more = "..." if len(line) > _PREVIEW_BYTES else ""
    return _LineFault(f"the line ending at byte {end} is not a JSON object with a custom_id ({exc}): {preview!r}{more}")


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
    or seconds, whichever comes first; ``chunk_bytes``: the chunk size asked of the download stream in bytes
    (None, the default: the pieces as the network delivers them, without a re-chunking copy).
    ``download_attempts``: downloads of one file in a row that get no further (cut, short or unreadable)
    before :class:`~batchpipe.errors.DownloadError`; ``max_reconnects``: re-downloads of one file in all;
    ``sleep``: the wait between them (seconds; injectable for tests).
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
        chunk_bytes: int | None = None,
        max_reconnects: int = 20,
        download_attempts: int = 5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._download_attempts = download_attempts
        self._clock = clock
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="collect")

    def close(self) -> None:
        """Stop the worker threads (and the ledger thread if this collector made it)."""
        self._pool.shutdown(wait=True)
        if self._owns_ledger:
            self._ledger.close()

    async def targets_for_batch(self, batch_id: str) -> dict[str, ItemTarget]:
        """The batch's items by custom_id (at most 50,000: a dict is fine), with the format each asked for."""
        return {
            row.custom_id: ItemTarget(
                row.custom_id,
                row.item_key,
                row.model,
                self._models,
                output_format=requested_format(row.body_json),
                attempt=row.attempt,
            )
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

        The file's size comes from ``GET /files/{file_id}`` (``bytes``; unchecked when the server gives none).
        A cut or short body is requested again from the last complete line, an unreadable line makes the file
        be downloaded again from the committed offset, with backoff (see the class). Marks the file done (the
        runner may then reconcile and delete it) only when every byte up to its size was read as JSONL.

        Raises :class:`~batchpipe.errors.DownloadError` when the download cannot be verified after the bounded
        retries, and the :class:`~batchpipe.errors.ApiError` family when the service refuses the requests.
        """
        expected = await self._file_size(file_id)
        stats = CollectStats()
        began = self._clock()
        retries = _Retries()
        retries.furthest = await self._offset(batch_id, kind)
        while True:
            start = await self._offset(batch_id, kind)
            decided = await self._decided(batch_id)
            try:
                committed = await self._attempt(
                    batch_id, file_id, kind, targets, start, expected, decided, stats, retries
                )
                break
            except _BadDownload as fault:
                now = await self._offset(batch_id, kind)
                if not fault.final:
                    retries.failed(reached=now)
                    retries.line_fault = fault.reason
                    stats.redownloads += 1
                if fault.final or retries.stalled >= self._download_attempts or retries.total > self._max_reconnects:
                    log.error("download failed", batch_id=batch_id, file_id=file_id, kind=kind, reason=fault.reason)
                    raise DownloadError(
                        batch_id=batch_id,
                        file_id=file_id,
                        kind=kind,
                        offset=now,
                        reason=fault.reason if retries.line_fault is None else retries.line_fault,
                        attempts=retries.total,
                    ) from None
                log.warning(
                    "download unreadable, downloading again",
                    batch_id=batch_id,
                    file_id=file_id,
                    kind=kind,
                    offset=now,
                    attempt=retries.total,
                    reason=fault.reason,
                )
                await self._sleep(_RETRY_BACKOFF.delay_s(max(retries.stalled - 1, 0)))
        await self._ledger.set_batch_progress(batch_id, **{f"{kind}_offset": committed, f"{kind}_done": 1})
        stats.elapsed_s = self._clock() - began
        log.info(
            "file collected",
            batch_id=batch_id,
            file_id=file_id,
            kind=kind,
            lines=stats.lines,
            images=stats.images,
            duplicates=stats.duplicates,
            mb=round(stats.bytes_read / 1e6, 1),
            s=round(stats.elapsed_s, 2),
        )
        return stats

    async def _file_size(self, file_id: str) -> int | None:
        """The file's ``bytes`` from ``GET /files/{file_id}``, or None when the object gives no usable size."""
        size = (await self._client.retrieve_file(file_id)).bytes  # parsed leniently: None when unusable
        if size is not None:
            return size
        log.warning("the file's size is unknown: a short download cannot be detected", file_id=file_id)
        return None

    async def _offset(self, batch_id: str, kind: str) -> int:
        """The committed offset of the batch's ``kind`` file (0 for a batch the ledger does not hold)."""
        batch = await self._ledger.batch(batch_id)
        return batch.offset(kind) if batch else 0

    async def _decided(self, batch_id: str) -> set[str]:
        """custom_ids of the batch whose row has left ``submitted``: a line for them is a duplicate."""
        others = [status for status in ItemStatus if status != ItemStatus.SUBMITTED]
        return {row.custom_id for row in await self._ledger.items(batch_id=batch_id, statuses=others)}

    async def _attempt(
        self,
        batch_id: str,
        file_id: str,
        kind: str,
        targets: Mapping[str, ItemTarget],
        start: int,
        expected: int | None,
        decided: set[str],
        stats: CollectStats,
        retries: _Retries,
    ) -> int:
        """One download from ``start``: reader → workers → writer (applies results in file order). Returns the
        committed offset at the end. Raises :class:`_BadDownload` (nothing past the bad line committed)."""
        committed = _Committed(start)
        winners = FirstLineWins(decided)
        seen = set(decided)
        queue: asyncio.Queue[tuple[int, bytes, int] | None] = asyncio.Queue(maxsize=self._queue_lines)
        results: asyncio.Queue[tuple[int, int, LineResult | _LineFault | None] | None] = asyncio.Queue(
            maxsize=self._queue_lines * 4
        )
        inflight: set[Future[LineResult | None]] = set()

        async def worker() -> None:
            while (entry := await queue.get()) is not None:
                seq, line, end = entry
                outcome: LineResult | _LineFault | None
                future = self._pool.submit(
                    process_line, line, targets, self._store, self._verifier, seq=seq, winners=winners
                )
                inflight.add(future)
                future.add_done_callback(inflight.discard)
                try:
                    outcome = await asyncio.wrap_future(future)
                except ValueError as exc:  # not JSON, or no custom_id: this download is not the file
                    outcome = _line_fault(line, end, exc)
                await results.put((seq, end, outcome))
            await results.put(None)

        async def apply(ready: list[tuple[int, LineResult | None]]) -> None:
            # on the ledger thread: the commit's fsync must not stall the reader on the event loop
            await self._ledger.call(partial(self._apply, batch_id, file_id, kind, ready, seen, committed, stats))

        async def writer() -> None:
            finished_workers = 0
            waiting: dict[int, tuple[int, LineResult | _LineFault | None]] = {}
            next_seq = 0
            ready: list[tuple[int, LineResult | None]] = []
            last_commit = self._clock()
            while finished_workers < self._workers:
                entry = await results.get()
                if entry is None:
                    finished_workers += 1
                else:
                    waiting[entry[0]] = (entry[1], entry[2])
                while next_seq in waiting:  # in file order: nothing past a bad line is ever applied
                    end, outcome = waiting.pop(next_seq)
                    next_seq += 1
                    if isinstance(outcome, _LineFault):
                        if ready:
                            await apply(ready)
                        raise _BadDownload(outcome.reason)
                    ready.append((end, outcome))
                due = len(ready) >= self._commit_every or self._clock() - last_commit >= self._commit_every_s
                if ready and (due or entry is None):
                    await apply(ready)
                    ready = []
                    last_commit = self._clock()
            if ready:
                await apply(ready)

        async def reader() -> None:
            await self._read_lines(file_id, start, expected, queue, stats, retries)
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
        finally:
            if inflight:  # lines of an abandoned download still in a thread: let them end before the next one
                await asyncio.get_running_loop().run_in_executor(None, wait_futures, list(inflight))
        return committed.offset

    def _apply(
        self,
        batch_id: str,
        file_id: str,
        kind: str,
        entries: list[tuple[int, LineResult | None]],
        seen: set[str],
        committed: _Committed,
        stats: CollectStats,
        db: Ledger,
    ) -> None:
        """Apply a group of line results, in file order, in one transaction of ``db`` with the offset after the
        last (called on the ledger thread). A custom_id already in ``seen`` is a duplicate: counted, logged,
        not applied."""
        self._store.sync()  # files first: a committed row always has its file on disk
        offset = committed.offset
        with db.transaction():
            for end, result in entries:
                offset = end
                if result is None:
                    stats.unknown += 1
                elif result.duplicate or result.custom_id in seen:
                    stats.duplicates += 1
                    log.warning(
                        "another line for a custom_id already decided: the first line is kept",
                        custom_id=result.custom_id,
                        batch_id=batch_id,
                        file_id=file_id,
                        line_end=end,
                    )
                else:
                    seen.add(result.custom_id)
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
            db.set_batch_progress(batch_id, **{f"{kind}_offset": offset})
        committed.offset = offset

    async def _read_lines(
        self,
        file_id: str,
        start: int,
        expected: int | None,
        queue: asyncio.Queue[tuple[int, bytes, int] | None],
        stats: CollectStats,
        retries: _Retries,
    ) -> None:
        """Download from ``start`` and enqueue complete lines with their end offsets. A cut connection, or a
        body that ends before ``expected`` bytes (the file's size), is requested again from the last complete
        line. Raises :class:`_BadDownload` for a body longer than ``expected``, and (``final``) when the cuts
        have spent the retry budget."""
        position = start  # offset of the first byte not yet part of an enqueued line
        seq = 0
        while True:
            pending: list[bytes | memoryview] = []  # pieces of the line being read (no newline yet)
            pending_bytes = 0
            try:
                async with self._client.stream_file_content(file_id, start_byte=position) as stream:
                    # FileStream yields bytes from start_byte on, whether or not the server honoured Range.
                    # Chunks are taken as the network delivers them (no re-chunking copy) and each line is
                    # joined once from its pieces: one copy of every byte, however many chunks a line spans.
                    async for chunk in stream.aiter_bytes(self._chunk_bytes):
                        size = len(chunk)
                        stats.bytes_read += size
                        begin = 0
                        while (newline := chunk.find(b"\n", begin)) != -1:
                            if pending:
                                pending.append(memoryview(chunk)[begin:newline])
                                line = b"".join(pending)
                                pending = []
                                pending_bytes = 0
                            else:
                                line = chunk[begin:newline]
                            position += len(line) + 1
                            begin = newline + 1
                            if line.strip():
                                await queue.put((seq, line, position))
                                seq += 1
                                stats.lines += 1
                        if begin < size:
                            pending.append(memoryview(chunk)[begin:] if begin else chunk)
                            pending_bytes += size - begin
                end = position + pending_bytes
                if expected is not None and end < expected:
                    raise ApiConnectionError(
                        f"the body ended at byte {end} of the file's {expected}",
                        method="GET",
                        url=f"/files/{file_id}/content",
                    )
                if expected is not None and end > expected:
                    raise _BadDownload(f"the body runs to byte {end}, past the file's {expected} bytes")
                last = b"".join(pending)
                if last.strip():  # a last line without a trailing newline
                    position += len(last)
                    await queue.put((seq, last, position))
                    stats.lines += 1
                return
            except ApiConnectionError as exc:
                retries.failed(reached=position)
                stats.reconnects += 1
                if retries.stalled >= self._download_attempts or retries.total > self._max_reconnects:
                    raise _BadDownload(f"cut or short {retries.total} time(s), last: {exc}", final=True) from exc
                log.warning(
                    "download cut, resuming",
                    file_id=file_id,
                    offset=position,
                    attempt=retries.total,
                    error=str(exc),
                )
                await self._sleep(_RETRY_BACKOFF.delay_s(max(retries.stalled - 1, 0)))
