"""Ledger records and the status transition tables every ledger enforces (SQLite today, PostgreSQL next).

:class:`ItemRow` is one attempt of one item, :class:`ShardRow` one batch input file and its submission intent,
:class:`BatchRow` one batch the service created and how far its collection got.
:data:`ITEM_TRANSITIONS` and :data:`SHARD_TRANSITIONS` say which status changes are allowed; a ledger refuses
any other (``TransitionError``). :data:`BATCH_TRANSITIONS` says which batch statuses the service may move to next;
a ledger keeps the status it has when a poll reports an earlier one (:func:`batch_may_move`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson

from batchpipe.domain.items import BatchStatus, ImageRef, Item, ItemStatus
from batchpipe.domain.locations import local_path
from batchpipe.domain.spec import Endpoint

__all__ = [
    "BATCH_TRANSITIONS",
    "ITEM_COLUMNS",
    "ITEM_TRANSITIONS",
    "SHARD_TRANSITIONS",
    "BatchRow",
    "HashColumn",
    "ItemRow",
    "ItemSummary",
    "ShardRow",
    "batch_may_move",
    "batch_status_is_terminal",
    "error_groups",
    "export_lines",
    "hash_column",
    "highest_attempts",
    "iso_seconds",
    "item_summary",
    "new_item_params",
]

S = ItemStatus
#: Allowed item status changes: from → the statuses it may move to.
ITEM_TRANSITIONS: Final[Mapping[ItemStatus, frozenset[ItemStatus]]] = {
    S.PENDING: frozenset({S.SUBMITTED, S.FAILED, S.SUPERSEDED}),
    S.SUBMITTED: frozenset({S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED, S.MISSING}),
    S.SUCCEEDED: frozenset({S.SUPERSEDED}),
    S.FAILED: frozenset({S.SUPERSEDED}),
    S.EXPIRED: frozenset({S.SUPERSEDED}),
    S.CANCELLED: frozenset({S.SUPERSEDED}),
    S.MISSING: frozenset({S.SUPERSEDED}),
    S.INVALID: frozenset({S.SUPERSEDED}),
    S.SUPERSEDED: frozenset(),
}

#: Shard (submission intent) statuses, in order; ``indeterminate`` stops the run for a human.
SHARD_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "built": frozenset({"uploading"}),
    "uploading": frozenset({"uploaded", "built", "indeterminate"}),
    "uploaded": frozenset({"creating"}),
    "creating": frozenset({"created", "uploaded", "indeterminate"}),
    "created": frozenset({"done"}),
    "indeterminate": frozenset({"built", "uploaded", "created"}),
    "done": frozenset(),
}

B = BatchStatus
_BATCH_ENDS: Final = frozenset({B.COMPLETED, B.FAILED, B.EXPIRED, B.CANCELLED})
#: Batch statuses as a ledger may follow them: from → every status that may come later (FACTS §2.2: validating →
#: in_progress → finalizing → completed; any non-terminal → failed | expired | cancelling → cancelled). Later, not
#: next: a poll sees snapshots and may skip statuses (validating → completed). Every non-terminal status may reach
#: every terminal one (also cancelling → completed: a terminal status is never a stale view, since it never
#: changes, and refusing a real one would leave the batch open in the ledger forever). Terminal statuses move
#: nowhere. Statuses the service adds later are not in the table; :func:`batch_may_move` places them.
BATCH_TRANSITIONS: Final[Mapping[BatchStatus, frozenset[BatchStatus]]] = {
    B.VALIDATING: frozenset({B.IN_PROGRESS, B.FINALIZING, B.CANCELLING}) | _BATCH_ENDS,
    B.IN_PROGRESS: frozenset({B.FINALIZING, B.CANCELLING}) | _BATCH_ENDS,
    B.FINALIZING: frozenset({B.CANCELLING}) | _BATCH_ENDS,
    B.CANCELLING: _BATCH_ENDS,
    B.COMPLETED: frozenset(),
    B.FAILED: frozenset(),
    B.EXPIRED: frozenset(),
    B.CANCELLED: frozenset(),
}
_KNOWN_BATCH_STATUSES: Final[Mapping[str, BatchStatus]] = {str(s): s for s in BatchStatus}


def batch_status_is_terminal(status: str) -> bool:
    """True for ``completed``, ``failed``, ``expired`` and ``cancelled``; False for every other string, including
    a status this code does not know (the service adds statuses: one we cannot place is taken as still running)."""
    known = _KNOWN_BATCH_STATUSES.get(status)
    return known is not None and known.terminal


def batch_may_move(from_status: str, to_status: str) -> bool:
    """True if a batch stored as ``from_status`` may take ``to_status`` (a move forward); False for the same status
    (no move) and for a backwards or sideways one (a lagging list page or CDN-cached object: keep the newer status).

    Known statuses follow :data:`BATCH_TRANSITIONS`. A status not in :class:`~batchpipe.domain.items.BatchStatus`
    counts as not terminal: it may follow any non-terminal status, and any status may follow it (there is no order
    to check it against). A terminal status never moves.
    """
    if from_status == to_status:
        return False
    known_from = _KNOWN_BATCH_STATUSES.get(from_status)
    if known_from is None:
        return True
    known_to = _KNOWN_BATCH_STATUSES.get(to_status)
    if known_to is None:
        return not known_from.terminal
    return known_to in BATCH_TRANSITIONS[known_from]


#: The columns of an item row, in :class:`ItemRow` order.
ITEM_COLUMNS: Final = [
    "custom_id",
    "job",
    "item_key",
    "attempt",
    "run_id",
    "previous_custom_id",
    "endpoint",
    "model",
    "request_hash",
    "body_json",
    "metadata_json",
    "source",
    "product_key",
    "variant",
    "inputs_json",
    "input_tokens_est",
    "shard",
    "batch_id",
    "status",
    "retryable",
    "error_code",
    "error_message",
    "output_uri",
    "sha256",
    "bytes",
    "format",
    "width",
    "height",
    "c2pa_state",
    "c2pa_json",
    "usage_json",
    "cost_usd",
    "created_at",
    "updated_at",
    "source_hash",
]


#: The columns a re-run compares to skip an item already succeeded (:meth:`batchpipe.ports.Ledger.succeeded_with`):
#: the request it sent, or what it was built from (``source_hash``: no rendering needed to compare).
HashColumn = Literal["request_hash", "source_hash"]


def hash_column(by: str) -> str:
    """``by`` when it is one of :data:`HashColumn` (safe to put in SQL); raises ``ValueError`` otherwise."""
    if by not in ("request_hash", "source_hash"):
        raise ValueError(f"not a hash column: {by!r}")
    return by


#: Columns a new item row may leave out, and what they are then: its times (the insert's clock) and no token
#: estimate.
_NEW_ITEM_DEFAULTS: Final = ("created_at", "updated_at", "input_tokens_est")


def new_item_params(
    rows: Iterable[Mapping[str, object]], now: float
) -> tuple[tuple[str, ...], list[tuple[object, ...]]]:
    """The columns and the parameter tuples of one insert of new item rows: ``(columns, params)``.

    ``columns``: the :data:`ITEM_COLUMNS` some row gives (in that order) and ``created_at``, ``updated_at``,
    ``input_tokens_est``; a column no row gives is left to its default (NULL). A row's missing times are ``now``
    (unix seconds), its missing token estimate 0; a column another row gives and this one lacks is NULL; keys
    that are not columns are ignored. Binding only the columns given matters at catalog scale: a build's rows
    give 17 of the 34 columns (measured: 100,000 inserts, 25 → 18 µs of CPU a row).
    Raises ``ValueError`` for a row whose ``status`` is not ``pending`` or ``invalid`` (new items start there).
    """
    rows = list(rows)
    present: set[str] = set().union(*rows) if rows else set()
    columns = tuple(c for c in ITEM_COLUMNS if c in present or c in _NEW_ITEM_DEFAULTS)
    base: dict[str, object] = dict.fromkeys(columns)
    base.update(created_at=now, updated_at=now, input_tokens_est=0)
    pick = operator.itemgetter(*columns)
    params: list[tuple[object, ...]] = []
    for row in rows:
        if row.get("status") not in (ItemStatus.PENDING, ItemStatus.INVALID):
            raise ValueError(f"new items start as pending or invalid, not {row.get('status')!r}")
        params.append(pick({**base, **row}))
    return columns, params


@dataclass(frozen=True, slots=True)
class ItemRow:
    """One ledger item row (one attempt of one item). Times are unix seconds; ``bytes`` is the image size."""

    custom_id: str
    job: str
    item_key: str
    attempt: int
    run_id: str
    previous_custom_id: str | None
    endpoint: str
    model: str
    request_hash: str
    body_json: str
    metadata_json: str
    source: str
    product_key: str | None
    variant: str | None
    inputs_json: str | None
    input_tokens_est: int
    shard: str | None
    batch_id: str | None
    status: str
    retryable: int | None
    error_code: str | None
    error_message: str | None
    output_uri: str | None
    sha256: str | None
    bytes: int | None
    format: str | None
    width: int | None
    height: int | None
    c2pa_state: str | None
    c2pa_json: str | None
    usage_json: str | None
    cost_usd: float | None
    created_at: float
    updated_at: float
    #: what the row was built from (:func:`batchpipe.input.validate.make_items`: a catalog row and the job spec's
    #: part that renders it), or None: a re-run skips a row whose latest success has the same without rendering it
    source_hash: str | None = None

    @property
    def body(self) -> dict[str, object]:
        """The request body as sent (parsed from ``body_json``)."""
        parsed: dict[str, object] = orjson.loads(self.body_json)
        return parsed

    def as_item(
        self,
        *,
        body: dict[str, object] | None = None,
        metadata: dict[str, object] | None = None,
        source: str | None = None,
    ) -> Item:
        """The :class:`~batchpipe.domain.items.Item` this row sent (for a new attempt), with ``body``, ``metadata``
        and ``source`` replaced when given; product key, variant and input references are kept."""
        endpoint: Endpoint = "/v1/images/edits" if self.endpoint == "/v1/images/edits" else "/v1/images/generations"
        return Item(
            key=self.item_key,
            endpoint=endpoint,
            body=self.body if body is None else body,
            metadata=orjson.loads(self.metadata_json) if metadata is None else metadata,
            source=self.source if source is None else source,
            product_key=self.product_key,
            variant=self.variant,
            inputs=ImageRef.parse_list(self.inputs_json),
        )

    @property
    def output_path(self) -> Path | None:
        """The local file of the item's (first) image when the store is a local folder (a ``file://``
        :attr:`output_uri`), else None."""
        return local_path(self.output_uri)

    def to_record(self) -> dict[str, object]:
        """A flat JSON-ready dict for exports: every column, with JSON columns parsed, and ``output_path``: the
        local file of ``output_uri`` when the image is in a local folder (else None)."""
        record: dict[str, object] = {}
        for name in ITEM_COLUMNS:
            value = getattr(self, name)
            if name.endswith("_json"):
                record[name.removesuffix("_json")] = orjson.loads(value) if value else None
            else:
                record["key" if name == "item_key" else name] = value
            if name == "output_uri":
                path = self.output_path
                record["output_path"] = str(path) if path is not None else None
        return record

    def export_record(self) -> dict[str, object]:
        """The item as ``batchpipe ledger export`` writes it: :meth:`to_record` without the request ``body``, with the
        ``prompt`` it sent (last; None for a body without a string ``prompt``) and ``created_at`` / ``updated_at``
        as ISO 8601 UTC to the second (:func:`iso_seconds`) instead of unix seconds. The SQL ledgers build the same
        record in SQL (``export_jsonl``); ``tests/test_ledger_export.py`` holds them to this one."""
        record = self.to_record()
        record.pop("source_hash", None)  # bookkeeping of re-runs, not of the item
        body = record.pop("body", None)
        prompt = body.get("prompt") if isinstance(body, dict) else None
        record["prompt"] = prompt if isinstance(prompt, str) else None
        for name in ("created_at", "updated_at"):
            record[name] = iso_seconds(record.get(name))
        return record


class _ColumnRow(Protocol):
    """A database row read by column name: a ``dict`` (psycopg's ``dict_row``) or a ``sqlite3.Row``."""

    def __getitem__(self, name: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


def highest_attempts(rows: Iterable[_ColumnRow]) -> dict[str, ItemRow]:
    """``{item_key: ItemRow}`` of each key's highest ``attempt`` among ``rows`` (items-table rows, in any order):
    what a SQL ledger's ``latest_attempts`` makes of one job's rows, picked here rather than by sorting each chunk
    of them in the database. Only the winners become :class:`ItemRow`."""
    latest: dict[str, _ColumnRow] = {}
    for row in rows:
        key = str(row["item_key"])
        if key not in latest or row["attempt"] > latest[key]["attempt"]:
            latest[key] = row
    # keys(), not iteration: a sqlite3.Row iterates over its values
    return {key: ItemRow(**{name: row[name] for name in row.keys()}) for key, row in latest.items()}  # noqa: SIM118


def iso_seconds(ts: object) -> str | None:
    """Unix seconds as ISO 8601 UTC to the second (``2026-11-30T10:15:02Z``; the fraction is dropped after rounding
    to the microsecond, as :meth:`datetime.fromtimestamp` does); None when ``ts`` is not a number."""
    if not isinstance(ts, int | float):
        return None
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ItemSummary:
    """What ``batchpipe status`` counts of a job's (or the ledger's) items, from one pass over them
    (:meth:`batchpipe.ports.Ledger.item_summary`): ``items`` every attempt by status, ``current`` each item's
    latest attempt by status (only statuses that occur, sorted), ``cost_usd`` the sum of every attempt's cost (USD,
    0.0 if none), ``errors`` the latest attempts in the error statuses asked for, grouped as
    :meth:`~batchpipe.ports.Ledger.error_counts` groups them (``code``, ``status``, ``count``, ``retryable``,
    ``example_custom_id``; most items first)."""

    items: dict[str, int]
    current: dict[str, int]
    cost_usd: float
    errors: list[dict[str, object]]


def export_lines(rows: Iterable[ItemRow], *, per_chunk: int = 1000) -> Iterator[str]:
    """The export of ``rows`` as JSON lines (``orjson.dumps(row.export_record())`` and a newline each), one string
    per ``per_chunk`` rows: what a ledger that builds each record in Python yields from ``export_jsonl``."""
    lines: list[bytes] = []
    for row in rows:
        lines.append(orjson.dumps(row.export_record()))
        if len(lines) == per_chunk:
            lines.append(b"")  # the last line's newline
            yield b"\n".join(lines).decode()
            lines = []
    if lines:
        lines.append(b"")
        yield b"\n".join(lines).decode()


def item_summary(groups: Iterable[Mapping[str, object]], error_statuses: Iterable[str]) -> ItemSummary:
    """The :class:`ItemSummary` of a SQL ledger's one aggregate query, whose rows are of two kinds, told apart by
    ``superseded``:

    - ``0``: one per (``status``, ``error_code``) over every attempt: ``n`` rows, ``cost`` their summed
      ``cost_usd`` (None if none); ``r`` the highest ``retryable`` and ``example`` the smallest ``custom_id`` of
      those rows in an error status that are their item's latest attempt (None if there are none);
    - ``1``: ``n``, how many rows of that (``status``, ``error_code``) a higher attempt of their item supersedes.

    A (``status``, ``error_code``)'s count of latest attempts is its first count less its second. Error groups of the
    same (code, status) (a NULL code counts under its status) are merged."""
    wanted = {str(s) for s in error_statuses}
    rows = list(groups)
    older: dict[tuple[str, object], int] = {}
    for group in rows:
        if group["superseded"]:
            key = (str(group["status"]), group["error_code"])
            older[key] = older.get(key, 0) + int(str(group["n"]))
    items: dict[str, int] = {}
    current: dict[str, int] = {}
    costs: list[float] = []
    merged: dict[tuple[str, str], dict[str, object]] = {}
    for group in rows:
        if group["superseded"]:
            continue
        status, n = str(group["status"]), int(str(group["n"]))
        items[status] = items.get(status, 0) + n
        if group["cost"] is not None:
            costs.append(float(str(group["cost"])))
        latest = n - older.get((status, group["error_code"]), 0)
        if latest <= 0:
            continue
        current[status] = current.get(status, 0) + latest
        if status in wanted:
            code = str(group["error_code"] or status)
            entry = merged.setdefault((code, status), {"code": code, "status": status, "n": 0, "r": 0, "example": None})
            entry["n"] = int(str(entry["n"])) + latest
            entry["r"] = max(int(str(entry["r"])), int(str(group["r"] or 0)))
            example = str(group["example"])
            entry["example"] = example if entry["example"] is None else min(str(entry["example"]), example)
    return ItemSummary(
        items=dict(sorted(items.items())),
        current=dict(sorted(current.items())),
        cost_usd=math.fsum(costs),
        errors=error_groups(merged.values()),
    )


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard: a batch input file and its submission intent (``status`` in :data:`SHARD_TRANSITIONS`)."""

    name: str
    run_id: str
    job: str
    endpoint: str
    model: str
    path: str
    requests: int
    bytes: int
    sha256: str
    input_tokens: int
    status: str
    input_file_id: str | None
    batch_id: str | None
    intent_at: float | None
    note: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One batch the service created, as the ledger keeps it: the service's view (``status``, file ids,
    ``request_counts_json``, ``errors_json``; times in unix seconds) and collection progress (``output_offset`` /
    ``error_offset``: bytes of the output / error file applied; ``output_done`` / ``error_done`` / ``reconciled``:
    0 or 1)."""

    batch_id: str
    shard: str
    run_id: str
    model: str
    status: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    request_counts_json: str | None
    errors_json: str | None
    created_at: float
    ended_at: float | None
    output_offset: int
    error_offset: int
    output_done: int
    error_done: int
    reconciled: int
    updated_at: float

    @property
    def request_counts(self) -> dict[str, int]:
        """``request_counts`` as the service last reported it (``{total, completed, failed}``; ``{}`` if never)."""
        parsed = orjson.loads(self.request_counts_json) if self.request_counts_json else None
        return parsed if isinstance(parsed, dict) else {}

    @property
    def errors(self) -> list[dict[str, object]]:
        """The batch's ``errors.data`` (validation errors of a ``failed`` batch), ``[]`` if none."""
        parsed = orjson.loads(self.errors_json) if self.errors_json else None
        data = parsed.get("data") if isinstance(parsed, dict) else None
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    def offset(self, kind: str) -> int:
        """Bytes of the ``kind`` (``output`` or ``error``) file already applied to the ledger."""
        return self.output_offset if kind == "output" else self.error_offset

    def done(self, kind: str) -> bool:
        """True when the ``kind`` (``output`` or ``error``) file has been applied to its end."""
        return bool(self.output_done if kind == "output" else self.error_done)


def error_groups(rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """The ledger's ``error_counts`` answer from its aggregate query's rows (``code``, ``status``, ``n`` items,
    ``r`` the highest ``retryable``, ``example`` one ``custom_id``), as the port gives it: ``{code, status, count,
    retryable, example_custom_id}`` dicts, most items first, then by code and status (shared by the SQL ledgers)."""
    found: list[dict[str, object]] = [
        {
            "code": str(r["code"]),
            "status": str(r["status"]),
            "count": int(str(r["n"])),
            "retryable": bool(r["r"]),
            "example_custom_id": str(r["example"]),
        }
        for r in rows
    ]
    return sorted(found, key=lambda g: (-int(str(g["count"])), str(g["code"]), str(g["status"])))
