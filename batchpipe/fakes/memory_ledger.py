"""An in-memory :class:`~batchpipe.ports.Ledger` with the rules of the SQLite one, for tests.

Same tables and columns as :mod:`batchpipe.adapters.sqlite_ledger` (rows are dicts), same status tables
(:data:`~batchpipe.domain.records.ITEM_TRANSITIONS`, :data:`~batchpipe.domain.records.SHARD_TRANSITIONS`), same
guarded compare-and-set transitions, same ``events`` (one per item moved), same forward-only batch statuses, same
claims (owner + lease on the ledger's clock), same errors. Values are stored with the SQLite column
affinities (a flag given as True reads back as 1, a time given as an int reads back as a float), so rows read
back alike from both. Transactions keep an undo log: rolling back replays it backwards.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import structlog

from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import (
    ITEM_COLUMNS,
    ITEM_TRANSITIONS,
    SHARD_TRANSITIONS,
    BatchRow,
    HashColumn,
    ItemRow,
    ItemSummary,
    ShardRow,
    batch_may_move,
    export_lines,
    hash_column,
)
from batchpipe.domain.redact import redact_value
from batchpipe.errors import LedgerError, TransitionError

if TYPE_CHECKING:
    from batchpipe.ports import Ledger

__all__ = ["MemoryLedger"]

Row = dict[str, Any]
Key = TypeVar("Key", str, tuple[str, str])
log = structlog.get_logger("batchpipe.ledger")


def _columns(spec: str) -> dict[str, tuple[str, bool]]:
    """``"name affinity[!], ..."`` → ``{name: (affinity, required)}`` (``!``: NOT NULL), as in the SQL schema."""
    columns: dict[str, tuple[str, bool]] = {}
    for part in spec.split(","):
        name, affinity = part.split()
        columns[name] = (affinity.rstrip("!"), affinity.endswith("!"))
    return columns


_RUNS: Final = _columns(
    "run_id text!, job text!, spec_hash text!, api text!, output_dir text, trust text, spec_path text, status text!,"
    " started_at real!, finished_at real, built_at real"
)
_ITEMS: Final = _columns(
    "custom_id text!, job text!, item_key text!, attempt integer!, run_id text!, previous_custom_id text,"
    " endpoint text!, model text!, request_hash text!, body_json text!, metadata_json text!, source text!,"
    " product_key text, variant text, inputs_json text, input_tokens_est integer!, shard text, batch_id text,"
    " status text!, retryable integer, error_code text, error_message text, output_uri text, sha256 text,"
    " bytes integer, format text, width integer, height integer, c2pa_state text, c2pa_json text, usage_json text,"
    " cost_usd real, created_at real!, updated_at real!, source_hash text"
)
_SHARDS: Final = _columns(
    "name text!, run_id text!, job text!, endpoint text!, model text!, path text!, requests integer!,"
    " bytes integer!, sha256 text!, input_tokens integer!, status text!, input_file_id text, batch_id text,"
    " intent_at real, note text, created_at real!, updated_at real!"
)
_BATCHES: Final = _columns(
    "batch_id text!, shard text!, run_id text!, model text!, status text!, input_file_id text!, output_file_id text,"
    " error_file_id text, request_counts_json text, errors_json text, created_at real!, ended_at real,"
    " output_offset integer!, error_offset integer!, output_done integer!, error_done integer!, reconciled integer!,"
    " updated_at real!"
)
_FILES: Final = _columns(
    "file_id text!, role text!, purpose text!, filename text, bytes integer, sha256 text, created_at real!,"
    " expires_at real, deleted_at real"
)
_CLAIMS: Final = _columns("kind text!, key text!, owner text!, expires_at real!")
#: Columns that name a row: changing them would make another row (the in-memory ledger refuses to).
_IDENTITY_OF: Final = {
    "item": frozenset({"custom_id", "job", "item_key", "attempt"}),
    "shard": frozenset({"name"}),
    "batch": frozenset({"batch_id"}),
}
_INTEGER_TEXT: Final = re.compile(r"\s*[+-]?\d+\s*")
_REAL_TEXT: Final = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_PAGE: Final = 1000
_CHUNK: Final = 500  # the ids per guarded update, as in SqliteLedger (a strict check is per chunk)


def _store_value(table: str, column: str, affinity: str, value: object) -> object:
    """``value`` as SQLite stores it in a column of ``affinity`` (``text``/``integer``/``real``).

    Raises LedgerError for a type SQLite cannot bind (anything but None, bool, int, float, str, bytes).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, str):
        value = str(value)  # a StrEnum member is stored as its plain value
    elif isinstance(value, int):
        value = int(value)
    elif isinstance(value, float):
        value = float(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    else:
        raise LedgerError(f"cannot store a {type(value).__name__} in {table}.{column}")
    if affinity == "text":
        return value if isinstance(value, str) else repr(value)
    if isinstance(value, str):
        if _INTEGER_TEXT.fullmatch(value):
            value = int(value)
        elif _REAL_TEXT.fullmatch(value):
            value = float(value)
        else:
            return value
    if affinity == "real":
        return float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


class MemoryLedger:
    """The :class:`batchpipe.ports.Ledger` Protocol in memory: the rules of
    :class:`~batchpipe.adapters.sqlite_ledger.SqliteLedger` without a file.

    Thread-safe: one re-entrant lock, held by every call and for the whole of a :meth:`transaction` block (other
    threads wait, as with SQLite's single writer). ``clock`` gives the time (unix seconds) of rows and events.

    Raises :class:`~batchpipe.errors.TransitionError` for a status change the tables forbid and
    :class:`~batchpipe.errors.LedgerError` for the other refusals of ``SqliteLedger``; where SQLite itself would
    raise (a column that does not exist, NULL in a required column, a value type it cannot bind) this raises
    :class:`~batchpipe.errors.LedgerError`, and it also refuses to change the columns that identify a row
    (``custom_id``, ``job``, ``item_key``, ``attempt`` of an item, a shard's ``name``).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._undo: list[Callable[[], object]] = []
        self._runs: dict[str, Row] = {}
        self._items: dict[str, Row] = {}
        self._item_ids: list[str] = []  # sorted: the order items() pages in
        self._attempts: dict[tuple[Any, Any], dict[Any, str]] = {}  # (job, key) → {attempt: custom_id}
        self._shards: dict[str, Row] = {}
        self._batches: dict[str, Row] = {}
        self._files: dict[str, Row] = {}
        self._claims: dict[tuple[str, str], Row] = {}  # (kind, key) → claims row
        self._events: list[Row] = []
        self._item_events: dict[str, list[Row]] = {}  # custom_id → its item events (the events index)
        self._stale_logged: set[tuple[str, str, str]] = set()  # (batch_id, stored, reported) already logged

    # -- plumbing ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to release: the data stays readable (idempotent)."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction (re-entrant: inner blocks join the outer one); if the outermost block
        raises, every write since it began is undone."""
        with self._lock:
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._rollback_to(0)
                raise
            self._depth -= 1
            if self._depth == 0:
                self._undo.clear()

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """A transaction whose own writes are undone if it raises, even inside an outer one (a savepoint)."""
        with self.transaction():
            mark = len(self._undo)
            try:
                yield
            except BaseException:
                self._rollback_to(mark)
                raise

    def _rollback_to(self, mark: int) -> None:
        while len(self._undo) > mark:
            self._undo.pop()()

    def _put(self, table: dict[Key, Row], key: Key, row: Row) -> None:
        """Insert or replace ``table[key]`` (inside a transaction: undone on rollback)."""
        previous = table.get(key)
        table[key] = row
        self._undo.append(partial(table.pop, key) if previous is None else partial(table.__setitem__, key, previous))

    def _delete(self, table: dict[Key, Row], key: Key) -> None:
        """Remove ``table[key]`` if there (inside a transaction: undone on rollback)."""
        previous = table.pop(key, None)
        if previous is not None:
            self._undo.append(partial(table.__setitem__, key, previous))

    def _event(
        self,
        entity: str,
        entity_id: str,
        from_status: str | None,
        to_status: str,
        detail: str | None,
        *,
        at: float | None = None,
    ) -> None:
        """Append an event at ``at`` (unix seconds; default now); an ``item`` event is indexed by its custom_id."""
        event_id = self._events[-1]["event_id"] + 1 if self._events else 1
        event = {
            "event_id": event_id,
            "at": _store_value("events", "at", "real", self._clock() if at is None else at),
            "entity": entity,
            "entity_id": entity_id,
            "from_status": from_status,
            "to_status": to_status,
            "detail": detail,
        }
        self._events.append(event)
        self._undo.append(self._events.pop)
        if entity == "item":
            history = self._item_events.setdefault(entity_id, [])
            history.append(event)
            self._undo.append(partial(self._unindex, entity_id))

    def _unindex(self, custom_id: str) -> None:
        """Undo the indexing of the last item event of ``custom_id``."""
        history = self._item_events[custom_id]
        history.pop()
        if not history:
            del self._item_events[custom_id]

    @staticmethod
    def _new_row(table: str, columns: Mapping[str, tuple[str, bool]], values: Mapping[str, object]) -> Row:
        """A complete row of ``table`` from ``values`` (missing columns NULL). Raises LedgerError for an unknown
        column or NULL in a required one."""
        unknown = set(values) - set(columns)
        if unknown:
            raise LedgerError(f"{table} has no column {sorted(unknown)}")
        row = {name: _store_value(table, name, affinity, values.get(name)) for name, (affinity, _) in columns.items()}
        missing = [name for name, (_, required) in columns.items() if required and row[name] is None]
        if missing:
            raise LedgerError(f"cannot insert into {table}: NOT NULL constraint failed: {table}.{missing[0]}")
        return row

    @staticmethod
    def _changes(
        table: str, columns: Mapping[str, tuple[str, bool]], values: Mapping[str, object], identity: frozenset[str]
    ) -> Row:
        """Column updates as stored. Raises LedgerError for an unknown column, NULL in a required one or a change of
        an identity column."""
        unknown = set(values) - set(columns)
        if unknown:
            raise LedgerError(f"{table} has no column {sorted(unknown)}")
        if set(values) & identity:
            raise LedgerError(f"the in-memory ledger does not change {sorted(set(values) & identity)} of {table}")
        changes = {name: _store_value(table, name, columns[name][0], value) for name, value in values.items()}
        nulls = [name for name, value in changes.items() if value is None and columns[name][1]]
        if nulls:
            raise LedgerError(f"NOT NULL constraint failed: {table}.{nulls[0]}")
        return changes

    # -- runs -------------------------------------------------------------------------------------------
    def open_run(
        self,
        job: str,
        spec_hash: str,
        api: str,
        *,
        output_dir: str | None = None,
        trust: str | None = None,
        spec_path: str | None = None,
    ) -> tuple[str, bool]:
        """See :meth:`batchpipe.ports.Ledger.open_run`: the running run of ``job`` or a new one,
        ``(run_id, resumed)``."""
        with self.transaction():
            running = [r for r in self._runs.values() if r["job"] == job and r["status"] == "running"]
            if running:
                newest = running[0]
                for run in running[1:]:
                    if run["started_at"] >= newest["started_at"]:
                        newest = run
                return str(newest["run_id"]), True
            now = self._clock()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            run_id = f"{job}-{stamp}"
            suffix = 1
            while run_id in self._runs:
                suffix += 1
                run_id = f"{job}-{stamp}-{suffix}"
            values = {
                "run_id": run_id,
                "job": job,
                "spec_hash": spec_hash,
                "api": api,
                "output_dir": output_dir,
                "trust": trust,
                "spec_path": spec_path,
                "status": "running",
                "started_at": now,
            }
            self._put(self._runs, run_id, self._new_row("runs", _RUNS, values))
            self._event("run", run_id, None, "running", None)
            return run_id, False

    def finish_run(self, run_id: str, status: str) -> None:
        """See :meth:`batchpipe.ports.Ledger.finish_run`: a running run becomes ``status`` (event logged always)."""
        with self.transaction():
            finished_at = self._clock()
            run = self._runs.get(run_id)
            if run is not None and run["status"] == "running":
                changes = self._changes("runs", _RUNS, {"status": status, "finished_at": finished_at}, frozenset())
                self._put(self._runs, run_id, {**run, **changes})
            self._event("run", run_id, "running", status, None)

    def finish_build(self, run_id: str, shards: Sequence[Mapping[str, object]]) -> int:
        """See :meth:`batchpipe.ports.Ledger.finish_build`: shards recorded, earlier attempts superseded and
        ``built_at`` set, in one transaction; returns how many were superseded. Raises LedgerError for an unknown
        or already built run."""
        with self._all_or_nothing():
            run = self._runs.get(run_id)
            if run is None or run["built_at"] is not None:
                raise LedgerError(f"run {run_id!r} is {'already built' if run else 'unknown'}")
            for shard in shards:
                self.insert_shard(shard)
            keep = (ItemStatus.SUBMITTED, ItemStatus.SUPERSEDED)
            earlier = sorted(
                str(row["previous_custom_id"])
                for row in self._items.values()
                if row["run_id"] == run_id
                and row["previous_custom_id"] in self._items
                and self._items[str(row["previous_custom_id"])]["status"] not in keep
            )
            superseded = self.transition_items(earlier, ItemStatus.SUPERSEDED, strict=False) if earlier else 0
            changes = self._changes("runs", _RUNS, {"built_at": self._clock()}, frozenset())
            self._put(self._runs, run_id, {**run, **changes})
            self._event("run", run_id, "running", "running", f"built: {len(shards)} shards")
            return superseded

    def discard_build(self, run_id: str) -> int:
        """See :meth:`batchpipe.ports.Ledger.discard_build`: an unfinished build's items (and their events) and
        shards removed; returns how many items. Raises LedgerError for an unknown or already built run."""
        with self._all_or_nothing():
            run = self._runs.get(run_id)
            if run is None or run["built_at"] is not None:
                raise LedgerError(f"run {run_id!r} is {'already built' if run else 'unknown'}: nothing to discard")
            doomed = [cid for cid, row in self._items.items() if row["run_id"] == run_id]
            for custom_id in doomed:
                self._remove_item(custom_id)
            for name in [n for n, row in self._shards.items() if row["run_id"] == run_id]:
                self._delete(self._shards, name)
                self._drop_events("shard", name)
            return len(doomed)

    def _remove_item(self, custom_id: str) -> None:
        """Delete one item row and its events (undone on rollback)."""
        row = self._items.pop(custom_id)
        index = bisect.bisect_left(self._item_ids, custom_id)
        del self._item_ids[index]
        ident = (row["job"], row["item_key"])
        del self._attempts[ident][row["attempt"]]
        if not self._attempts[ident]:
            del self._attempts[ident]
        self._drop_events("item", custom_id)

        def undo() -> None:
            self._items[custom_id] = row
            self._item_ids.insert(index, custom_id)
            self._attempts.setdefault(ident, {})[row["attempt"]] = custom_id

        self._undo.append(undo)

    def _drop_events(self, entity: str, entity_id: str) -> None:
        """Delete the events of one entity (undone on rollback)."""
        kept = [e for e in self._events if not (e["entity"] == entity and e["entity_id"] == entity_id)]
        if len(kept) == len(self._events):
            return
        before, self._events = self._events, kept
        history = self._item_events.pop(entity_id, None) if entity == "item" else None

        def undo() -> None:
            self._events = before
            if history is not None:
                self._item_events[entity_id] = history

        self._undo.append(undo)

    def run_info(self, run_id: str) -> dict[str, object] | None:
        """The run's row as a new dict, or None."""
        with self._lock:
            run = self._runs.get(run_id)
            return dict(run) if run is not None else None

    def open_runs(self) -> list[str]:
        """Runs ``running`` and built, oldest first (see :meth:`batchpipe.ports.Ledger.open_runs`)."""
        with self._lock:
            runs = [r for r in self._runs.values() if r["status"] == "running" and r.get("built_at") is not None]
            return [str(r["run_id"]) for r in sorted(runs, key=lambda r: (r["started_at"], r["run_id"]))]

    def latest_run(self, job: str | None = None) -> dict[str, object] | None:
        """The most recently started run (of ``job`` if given) as a new dict, or None."""
        with self._lock:
            newest: Row | None = None
            for run in self._runs.values():
                if (job is None or run["job"] == job) and (newest is None or run["started_at"] >= newest["started_at"]):
                    newest = run
            return dict(newest) if newest is not None else None

    # -- items ------------------------------------------------------------------------------------------
    def _add_item(self, row: Row) -> None:
        custom_id = str(row["custom_id"])
        ident = (row["job"], row["item_key"])
        attempt = row["attempt"]
        if custom_id in self._items or attempt in self._attempts.get(ident, {}):
            raise LedgerError(
                f"cannot insert items (duplicate custom_id or job/key/attempt?): {custom_id!r} "
                f"({row['job']}, {row['item_key']}, {attempt})"
            )
        self._items[custom_id] = row
        bisect.insort(self._item_ids, custom_id)
        self._attempts.setdefault(ident, {})[attempt] = custom_id

        def undo() -> None:
            del self._items[custom_id]
            del self._item_ids[bisect.bisect_left(self._item_ids, custom_id)]
            attempts = self._attempts[ident]
            del attempts[attempt]
            if not attempts:
                del self._attempts[ident]

        self._undo.append(undo)

    def insert_items(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Insert new item rows (``status`` ``pending`` or ``invalid``), all or none; returns how many.
        Raises LedgerError for another status, a duplicate ``custom_id`` or (job, key, attempt), a missing
        required column."""
        now = self._clock()
        prepared: list[Mapping[str, object]] = []
        for row in rows:
            values = dict(row)
            values.setdefault("created_at", now)
            values.setdefault("updated_at", now)
            values.setdefault("input_tokens_est", 0)
            if values.get("status") not in (ItemStatus.PENDING, ItemStatus.INVALID):
                raise LedgerError(f"new items start as pending or invalid, not {values.get('status')!r}")
            prepared.append({c: values.get(c) for c in ITEM_COLUMNS})
        if not prepared:
            return 0
        with self._all_or_nothing():
            for item in prepared:
                self._add_item(self._new_row("items", _ITEMS, item))
        return len(prepared)

    def transition_items(
        self,
        custom_ids: Sequence[str],
        to_status: ItemStatus,
        *,
        from_statuses: Iterable[ItemStatus] | None = None,
        fields: Mapping[str, object] | None = None,
        strict: bool = True,
    ) -> int:
        """See :meth:`batchpipe.ports.Ledger.transition_items`: a guarded move to ``to_status``; returns rows
        changed. Raises TransitionError (changing nothing) as described there."""
        reachable = frozenset(s for s, targets in ITEM_TRANSITIONS.items() if to_status in targets)
        allowed = frozenset(from_statuses) if from_statuses is not None else reachable
        bad = allowed - reachable
        if bad:
            raise TransitionError(f"items cannot move from {sorted(bad)} to {to_status}")
        now = self._clock()
        sets = {**(fields or {}), "status": str(to_status), "updated_at": now}
        changes = self._changes("items", _ITEMS, sets, _IDENTITY_OF["item"])
        allowed_values = {str(s) for s in allowed}
        moved: list[tuple[str, str]] = []  # (custom_id, status before), in the order given
        with self._all_or_nothing():
            for start in range(0, len(custom_ids), _CHUNK):
                chunk = list(custom_ids[start : start + _CHUNK])
                hits = [
                    custom_id
                    for custom_id in dict.fromkeys(chunk)
                    if (row := self._items.get(custom_id)) is not None and row["status"] in allowed_values
                ]
                if strict and len(hits) != len(chunk):
                    raise TransitionError(
                        f"{len(chunk) - len(hits)} of {len(chunk)} items are not in {sorted(allowed)}; "
                        f"cannot move them to {to_status}"
                    )
                for custom_id in hits:
                    row = self._items[custom_id]
                    moved.append((custom_id, str(row["status"])))
                    self._put(self._items, custom_id, {**row, **changes})
            detail = f"{len(moved)} items"
            for custom_id, before in moved:
                self._event("item", custom_id, before, str(to_status), detail, at=now)
        return len(moved)

    def update_item_fields(self, custom_id: str, fields: Mapping[str, object]) -> None:
        """Set non-status columns of one item (an unknown id changes nothing). Raises LedgerError for ``status``."""
        if "status" in fields:
            raise LedgerError("use transition_items to change a status")
        changes = self._changes("items", _ITEMS, {**fields, "updated_at": self._clock()}, _IDENTITY_OF["item"])
        with self.transaction():
            row = self._items.get(custom_id)
            if row is not None:
                self._put(self._items, custom_id, {**row, **changes})

    def item_history(self, custom_id: str) -> list[dict[str, Any]]:
        """The ``item`` events of one item, oldest first: ``event_id``, ``custom_id``, ``from_status``,
        ``to_status``, ``detail``, ``created_at`` (unix seconds); ``[]`` if it never moved."""
        with self._lock:
            return [
                {
                    "event_id": event["event_id"],
                    "custom_id": event["entity_id"],
                    "from_status": event["from_status"],
                    "to_status": event["to_status"],
                    "detail": event["detail"],
                    "created_at": event["at"],
                }
                for event in self._item_events.get(custom_id, [])
            ]

    def item(self, custom_id: str) -> ItemRow | None:
        """One item row by ``custom_id``, or None."""
        with self._lock:
            row = self._items.get(custom_id)
            return ItemRow(**row) if row is not None else None

    def items(
        self,
        *,
        run_id: str | None = None,
        job: str | None = None,
        key: str | None = None,
        statuses: Iterable[str] | None = None,
        shard: str | None = None,
        batch_id: str | None = None,
        error_codes: Iterable[str] | None = None,
        c2pa_states: Iterable[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        latest_only: bool = False,
    ) -> Iterator[ItemRow]:
        """See :meth:`batchpipe.ports.Ledger.items`: matching rows in ``custom_id`` order, in pages of 1,000 (each
        page reads the ledger as it is then, as SQLite's keyset pages do)."""
        equal = {
            column: _store_value("items", column, "text", value)
            for column, value in (
                ("run_id", run_id),
                ("job", job),
                ("item_key", key),
                ("shard", shard),
                ("batch_id", batch_id),
            )
            if value is not None
        }
        among = {
            column: frozenset(str(v) for v in values)
            for column, values in (("status", statuses), ("error_code", error_codes), ("c2pa_state", c2pa_states))
            if values is not None
        }

        def matches(row: Row) -> bool:
            if any(row[column] != value for column, value in equal.items()):
                return False
            if any(row[column] not in values for column, values in among.items()):
                return False
            if since is not None and not row["updated_at"] >= since:
                return False
            if until is not None and not row["updated_at"] < until:
                return False
            return not latest_only or row["attempt"] == max(self._attempts[(row["job"], row["item_key"])])

        last = ""
        while True:
            with self._lock:
                page: list[ItemRow] = []
                position = bisect.bisect_right(self._item_ids, last)
                while position < len(self._item_ids) and len(page) < _PAGE:
                    row = self._items[self._item_ids[position]]
                    if matches(row):
                        page.append(ItemRow(**row))
                    position += 1
            if not page:
                return
            yield from page
            last = page[-1].custom_id

    def latest_attempts(self, job: str, keys: Sequence[str]) -> dict[str, ItemRow]:
        """For each key of ``job`` that has rows, its highest attempt: ``{item_key: row}``."""
        result: dict[str, ItemRow] = {}
        with self._lock:
            for key in keys:
                attempts = self._attempts.get((job, key))
                if attempts:
                    result[key] = ItemRow(**self._items[attempts[max(attempts)]])
        return result

    def succeeded_hashes(self, job: str) -> Iterator[tuple[str, str]]:
        """``(item_key, request_hash)`` of every succeeded item of ``job``."""
        with self._lock:
            pairs = [
                (str(row["item_key"]), str(row["request_hash"]))
                for row in self._items.values()
                if row["job"] == job and row["status"] == ItemStatus.SUCCEEDED
            ]
        yield from pairs

    def succeeded_with(
        self, job: str, pairs: Sequence[tuple[str, str]], *, by: HashColumn = "request_hash"
    ) -> set[str]:
        """The keys of ``pairs`` (``(item_key, hash)``) whose latest succeeded attempt in ``job`` has that hash in
        column ``by`` (looked up key by key, as SQLite's index does)."""
        column = hash_column(by)
        with self._lock:
            latest: dict[str, object] = {}
            for key, _ in pairs:
                attempts = self._attempts.get((job, key), {})
                succeeded = [a for a, c in attempts.items() if self._items[c]["status"] == ItemStatus.SUCCEEDED]
                if succeeded:
                    latest[key] = self._items[attempts[max(succeeded)]][column]
        return {key for key, hash_ in pairs if key in latest and latest[key] == hash_}

    def count_items(
        self, *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> dict[str, int]:
        """Item counts by status (only statuses that occur), for a run (wins over ``job``), a job, or everything;
        ``latest_only``: only each item's highest attempt."""
        column, value = ("run_id", run_id) if run_id is not None else ("job", job)
        with self._lock:
            counts = Counter(
                str(row["status"])
                for row in self._items.values()
                if (value is None or row[column] == value)
                and (not latest_only or row["attempt"] == max(self._attempts[(row["job"], row["item_key"])]))
            )
        return {status: counts[status] for status in sorted(counts)}

    def cost_usd(self, *, run_id: str | None = None, job: str | None = None) -> float:
        """Sum of recorded costs (USD), for a run (wins over ``job``), a job, or everything (0.0 if none)."""
        column, value = ("run_id", run_id) if run_id is not None else ("job", job)
        with self._lock:
            costs = [
                float(row["cost_usd"])
                for row in self._items.values()
                if row["cost_usd"] is not None and (value is None or row[column] == value)
            ]
        return math.fsum(costs)

    def error_counts(
        self, statuses: Iterable[str], *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> list[dict[str, object]]:
        """Items in ``statuses`` by (error code or status, status), as the SQL ledgers group them."""
        wanted = {str(status) for status in statuses}
        column, value = ("run_id", run_id) if run_id is not None else ("job", job)
        groups: dict[tuple[str, str], dict[str, object]] = {}
        with self._lock:
            for custom_id, row in self._items.items():
                if str(row["status"]) not in wanted or (value is not None and row[column] != value):
                    continue
                if latest_only and row["attempt"] != max(self._attempts[(row["job"], row["item_key"])]):
                    continue
                code = str(row["error_code"] or row["status"])
                group = groups.setdefault(
                    (code, str(row["status"])),
                    {"code": code, "status": str(row["status"]), "count": 0, "retryable": False,
                     "example_custom_id": custom_id},
                )  # fmt: skip
                group["count"] = int(str(group["count"])) + 1
                group["retryable"] = bool(group["retryable"]) or bool(row["retryable"])
                group["example_custom_id"] = min(str(group["example_custom_id"]), custom_id)
        return sorted(groups.values(), key=lambda g: (-int(str(g["count"])), str(g["code"]), str(g["status"])))

    def item_summary(self, error_statuses: Iterable[str], *, job: str | None = None) -> ItemSummary:
        """:meth:`count_items`, latest-only counts, :meth:`cost_usd` and latest-only :meth:`error_counts` of ``job``
        (or everything), as the SQL ledgers answer them in one query."""
        with self._lock:
            return ItemSummary(
                items=self.count_items(job=job),
                current=self.count_items(job=job, latest_only=True),
                cost_usd=self.cost_usd(job=job),
                errors=self.error_counts(error_statuses, job=job, latest_only=True),
            )

    def export_jsonl(self, *, run_id: str | None = None, latest_only: bool = True) -> Iterator[str]:
        """Export lines (``orjson.dumps(row.export_record())`` + newline) of :meth:`items`, a chunk per 1,000 rows."""
        return export_lines(self.items(run_id=run_id, latest_only=latest_only))

    # -- shards (submission intents) --------------------------------------------------------------------
    def insert_shard(self, row: Mapping[str, object]) -> None:
        """Record a built shard (``status`` ``built``). Raises LedgerError on a duplicate name or a missing
        required column."""
        now = self._clock()
        values = self._new_row("shards", _SHARDS, {**row, "status": "built", "created_at": now, "updated_at": now})
        name = str(values["name"])
        with self.transaction():
            if name in self._shards:
                raise LedgerError(f"cannot insert shard {name!r} (duplicate name?): UNIQUE constraint failed")
            self._put(self._shards, name, values)
            self._event("shard", name, None, "built", None)

    def transition_shard(
        self,
        name: str,
        to_status: str,
        *,
        fields: Mapping[str, object] | None = None,
        note: str | None = None,
    ) -> None:
        """Guarded shard status change along :data:`~batchpipe.domain.records.SHARD_TRANSITIONS`. Raises
        LedgerError for an unknown shard, TransitionError (changing nothing) for a forbidden change."""
        allowed = {s for s, targets in SHARD_TRANSITIONS.items() if to_status in targets}
        sets = {**(fields or {}), "status": to_status, "updated_at": self._clock(), "note": note}
        changes = self._changes("shards", _SHARDS, sets, _IDENTITY_OF["shard"])
        with self.transaction():
            current = self._shards.get(name)
            if current is None:
                raise LedgerError(f"no shard {name!r}")
            if current["status"] not in allowed:
                raise TransitionError(f"shard {name} is {current['status']}, cannot move to {to_status}")
            self._put(self._shards, name, {**current, **changes})
            self._event("shard", name, str(current["status"]), to_status, note)

    def shards(self, *, run_id: str | None = None, statuses: Iterable[str] | None = None) -> list[ShardRow]:
        """Shards of a run (or all), optionally by status, ordered by ``created_at`` then ``name``."""
        wanted = None if statuses is None else {str(s) for s in statuses}
        with self._lock:
            rows = [
                row
                for row in self._shards.values()
                if (run_id is None or row["run_id"] == run_id) and (wanted is None or row["status"] in wanted)
            ]
            return [ShardRow(**row) for row in sorted(rows, key=lambda r: (r["created_at"], r["name"]))]

    def shard(self, name: str) -> ShardRow | None:
        """One shard by name, or None."""
        with self._lock:
            row = self._shards.get(name)
            return ShardRow(**row) if row is not None else None

    # -- batches ----------------------------------------------------------------------------------------
    def record_batch(self, batch: Mapping[str, Any], *, shard: str, run_id: str, model: str) -> bool:
        """Record a batch the service created (idempotent on ``id``); True if it was new."""
        now = self._clock()
        values = {
            "batch_id": batch["id"],
            "shard": shard,
            "run_id": run_id,
            "model": model,
            "status": batch["status"],
            "input_file_id": batch["input_file_id"],
            "created_at": float(batch.get("created_at") or now),
            "updated_at": now,
            "output_offset": 0,
            "error_offset": 0,
            "output_done": 0,
            "error_done": 0,
            "reconciled": 0,
        }
        row = self._new_row("batches", _BATCHES, values)
        batch_id = str(row["batch_id"])
        with self.transaction():
            if batch_id in self._batches:
                return False
            self._put(self._batches, batch_id, row)
            self._event("batch", str(batch["id"]), None, str(batch["status"]), shard)
            return True

    def update_batch(self, batch: Mapping[str, Any]) -> str | None:
        """Store the service's view of a batch if its status did not go backwards; returns the previous status if it
        moved forward, else None (see :meth:`batchpipe.ports.Ledger.update_batch`). Raises LedgerError for an
        unknown batch."""
        batch_id = str(batch["id"])
        reported = str(batch["status"])
        errors = batch.get("errors")
        ended = None
        for key in ("completed_at", "failed_at", "expired_at", "cancelled_at"):
            if batch.get(key):
                ended = float(batch[key])
        with self.transaction():
            current = self._batches.get(batch_id)
            if current is None:
                raise LedgerError(f"unknown batch {batch_id!r}")
            previous = str(current["status"])
            if reported != previous and not batch_may_move(previous, reported):
                self._stale_batch(batch_id, previous, reported)
                return None
            values = {
                "status": reported,
                "output_file_id": batch.get("output_file_id"),
                "error_file_id": batch.get("error_file_id"),
                "request_counts_json": orjson.dumps(batch.get("request_counts")).decode(),
                "errors_json": orjson.dumps(redact_value(errors)).decode() if errors else None,
                "ended_at": current["ended_at"] if current["ended_at"] is not None else ended,
                "updated_at": self._clock(),
            }
            changes = self._changes("batches", _BATCHES, values, _IDENTITY_OF["batch"])
            self._put(self._batches, batch_id, {**current, **changes})
            if previous != reported:
                self._event("batch", batch_id, previous, reported, None)
                return previous
        return None

    def _stale_batch(self, batch_id: str, stored: str, reported: str) -> None:
        """Log, once per (batch, stored, reported), that a poll reported a status older than the stored one."""
        if (batch_id, stored, reported) not in self._stale_logged:
            self._stale_logged.add((batch_id, stored, reported))
            log.warning("ledger.stale_batch_status", batch_id=batch_id, stored=stored, reported=reported)

    def batches(self, *, run_id: str | None = None, unfinished: bool = False) -> list[BatchRow]:
        """Batch rows of a run or all, by ``created_at``; ``unfinished``: not yet reconciled."""
        with self._lock:
            rows = [
                BatchRow(**row)
                for row in self._batches.values()
                if (run_id is None or row["run_id"] == run_id) and (not unfinished or row["reconciled"] == 0)
            ]
        return sorted(rows, key=lambda r: r.created_at)

    def batch(self, batch_id: str) -> BatchRow | None:
        """One batch row by id, or None."""
        with self._lock:
            row = self._batches.get(batch_id)
            return BatchRow(**row) if row is not None else None

    def set_batch_progress(self, batch_id: str, **fields: object) -> None:
        """Set collection progress columns (``output_offset``, ``error_offset`` in bytes; ``output_done``,
        ``error_done``, ``reconciled`` 0/1) of a batch. Raises LedgerError for no field or another field."""
        allowed = {"output_offset", "error_offset", "output_done", "error_done", "reconciled"}
        if not fields or set(fields) - allowed:
            raise LedgerError(f"unknown batch progress fields: {sorted(set(fields) - allowed)}")
        changes = self._changes("batches", _BATCHES, {**fields, "updated_at": self._clock()}, frozenset())
        with self.transaction():
            row = self._batches.get(batch_id)
            if row is not None:
                self._put(self._batches, batch_id, {**row, **changes})

    # -- files ------------------------------------------------------------------------------------------
    def record_file(self, file_obj: Mapping[str, Any], *, role: str, sha256: str | None = None) -> None:
        """Record a Files API object with our ``role`` (idempotent on ``id``)."""
        values = {
            "file_id": file_obj["id"],
            "role": role,
            "purpose": file_obj.get("purpose", ""),
            "filename": file_obj.get("filename"),
            "bytes": file_obj.get("bytes"),
            "sha256": sha256,
            "created_at": float(file_obj.get("created_at") or self._clock()),
            "expires_at": file_obj.get("expires_at"),
        }
        row = self._new_row("files", _FILES, values)
        with self.transaction():
            if row["file_id"] not in self._files:
                self._put(self._files, str(row["file_id"]), row)

    def mark_file_deleted(self, file_id: str) -> None:
        """Record that a file was deleted from the Files API (the first deletion time is kept)."""
        deleted_at = _store_value("files", "deleted_at", "real", self._clock())
        with self.transaction():
            row = self._files.get(file_id)
            if row is not None and row["deleted_at"] is None:
                self._put(self._files, file_id, {**row, "deleted_at": deleted_at})

    def files(
        self, *, role: str | None = None, deleted: bool | None = None, file_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """File rows as new dicts, by role, deletion state and id."""
        wanted = None if file_ids is None else set(file_ids)
        with self._lock:
            return [
                dict(row)
                for row in self._files.values()
                if (role is None or row["role"] == role)
                and (wanted is None or row["file_id"] in wanted)
                and (deleted is None or (row["deleted_at"] is not None) == deleted)
            ]

    def file_by_sha256(self, sha256: str, *, role: str, not_expired_at: float) -> dict[str, Any] | None:
        """A live (not deleted, not expiring before ``not_expired_at``) file of ``role`` with this content hash."""
        with self._lock:
            live = [
                row
                for row in self._files.values()
                if row["sha256"] == sha256
                and row["role"] == role
                and row["deleted_at"] is None
                and (row["expires_at"] is None or row["expires_at"] > not_expired_at)
            ]
            return dict(max(live, key=lambda r: r["created_at"])) if live else None

    # -- events -----------------------------------------------------------------------------------------
    def events(self, *, entity: str | None = None, entity_id: str | None = None) -> list[dict[str, Any]]:
        """The append-only transition log, oldest first (new dicts)."""
        with self._lock:
            return [
                dict(event)
                for event in self._events
                if (entity is None or event["entity"] == entity)
                and (entity_id is None or event["entity_id"] == entity_id)
            ]

    # -- claims (owner + lease) -------------------------------------------------------------------------
    def claim(self, kind: str, key: str, *, owner: str, lease_s: float) -> bool:
        """Take or renew the claim on ``(kind, key)`` for ``owner`` until now + ``lease_s`` seconds; False (nothing
        changed) if another owner holds an unexpired lease. Raises ``ValueError`` for a lease that is not a positive
        finite number of seconds."""
        if not (isinstance(lease_s, int | float) and math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"a lease must be a positive number of seconds, not {lease_s!r}")
        now = self._clock()
        row = self._new_row("claims", _CLAIMS, {"kind": kind, "key": key, "owner": owner, "expires_at": now + lease_s})
        with self.transaction():
            held = self._claims.get((kind, key))
            if held is not None and held["owner"] != row["owner"] and not held["expires_at"] <= now:
                return False
            self._put(self._claims, (kind, key), row)
            return True

    def release(self, kind: str, key: str, *, owner: str) -> bool:
        """Drop the claim on ``(kind, key)`` if ``owner`` holds it (expired or not); True if dropped."""
        with self.transaction():
            held = self._claims.get((kind, key))
            if held is None or held["owner"] != owner:
                return False
            self._delete(self._claims, (kind, key))
            return True

    def claim_holder(self, kind: str, key: str) -> tuple[str, float] | None:
        """``(owner, expires_at)`` (unix seconds) of the unexpired claim on ``(kind, key)``, or None."""
        with self._lock:
            held = self._claims.get((kind, key))
            if held is None or not held["expires_at"] > self._clock():
                return None
            return str(held["owner"]), float(held["expires_at"])


if TYPE_CHECKING:  # mypy proves that MemoryLedger implements the Ledger port; nothing runs
    _conforms: Ledger = MemoryLedger()
