"""The OpenAI API objects the pipeline reads, as typed models parsed once at the client boundary.

As the official SDK does (openai-python ``src/openai/types/batch.py``, ``file_object.py``; ``_models.py`` keeps
unknown fields), every model allows extra fields, so a field the service adds later passes through. Unlike the
SDK, the fields batchpipe depends on are parsed *leniently*: a wrong type never crashes a run or a resume.

* times (``created_at``, ``completed_at``...): unix seconds; an int, a float, a numeric string or an ISO 8601
  string is converted; anything else becomes None (and the caller falls back, e.g. to now);
* counts and sizes (``request_counts.*``, ``bytes``): non-negative ints; anything else becomes None / 0;
* nested objects (``request_counts``, ``errors``, ``metadata``) of the wrong shape become None;
* ``status``: any string is kept (the service adds statuses: an unknown one is not terminal, see
  :func:`batchpipe.domain.records.batch_status_is_terminal`); a missing one is ``"unknown"``.

Only an object without a string ``id`` cannot be used at all: :meth:`ApiObject.parse` raises
:class:`~batchpipe.errors.ApiProtocolError` (exit 3: the service, not the input, is at fault).

Shapes: SPEC ``Batch``, ``BatchRequestCounts``, ``OpenAIFile``, ``ListBatchesResponse``, ``ListFilesResponse``
(``../shared/reference/openai-openapi.yaml``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batchpipe.errors import ApiProtocolError

__all__ = [
    "ApiObject",
    "ApiShape",
    "Batch",
    "BatchErrorEntry",
    "BatchErrors",
    "FileObject",
    "Page",
    "RequestCounts",
    "lenient_count",
    "lenient_time",
]

#: Largest time accepted as unix seconds (year 9999); a bigger number is not a time.
_MAX_TIME_S: Final = 253_402_300_799
#: Largest count accepted (a batch holds at most 50,000 requests; files at most 200 MB, FACTS §1).
_MAX_COUNT: Final = 10**12


def lenient_time(value: object) -> int | None:
    """Unix seconds from an int, float, numeric string or ISO 8601 string (``2026-11-30T10:00:00Z``); None for
    anything else (None, bools, negative or absurd numbers, other text, lists...)."""
    if isinstance(value, bool) or value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                number = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    if number is None or not math.isfinite(number) or number < 0 or number > _MAX_TIME_S:
        return None
    return int(number)


def lenient_count(value: object) -> int | None:
    """A non-negative int from an int, an integral float or a numeric string; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value <= _MAX_COUNT:
        return value
    return None


class ApiShape(BaseModel):
    """Base of every API model: extra fields allowed (kept), immutable."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ApiObject(ApiShape):
    """An API object with its own ``id`` (a Batch, a file)."""

    id: str

    @classmethod
    def parse(cls, raw: object, *, what: str = "") -> Self:
        """The model of ``raw`` (a decoded JSON value). Raises :class:`~batchpipe.errors.ApiProtocolError`
        naming ``what`` (e.g. ``"POST /batches"``) when ``raw`` is not an object with a string ``id``."""
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw.get("id"):
            shape = type(raw).__name__ if not isinstance(raw, dict) else f"an object without an id ({sorted(raw)[:8]})"
            raise ApiProtocolError(f"{what or cls.__name__}: the service answered {shape}, not a {cls.__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:  # only possible for a field this module types strictly
            raise ApiProtocolError(f"{what or cls.__name__}: unusable {cls.__name__}: {exc.errors()[:1]}") from None


class RequestCounts(ApiShape):
    """SPEC ``BatchRequestCounts``: requests in the batch so far (non-negative ints; 0 when not readable)."""

    total: int = 0
    completed: int = 0
    failed: int = 0

    @field_validator("total", "completed", "failed", mode="before")
    @classmethod
    def _count(cls, value: object) -> int:
        return lenient_count(value) or 0


class BatchErrorEntry(ApiShape):
    """One entry of a batch's ``errors.data`` (SPEC ``BatchError``): ``code``, ``message``, ``param``, ``line``."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None

    @field_validator("code", "message", "param", mode="before")
    @classmethod
    def _text(cls, value: object) -> str | None:
        return None if value is None else str(value)

    @field_validator("line", mode="before")
    @classmethod
    def _line(cls, value: object) -> int | None:
        return lenient_count(value)


class BatchErrors(ApiShape):
    """A batch's ``errors`` (validation errors of a ``failed`` batch): ``data`` entries that are objects."""

    data: list[BatchErrorEntry] = Field(default_factory=list)

    @field_validator("data", mode="before")
    @classmethod
    def _entries(cls, value: object) -> list[object]:
        return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


_TIMES: Final = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "expires_at",
)


class Batch(ApiObject):
    """SPEC ``Batch`` as batchpipe reads it. Times are unix seconds or None; ``request_counts``, ``errors`` and
    ``metadata`` are None when absent or of the wrong shape."""

    status: str = "unknown"
    endpoint: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    expires_at: int | None = None
    request_counts: RequestCounts | None = None
    errors: BatchErrors | None = None
    metadata: dict[str, str] | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> str:
        return value if isinstance(value, str) and value else "unknown"

    @field_validator("endpoint", "input_file_id", "output_file_id", "error_file_id", mode="before")
    @classmethod
    def _id(cls, value: object) -> str | None:
        return value if isinstance(value, str) and value else None

    @field_validator(*_TIMES, mode="before")
    @classmethod
    def _time(cls, value: object) -> int | None:
        return lenient_time(value)

    @field_validator("request_counts", "errors", mode="before")
    @classmethod
    def _object(cls, value: object) -> object:
        return value if isinstance(value, dict) else None

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value: object) -> dict[str, str] | None:
        if not isinstance(value, dict):
            return None
        return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}

    @property
    def ended_at(self) -> int | None:
        """When the batch reached its end (completed, failed, expired or cancelled), unix seconds, or None."""
        for name in ("completed_at", "failed_at", "expired_at", "cancelled_at"):
            value = getattr(self, name)
            if value is not None:
                return int(value)
        return None

    def as_record(self) -> dict[str, Any]:
        """The fields the ledger stores (``Ledger.record_batch`` / ``update_batch``), with the parsed values:
        ``id``, ``status``, file ids, times, ``request_counts`` and ``errors`` as plain JSON (or None)."""
        record: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "input_file_id": self.input_file_id,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "request_counts": self.request_counts.model_dump() if self.request_counts is not None else None,
            "errors": self.errors.model_dump(mode="json", exclude_none=True) if self.errors else None,
            "metadata": self.metadata,
        }
        for name in _TIMES:
            record[name] = getattr(self, name)
        return record


class FileObject(ApiObject):
    """SPEC ``OpenAIFile`` as batchpipe reads it: ``bytes`` (size) and times may be None when unreadable."""

    purpose: str | None = None
    filename: str | None = None
    bytes: int | None = None
    created_at: int | None = None
    expires_at: int | None = None
    status: str | None = None

    @field_validator("purpose", "filename", "status", mode="before")
    @classmethod
    def _text(cls, value: object) -> str | None:
        return value if isinstance(value, str) else None

    @field_validator("bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> int | None:
        return lenient_count(value)

    @field_validator("created_at", "expires_at", mode="before")
    @classmethod
    def _time(cls, value: object) -> int | None:
        return lenient_time(value)

    def as_record(self) -> dict[str, Any]:
        """The fields the ledger stores (``Ledger.record_file``)."""
        return {
            "id": self.id,
            "purpose": self.purpose or "",
            "filename": self.filename,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


T = TypeVar("T", bound=ApiObject)


class Page(Generic[T]):
    """One page of a list endpoint (SPEC ``ListBatchesResponse`` / ``ListFilesResponse``): ``data`` (the objects
    that parse; an entry without an id is dropped and counted in ``dropped``), ``has_more``, ``last_id`` (the
    cursor for the next page: the service's ``last_id``, else the last object's id; None when there is none)."""

    __slots__ = ("data", "dropped", "has_more", "last_id")

    def __init__(self, data: list[T], *, has_more: bool, last_id: str | None, dropped: int = 0) -> None:
        self.data = data
        self.has_more = has_more
        self.last_id = last_id
        self.dropped = dropped

    @classmethod
    def parse(cls, raw: object, model: type[T], *, what: str = "") -> Page[T]:
        """The page of ``raw``. Raises :class:`~batchpipe.errors.ApiProtocolError` when ``raw`` is not an object
        whose ``data`` is a list."""
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise ApiProtocolError(f"{what or 'list'}: the service answered {type(raw).__name__}, not a list page")
        data: list[T] = []
        dropped = 0
        for entry in raw["data"]:
            try:
                data.append(model.parse(entry, what=what))
            except ApiProtocolError:
                dropped += 1
        cursor = raw.get("last_id")
        last_id = cursor if isinstance(cursor, str) and cursor else (data[-1].id if data else None)
        return cls(data, has_more=raw.get("has_more") is True, last_id=last_id, dropped=dropped)
