"""The results ledger: the source of truth for every item, shard, batch and file of every run.

:class:`SqliteLedger` implements the :class:`batchpipe.ports.Ledger` Protocol (WAL, one transaction per logical
step); :class:`batchpipe.fakes.MemoryLedger` is the in-memory one, and ``tests/contracts`` checks both. The SQL
is kept portable (standard types, ``INSERT ... ON CONFLICT``, ``SAVEPOINT``, no SQLite-only functions in queries but
the export's, below) so a PostgreSQL implementation with several workers can follow: every status change is a guarded
``UPDATE ... WHERE status IN (...)`` (compare-and-set), every change appends to ``events`` (one row per item
moved), and work is claimed with one guarded ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE`` on ``claims``.

Tables::

    runs      one row per run of a job (run_id, job, spec hash, started/finished)
    items     one row per attempt of an item (custom_id PK; job+key+attempt unique)
    shards    one row per batch input file: the submission *intent* record (status, file id, batch id)
    batches   one row per batch the service created (status, file ids, request_counts, collection progress)
    files     one row per Files API object we created or collected (role, expiry, deleted_at)
    events    append-only log of status transitions (run, shard, batch, and one row per item moved)
    claims    who works on what: (kind, key) → owner until expires_at (unix seconds)

Item statuses and their allowed transitions are :data:`ITEM_TRANSITIONS`; shard statuses
:data:`SHARD_TRANSITIONS`; batch statuses only move forward (:data:`~batchpipe.domain.records.BATCH_TRANSITIONS`).
Opening an older ledger file adds what it lacks (the ``claims`` table, the ``events`` index): the schema is all
``CREATE ... IF NOT EXISTS``.

Indexes follow the reads, so no read grows faster than the rows it returns: every query with ``ORDER BY`` reads in
index order (``tests/test_ledger.py`` checks each plan for ``USE TEMP B-TREE``): pages of :meth:`items` by the
primary key (a run's or a job's pages follow it and test the run or job: an index keyed by run and ``custom_id``
would make every insert of a build touch a random page, 4x slower at 1M items); one shard's or batch's rows are one
lookup of ``items_shard`` / ``items_batch_set`` (partial: rows not yet submitted have no entry); the re-run check
and attempt numbering use UNIQUE (job, item_key, attempt); counts are ``GROUP BY`` aggregates. Each build ends with
a sampled ``ANALYZE`` and :meth:`SqliteLedger.close` runs ``PRAGMA optimize``. The PostgreSQL ledger keeps the same
rule with its own indexes (a run's, batch's and shard's pages through ``(column, custom_id)``: its schema version 3)
and an ``ANALYZE items`` after each build (:mod:`batchpipe.adapters.postgres_ledger`).

The two whole-ledger reads add no index (an index is paid by every insert of a build, and one on columns that change
at collection by every collected item): ``batchpipe status`` is one aggregate pass over the table
(:meth:`SqliteLedger.item_summary`; "latest attempt" by subtracting the rows below the retried items' highest
attempts, read from the UNIQUE index), and ``batchpipe ledger export`` reads keyset pages of ``rowid`` (the table's
own order, front to back; a run's pages follow ``items_run``, whose entries are in ``rowid`` order too) and has
SQLite build each line (``json_object``, ``strftime``, and three registered Python functions for what SQL cannot
write as orjson does: a cost's shortest float text, a percent-encoded ``file://`` URI's path, a negative time), so
Python only joins lines (:meth:`SqliteLedger.export_jsonl`; ``tests/test_ledger_export.py`` holds the lines to
:meth:`~batchpipe.domain.records.ItemRow.export_record` byte for byte).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog

from batchpipe.domain.items import ItemStatus
from batchpipe.domain.locations import local_path
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
    error_groups,
    hash_column,
    highest_attempts,
    iso_seconds,
    item_summary,
    new_item_params,
)
from batchpipe.domain.redact import redact_value
from batchpipe.errors import LedgerError, TransitionError

if TYPE_CHECKING:
    from batchpipe.ports import Ledger

__all__ = [
    "ITEM_TRANSITIONS",
    "SHARD_TRANSITIONS",
    "ItemRow",
    "ShardRow",
    "SqliteLedger",
    "open_ledger",
]

log = structlog.get_logger("batchpipe.ledger")
_CHUNK: Final = 500  # ids per guarded statement (SQLite allows 999 parameters in old builds)
#: SQLite page cache per connection, KiB (``PRAGMA cache_size`` takes a negative number for KiB): 16 MiB (the
#: default is 2 MiB). A build inserts into random pages of two hash-keyed indexes, which at 1,000,000 items are far
#: larger than any cache a run can afford; the operating system's page cache holds them either way. Measured (the
#: build phase of ``run``, 1,000,000 items): 16 MiB 95 s and 275 MB peak RSS, 64 MiB 98 s and 330 MB.
_CACHE_KIB: Final = 16_384
#: A build's chunks of new items (:meth:`SqliteLedger.insert_items` called outside a transaction) share one
#: transaction until it holds this many rows or is this many seconds old (a timer commits it even when no chunk
#: comes), or any other write comes. Every commit writes each page it changed to the WAL once, and a build's rows
#: land on random pages of the two hash-keyed indexes, so small commits write the same pages again and again.
#: Measured (plain ``sqlite3`` inserts of 1,000,000 rows into this schema, 2,000-row ``executemany`` calls, 16 MiB
#: cache): a commit per call 54.6 s, per 50,000 rows 27.2 s; the build phase of ``run`` at 1,000,000 items went
#: 81 → 71 s (commits every 2 s or 50,000 rows: the same as every 30 s).
_GROUP_ROWS: Final = 50_000
_GROUP_S: Final = 2.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    job           TEXT NOT NULL,
    spec_hash     TEXT NOT NULL,
    api           TEXT NOT NULL,
    output_dir    TEXT,
    trust         TEXT,
    spec_path     TEXT,
    status        TEXT NOT NULL,
    started_at    DOUBLE PRECISION NOT NULL,
    finished_at   DOUBLE PRECISION,
    built_at      DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job, started_at);
CREATE TABLE IF NOT EXISTS items (
    custom_id     TEXT PRIMARY KEY,
    job           TEXT NOT NULL,
    item_key      TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    run_id        TEXT NOT NULL,
    previous_custom_id TEXT,
    endpoint      TEXT NOT NULL,
    model         TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    body_json     TEXT NOT NULL,
    metadata_json TEXT NOT NULL,
    source        TEXT NOT NULL,
    product_key   TEXT,
    variant       TEXT,
    inputs_json   TEXT,
    input_tokens_est INTEGER NOT NULL DEFAULT 0,
    shard         TEXT,
    batch_id      TEXT,
    status        TEXT NOT NULL,
    retryable     INTEGER,
    error_code    TEXT,
    error_message TEXT,
    output_uri    TEXT,
    sha256        TEXT,
    bytes         INTEGER,
    format        TEXT,
    width         INTEGER,
    height        INTEGER,
    c2pa_state    TEXT,
    c2pa_json     TEXT,
    usage_json    TEXT,
    cost_usd      DOUBLE PRECISION,
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    source_hash   TEXT,
    UNIQUE (job, item_key, attempt)
);
CREATE INDEX IF NOT EXISTS items_run ON items (run_id);
CREATE INDEX IF NOT EXISTS items_shard ON items (shard);
CREATE INDEX IF NOT EXISTS items_batch_set ON items (batch_id) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS shards (
    name          TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL,
    job           TEXT NOT NULL,
    endpoint      TEXT NOT NULL,
    model         TEXT NOT NULL,
    path          TEXT NOT NULL,
    requests      INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    input_tokens  INTEGER NOT NULL,
    status        TEXT NOT NULL,
    input_file_id TEXT,
    batch_id      TEXT,
    intent_at     DOUBLE PRECISION,
    note          TEXT,
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS shards_run ON shards (run_id, created_at, name);
CREATE TABLE IF NOT EXISTS batches (
    batch_id      TEXT PRIMARY KEY,
    shard         TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    model         TEXT NOT NULL,
    status        TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    request_counts_json TEXT,
    errors_json   TEXT,
    created_at    DOUBLE PRECISION NOT NULL,
    ended_at      DOUBLE PRECISION,
    output_offset INTEGER NOT NULL DEFAULT 0,
    error_offset  INTEGER NOT NULL DEFAULT 0,
    output_done   INTEGER NOT NULL DEFAULT 0,
    error_done    INTEGER NOT NULL DEFAULT 0,
    reconciled    INTEGER NOT NULL DEFAULT 0,
    updated_at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_created ON batches (created_at);
CREATE INDEX IF NOT EXISTS batches_run ON batches (run_id, created_at);
CREATE TABLE IF NOT EXISTS files (
    file_id       TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    purpose       TEXT NOT NULL,
    filename      TEXT,
    bytes         INTEGER,
    sha256        TEXT,
    created_at    DOUBLE PRECISION NOT NULL,
    expires_at    DOUBLE PRECISION,
    deleted_at    DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS files_sha_created ON files (sha256, role, created_at);
CREATE TABLE IF NOT EXISTS events (
    event_id      INTEGER PRIMARY KEY,
    at            DOUBLE PRECISION NOT NULL,
    entity        TEXT NOT NULL,
    entity_id     TEXT NOT NULL,
    from_status   TEXT,
    to_status     TEXT NOT NULL,
    detail        TEXT
);
CREATE INDEX IF NOT EXISTS events_entity ON events (entity_id, entity);
CREATE TABLE IF NOT EXISTS claims (
    kind          TEXT NOT NULL,
    key           TEXT NOT NULL,
    owner         TEXT NOT NULL,
    expires_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

#: Indexes of older ledger files that :meth:`SqliteLedger._migrate` drops: ``items_job_key`` (job, item_key) was a
#: prefix of the UNIQUE (job, item_key, attempt) index; ``items_run_status`` (run_id, status) could not give
#: ``custom_id`` order, so each page of ``items(run_id=...)`` sorted a temporary B-tree of the whole run (its pages
#: now follow the primary key); ``items_run_custom`` (run_id, custom_id) made every build insert touch a random page
#: (``items_run`` (run_id) appends: its entries are in rowid order); ``items_batch`` held a NULL entry for every
#: item not yet submitted (``items_batch_set`` is partial); ``files_sha`` could not give ``created_at`` order.
_DROPPED_INDEXES: Final = ("items_job_key", "items_run_status", "items_run_custom", "items_batch", "files_sha")

#: Rows ANALYZE samples per index (``PRAGMA analysis_limit``): statistics good enough for the planner in
#: milliseconds, even at millions of items.
_ANALYSIS_LIMIT: Final = 1000

#: The row is its item's highest attempt: one seek in the UNIQUE (job, item_key, attempt) index per row.
_LATEST_ATTEMPT: Final = (
    "attempt = (SELECT MAX(i2.attempt) FROM items i2 WHERE i2.job = items.job AND i2.item_key = items.item_key)"
)

#: The highest attempt of every item with more than one (of the rows matching ``{where}``), as a ``retried`` CTE:
#: a scan of the UNIQUE (job, item_key, attempt) index's entries with ``attempt > 1``, in its order (no sort).
_RETRIED_CTE: Final = (
    "retried AS MATERIALIZED (SELECT job, item_key, MAX(attempt) AS top FROM items "
    "WHERE attempt > 1 AND {where} GROUP BY job, item_key)"
)

#: The rows (``i``) a higher attempt of their item follows, from ``retried`` (:data:`_RETRIED_CTE`): one
#: UNIQUE-index search per retried item.
_OLDER_JOIN: Final = "retried r JOIN items i ON i.job = r.job AND i.item_key = r.item_key AND i.attempt < r.top"

#: The rowids of the attempts a higher attempt of their item follows (not "latest"): one UNIQUE-index search per
#: retried item, so its cost follows the retried items, not the ledger. What an export keeps aside once, in a
#: temporary table, instead of :data:`_LATEST_ATTEMPT`'s index search per row (a random page each: 17-18 s against
#: 12.7-13.5 s for the export of a 1M-item ledger whose keys are not in insertion order).
_OLDER_ATTEMPTS_SQL: Final = "WITH " + _RETRIED_CTE.format(where="1 = 1") + " SELECT i.rowid FROM " + _OLDER_JOIN

#: One pass over the items for ``batchpipe status`` (:meth:`SqliteLedger.item_summary`), grouped by (status, error
#: code): a handful of groups whatever the size, in the shape :func:`~batchpipe.domain.records.item_summary` reads.
#: "Latest attempt" costs the pass nothing: ``retried`` holds the highest attempt of every item that has more than
#: one (a scan of the UNIQUE index's entries with ``attempt > 1``, in its order: no sort), ``older`` the rows below
#: it (one UNIQUE-index search per retried item), and the latest counts are the pass's counts less ``older``'s
#: (the ``superseded = 1`` rows). Only a row in an error status is looked up in ``older`` (the ``CASE`` stops at the
#: status test), to keep a superseded attempt out of its group's example and ``retryable``. A job's rows are read by a
#: scan of the table that tests the job (``job || ''``), not in the UNIQUE index's order (a random page per row).
#: Measured at 1M items, 1,000 retried: 1.27 s against 2.04 s for a ``LEFT JOIN`` of every row to ``retried``.
_SUMMARY_SQL: Final = (
    "WITH {retried}, "
    "older AS MATERIALIZED (SELECT i.rowid AS id, i.status, i.error_code FROM " + _OLDER_JOIN + ") "
    "SELECT 0 AS superseded, status, error_code, COUNT(*) AS n, SUM(cost_usd) AS cost, "
    "MAX(CASE WHEN status IN ({errors}) AND rowid NOT IN (SELECT id FROM older) THEN COALESCE(retryable, 0) END) AS r, "
    "MIN(CASE WHEN status IN ({errors}) AND rowid NOT IN (SELECT id FROM older) THEN custom_id END) AS example "
    "FROM items WHERE {where_scan} GROUP BY status, error_code "
    "UNION ALL SELECT 1, status, error_code, COUNT(*), NULL, NULL, NULL FROM older GROUP BY status, error_code"
)

#: Most rows :meth:`SqliteLedger.items` reads as one query and sorts (a shard's or a batch's: the Batch API's
#: 50,000 requests; a run's when no more match); more of a run are keyset pages of the primary key.
_ONE_QUERY_ROWS: Final = 50_000

#: Pairs per statement of :meth:`SqliteLedger.succeeded_with` (one JSON parameter: no 999-parameter limit).
_SUCCEEDED_CHUNK: Final = 2000

#: The positions in a JSON array of ``[item_key, hash]`` pairs (parameter 1) whose key's latest ``succeeded``
#: attempt in job (parameter 2) has another ``{column}`` (``request_hash`` or ``source_hash``), or none: the pairs a
#: re-run must send (or render). The latest success is the UNIQUE (job, item_key, attempt) index read backwards
#: from the key's last attempt.
#: One row: the positions as a JSON array (``json_group_array``), so even a chunk where every pair changed (a first
#: build) is one step of SQLite, not a step and a take of the GIL per position.
_CHANGED_SQL: Final = (
    "SELECT json_group_array(p.key) FROM json_each(?1) AS p WHERE (SELECT i.{column} FROM items AS i "
    "WHERE i.job = ?2 AND i.item_key = json_extract(p.value, '$[0]') AND i.status = 'succeeded' "
    "ORDER BY i.attempt DESC LIMIT 1) IS NOT json_extract(p.value, '$[1]')"
)

#: Rows per page of :meth:`SqliteLedger.export_jsonl` (keyset pages of the primary key).
_EXPORT_PAGE: Final = 5000


def _iso_sql(column: str) -> str:
    """SQL of ``iso_seconds(column)``: ``datetime.fromtimestamp`` rounds to the microsecond (half to even) before
    the seconds are printed, so a fraction of 0.9999995 s or more is the next second; negative times (never
    written) go to Python."""
    whole = f"CAST({column} AS INTEGER)"
    return (
        f"CASE WHEN typeof({column}) NOT IN ('integer', 'real') THEN NULL WHEN {column} >= 0 THEN "
        f"strftime('%Y-%m-%dT%H:%M:%SZ', {whole} + (({column} - {whole}) * 1e6 >= 999999.5), 'unixepoch') "
        f"ELSE batchpipe_iso_seconds({column}) END"
    )


#: ``output_path`` of an export line: a ``file:///`` URI with nothing to decode or normalise (no ``%``, ``?``, ``#``,
#: tab or newline, no ``//``, ``/./`` or trailing ``/`` or ``/.``: what :meth:`pathlib.Path.as_uri` writes for a path
#: without spaces or non-ASCII characters) is its path, the URI without its scheme; object-store URIs have none;
#: anything else asks :func:`~batchpipe.domain.locations.local_path` (a registered function). ``instr`` tests, not
#: ``GLOB`` patterns: this column was a third of an export's time with character-class patterns.
_OUTPUT_PATH_SQL: Final = (
    "CASE WHEN output_uri IS NULL OR output_uri = '' THEN NULL "
    "WHEN substr(output_uri, 1, 8) = 'file:///' AND instr(output_uri, '%') = 0 AND instr(output_uri, '?') = 0 "
    "AND instr(output_uri, '#') = 0 AND instr(output_uri, char(9)) = 0 AND instr(output_uri, char(10)) = 0 "
    "AND instr(output_uri, char(13)) = 0 AND instr(substr(output_uri, 8), '//') = 0 AND instr(output_uri, '/./') = 0 "
    "AND substr(output_uri, -1) <> '/' AND substr(output_uri, -2) <> '/.' THEN substr(output_uri, 8) "
    "WHEN substr(output_uri, 1, 5) = 's3://' OR substr(output_uri, 1, 9) = 'memory://' THEN NULL "
    "ELSE batchpipe_local_path(output_uri) END"
)


def _json_sql(column: str) -> str:
    """A JSON text column as its value (``json()`` keeps orjson's compact text as it is); NULL or ``''`` is null."""
    return f"json(NULLIF({column}, ''))"


def _export_fields() -> list[tuple[str, str]]:
    """(key, SQL) of an export line, in :meth:`~batchpipe.domain.records.ItemRow.export_record`'s key order."""
    fields: list[tuple[str, str]] = []
    for name in ITEM_COLUMNS:
        if name in ("body_json", "source_hash"):
            continue  # the request body is not exported (its prompt is, last), nor re-runs' bookkeeping
        if name.endswith("_json"):
            fields.append((name.removesuffix("_json"), _json_sql(name)))
        elif name in ("created_at", "updated_at"):
            fields.append((name, _iso_sql(name)))
        elif name == "cost_usd":  # orjson's float text (shortest round trip), not SQLite's 15 digits
            fields.append((name, "json(batchpipe_json_number(cost_usd))"))
        else:
            fields.append(("key" if name == "item_key" else name, name))
        if name == "output_uri":
            fields.append(("output_path", _OUTPUT_PATH_SQL))
    prompt = (
        "CASE WHEN body_json <> '' AND json_type(body_json, '$.prompt') = 'text' "
        "THEN json_extract(body_json, '$.prompt') END"
    )
    fields.append(("prompt", prompt))
    return fields


#: The JSON object of one export line, built by SQLite (``json_object``).
_EXPORT_OBJECT_SQL: Final = "json_object(" + ", ".join(f"'{key}', {sql}" for key, sql in _export_fields()) + ")"


def _local_path_text(uri: str | None) -> str | None:
    """``str(local_path(uri))`` or None: the fallback of :data:`_OUTPUT_PATH_SQL`."""
    path = local_path(uri)
    return str(path) if path is not None else None


_NUMBER_TEXT: dict[float, str] = {}


def _json_number(value: float | None) -> str | None:
    """orjson's JSON text of a number (costs repeat: remembered, up to 10,000 of them)."""
    if value is None:
        return None
    text = _NUMBER_TEXT.get(value)
    if text is None:
        text = orjson.dumps(value).decode()
        if len(_NUMBER_TEXT) < 10_000:
            _NUMBER_TEXT[value] = text
    return text


#: Take or renew a claim in one guarded statement (portable to PostgreSQL): a new row, or the existing one if its
#: owner renews it or its lease ran out; otherwise nothing changes and the row count is 0.
_CLAIM_SQL: Final = (
    "INSERT INTO claims (kind, key, owner, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE claims.owner = excluded.owner OR claims.expires_at <= ?"
)


class SqliteLedger:
    """SQLite implementation of the :class:`batchpipe.ports.Ledger` Protocol (WAL mode, ``synchronous=FULL``).

    Thread-safe: one connection guarded by a lock (the pipeline is one asyncio loop plus worker threads that
    never touch the ledger directly). ``transaction()`` groups writes; every public write method either runs
    inside an open transaction or opens its own.

    Raises :class:`~batchpipe.errors.LedgerError` if the file cannot be opened and
    :class:`~batchpipe.errors.TransitionError` for a status change not allowed from the current status.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._stale_logged: set[tuple[str, str, str]] = set()  # (batch_id, stored, reported) already logged
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        #: a build's open group of inserted chunks (see _GROUP_ROWS): (rows in it, its number), and the timer that
        #: commits it once it is _GROUP_S old
        self._group: tuple[int, int] | None = None
        self._groups = 0
        self._group_timer: threading.Timer | None = None
        self._exports = 0  # exports started: names each one's temporary table
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            self._db.execute("PRAGMA foreign_keys=ON")
            # what an export line needs from Python (rarely: see _OUTPUT_PATH_SQL and _iso_sql; and each cost)
            self._db.create_function("batchpipe_local_path", 1, _local_path_text, deterministic=True)
            self._db.create_function("batchpipe_iso_seconds", 1, iso_seconds, deterministic=True)
            self._db.create_function("batchpipe_json_number", 1, _json_number, deterministic=True)
            self._db.executescript(_SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring a ledger file written by an older batchpipe up to this schema (idempotent). ``items.output_uri``
        was ``output_path`` (a plain path, which :func:`~batchpipe.domain.locations.local_path` still reads).
        ``runs.built_at``:
        older versions built a run in one transaction, so a run of theirs with any item or shard was built.
        Indexes older versions made and this one does not use (:data:`_DROPPED_INDEXES`) are dropped; the schema
        script has already made the ones that replace them."""
        for old in _DROPPED_INDEXES:
            self._db.execute(f"DROP INDEX IF EXISTS {old}")
        items = {r["name"] for r in self._db.execute("PRAGMA table_info(items)")}
        if "output_path" in items:  # images are addressed by URI; older rows keep plain absolute paths
            self._db.execute("ALTER TABLE items RENAME COLUMN output_path TO output_uri")
        if "source_hash" not in items:  # rows of older versions have none: a re-run renders them to compare
            self._db.execute("ALTER TABLE items ADD COLUMN source_hash TEXT")
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(runs)")}
        if "built_at" not in columns:
            self._db.execute("ALTER TABLE runs ADD COLUMN built_at DOUBLE PRECISION")
            self._db.execute(
                "UPDATE runs SET built_at = started_at"
                " WHERE EXISTS (SELECT 1 FROM items WHERE items.run_id = runs.run_id)"
                " OR EXISTS (SELECT 1 FROM shards WHERE shards.run_id = runs.run_id)"
            )

    # -- plumbing ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent), after ``PRAGMA optimize`` (statistics of the tables this connection
        used that changed a lot since they were last analyzed)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # closed already, or another writer holds the file
                self._commit_group()
                if self._depth == 0:
                    self._db.execute(f"PRAGMA analysis_limit = {_ANALYSIS_LIMIT}")
                    self._db.execute("PRAGMA optimize")
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    def _analyze(self) -> None:
        """Refresh the planner's statistics of every table (``ANALYZE``, sampled: :data:`_ANALYSIS_LIMIT` rows per
        index, so milliseconds at any size). Skipped inside a transaction; a busy file only costs the refresh."""
        with self._lock:
            if self._depth:
                return
            try:
                self._commit_group()
                self._db.execute(f"PRAGMA analysis_limit = {_ANALYSIS_LIMIT}")
                self._db.execute("ANALYZE")
            except sqlite3.OperationalError as exc:
                log.warning("ledger.analyze_skipped", error=str(exc))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction (re-entrant: inner blocks join the outer one)."""
        with self._lock:
            if self._depth == 0:
                self._commit_group()
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """A transaction whose writes are undone if it raises even when it joins an outer one (a SAVEPOINT then),
        so a caller that catches the error inside its own ``transaction()`` keeps no half-done step."""
        with self.transaction():
            if self._depth == 1:  # outermost: the transaction's own rollback undoes everything
                yield
                return
            self._db.execute("SAVEPOINT step")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO step")
                self._db.execute("RELEASE step")
                raise
            self._db.execute("RELEASE step")

    def _commit_group(self) -> None:
        """Commit a build's open group of inserts (:data:`_GROUP_ROWS`), if there is one, and go back to
        ``synchronous=FULL``. Called under the lock before any other write and when closing."""
        if self._group_timer is not None:
            self._group_timer.cancel()
            self._group_timer = None
        if self._group is not None:
            self._group = None
            try:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def _commit_old_group(self, number: int) -> None:
        """The group timer: commit group ``number`` if it is still open (a build paused between two chunks must
        not keep the write lock from other processes)."""
        with self._lock:
            if self._group is None or self._group[1] != number:
                return
            try:
                self._commit_group()
            except sqlite3.Error as exc:  # the next write of the build meets the same error and raises it
                log.warning("ledger.group_commit_failed", error=str(exc))

    def _exec(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        with self._lock:
            if self._depth == 0:
                self._commit_group()
            return self._db.execute(sql, params)

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _event(self, entity: str, entity_id: str, from_status: str | None, to_status: str, detail: str | None) -> None:
        self._exec(
            "INSERT INTO events (at, entity, entity_id, from_status, to_status, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (self._clock(), entity, entity_id, from_status, to_status, detail),
        )

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
        """The unfinished run of ``job`` if there is one, else a new one: ``(run_id, resumed)``.

        ``output_dir``, ``trust`` and ``spec_path`` are remembered so ``batchpipe retry`` can run the job's
        items again (with the job's session, e.g. its reference mirror).
        """
        with self.transaction():
            rows = self._rows(
                "SELECT run_id FROM runs WHERE job = ? AND status = 'running' ORDER BY started_at DESC", (job,)
            )
            if rows:
                return str(rows[0]["run_id"]), True
            now = self._clock()
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
            run_id = f"{job}-{stamp}"
            suffix = 1
            while self._rows("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)):
                suffix += 1
                run_id = f"{job}-{stamp}-{suffix}"
            self._exec(
                "INSERT INTO runs (run_id, job, spec_hash, api, output_dir, trust, spec_path, status, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (run_id, job, spec_hash, api, output_dir, trust, spec_path, now),
            )
            self._event("run", run_id, None, "running", None)
            return run_id, False

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a run ``finished`` (every item terminal) or ``stopped``; a finished run is never resumed."""
        with self.transaction():
            self._exec(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ? AND status = 'running'",
                (status, self._clock(), run_id),
            )
            self._event("run", run_id, "running", status, None)

    def finish_build(self, run_id: str, shards: Sequence[Mapping[str, object]]) -> int:
        """Close a run's build in one transaction: record its ``shards``, supersede the earlier attempts its items
        replace, set ``runs.built_at``; returns how many earlier attempts were superseded. Raises
        :class:`LedgerError` for an unknown run or one already built (nothing changed)."""
        with self._all_or_nothing():
            rows = self._rows("SELECT built_at FROM runs WHERE run_id = ?", (run_id,))
            if not rows or rows[0]["built_at"] is not None:
                raise LedgerError(f"run {run_id!r} is {'already built' if rows else 'unknown'}")
            for shard in shards:
                self.insert_shard(shard)
            earlier = sorted(  # custom_id order (sorted here: the run's index gives the new attempts' order)
                str(r[0])
                for r in self._rows(
                    "SELECT p.custom_id FROM items i JOIN items p ON p.custom_id = i.previous_custom_id "
                    "WHERE i.run_id = ? AND p.status NOT IN (?, ?)",
                    (run_id, ItemStatus.SUBMITTED, ItemStatus.SUPERSEDED),
                )
            )
            superseded = self.transition_items(earlier, ItemStatus.SUPERSEDED, strict=False) if earlier else 0
            self._exec("UPDATE runs SET built_at = ? WHERE run_id = ?", (self._clock(), run_id))
            self._event("run", run_id, "running", "running", f"built: {len(shards)} shards")
        self._analyze()  # a build is the ledger's biggest change: the planner's statistics follow it
        return superseded

    def discard_build(self, run_id: str) -> int:
        """Delete what an unfinished build of ``run_id`` left (its items and their events, its shards); returns
        how many items went. Raises :class:`LedgerError` for an unknown run or one already built."""
        with self._all_or_nothing():
            rows = self._rows("SELECT built_at FROM runs WHERE run_id = ?", (run_id,))
            if not rows or rows[0]["built_at"] is not None:
                raise LedgerError(f"run {run_id!r} is {'already built' if rows else 'unknown'}: nothing to discard")
            self._exec(
                "DELETE FROM events WHERE entity = 'item'"
                " AND entity_id IN (SELECT custom_id FROM items WHERE run_id = ?)",
                (run_id,),
            )
            gone = self._exec("DELETE FROM items WHERE run_id = ?", (run_id,)).rowcount
            self._exec(
                "DELETE FROM events WHERE entity = 'shard' AND entity_id IN (SELECT name FROM shards WHERE run_id = ?)",
                (run_id,),
            )
            self._exec("DELETE FROM shards WHERE run_id = ?", (run_id,))
            return int(gone)

    def run_info(self, run_id: str) -> dict[str, object] | None:
        """The run's row as a dict, or None."""
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return dict(rows[0]) if rows else None

    def open_runs(self) -> list[str]:
        """Runs ``running`` and built, oldest first (see :meth:`batchpipe.ports.Ledger.open_runs`)."""
        rows = self._rows(
            "SELECT run_id FROM runs WHERE status = 'running' AND built_at IS NOT NULL ORDER BY started_at, run_id"
        )
        return [str(row["run_id"]) for row in rows]

    def latest_run(self, job: str | None = None) -> dict[str, object] | None:
        """The most recently started run (of ``job`` if given)."""
        if job is None:
            rows = self._rows("SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
        else:
            rows = self._rows("SELECT * FROM runs WHERE job = ? ORDER BY started_at DESC LIMIT 1", (job,))
        return dict(rows[0]) if rows else None

    # -- items ------------------------------------------------------------------------------------------
    def insert_items(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Insert new item rows (``status`` must be ``pending`` or ``invalid``); returns how many.

        Each mapping gives the ``items`` columns (see ``ITEM_COLUMNS``); missing optional ones are NULL.
        Raises :class:`LedgerError` on a duplicate ``custom_id`` or (job, key, attempt) or a missing required
        column, and then inserts none of ``rows``.

        Called on its own (a build's 1,000-row chunks, not inside :meth:`transaction`), the chunk joins the build's
        open group: one transaction for up to :data:`_GROUP_ROWS` rows or :data:`_GROUP_S` seconds, committed by
        the chunk that fills it, by a timer once it is that old (chunk or not), by the next other write
        (``finish_build``, ``discard_build``, a shard's intent, any ``transaction()``) or :meth:`close`; the chunk
        itself is a SAVEPOINT, so a refused chunk leaves the group's earlier chunks as they were. Other connections
        see a group's rows once it commits; until then it holds the file's write lock (another process's write
        waits, at most about :data:`_GROUP_S`). A group commits
        without waiting for the disk (``synchronous=NORMAL`` in WAL mode: still atomic and safe from a crash of the
        process, not yet from a power cut). Nothing is spent on new rows alone: a build is done only at
        :meth:`finish_build`, and a shard's upload only after its intent, both committed with
        ``synchronous=FULL``, whose WAL sync makes every earlier commit durable too; a build that dies before
        ``finish_build`` is discarded (:meth:`discard_build`) and built again, so losing its open group loses
        nothing. Measured: 100,000 rows in 50 chunks, a transaction each, 6.7 s → 6.1 s wall with ``NORMAL``.
        """
        try:
            columns, params = new_item_params(rows, self._clock())
        except ValueError as exc:
            raise LedgerError(str(exc)) from None
        if not params:
            return 0
        with self._lock:
            if self._depth:  # part of a caller's transaction
                try:
                    with self._all_or_nothing():
                        self._insert_rows(columns, params)
                except sqlite3.IntegrityError as exc:
                    raise _refused(exc) from exc
                return len(params)
            self._insert_grouped(columns, params)
        return len(params)

    def _insert_rows(self, columns: Sequence[str], params: list[tuple[object, ...]]) -> None:
        """Insert one chunk's parameter tuples (``columns`` each), under the lock: one statement, one step of SQLite
        for the whole chunk (:func:`_one_step_insert`), or ``executemany`` where that cannot carry the values."""
        for start in range(0, len(params), _ONE_STEP_ROWS):
            part = params[start : start + _ONE_STEP_ROWS]
            statement = _one_step_insert(columns, part)
            if statement is None:
                self._db.executemany(
                    f"INSERT INTO items ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})", part
                )
            else:
                self._db.execute(*statement)

    def _insert_grouped(self, columns: Sequence[str], params: list[tuple[object, ...]]) -> None:
        """One chunk of a build into its open group (:meth:`insert_items`), under the lock."""
        if self._group is None:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._db.execute("PRAGMA synchronous=FULL")
                raise
            self._groups += 1
            self._group = (0, self._groups)
            timer = threading.Timer(_GROUP_S, self._commit_old_group, args=(self._groups,))
            timer.daemon = True
            timer.start()
            self._group_timer = timer
        self._db.execute("SAVEPOINT chunk")
        try:
            self._insert_rows(columns, params)
        except BaseException as exc:
            if not self._db.in_transaction:  # SQLite rolled the whole group back (disk full, I/O error)
                self._commit_group()  # nothing left to commit: stops the group's timer, FULL again
                raise LedgerError(
                    f"cannot insert items; the build's uncommitted chunks were rolled back: {exc}"
                ) from exc
            self._db.execute("ROLLBACK TO chunk")
            self._db.execute("RELEASE chunk")
            if isinstance(exc, sqlite3.IntegrityError):
                raise _refused(exc) from exc
            raise
        self._db.execute("RELEASE chunk")
        count, number = self._group
        self._group = (count + len(params), number)
        if count + len(params) >= _GROUP_ROWS:
            self._commit_group()

    def transition_items(
        self,
        custom_ids: Sequence[str],
        to_status: ItemStatus,
        *,
        from_statuses: Iterable[ItemStatus] | None = None,
        fields: Mapping[str, object] | None = None,
        strict: bool = True,
    ) -> int:
        """Move items to ``to_status`` (setting ``fields`` and ``updated_at`` too) with a guarded update; returns
        rows changed.

        ``from_statuses`` defaults to every status allowed to reach ``to_status``. With ``strict``, a row that
        is not in an allowed status raises :class:`TransitionError` (and nothing is changed, even inside an outer
        transaction); without it, such rows are left as they are (idempotent replays after a crash). Each row
        changed gets its ``item`` event (``executemany``, same transaction). Per chunk of 500 ids: the rows to move
        are read, then moved by the guarded ``UPDATE``; under PostgreSQL the read becomes ``SELECT ... FOR
        UPDATE``, and here the write lock of ``BEGIN IMMEDIATE`` keeps the two in step.
        """
        allowed = (
            frozenset(from_statuses)
            if from_statuses is not None
            else frozenset(s for s, targets in ITEM_TRANSITIONS.items() if to_status in targets)
        )
        bad = allowed - {s for s, t in ITEM_TRANSITIONS.items() if to_status in t}
        if bad:
            raise TransitionError(f"items cannot move from {sorted(bad)} to {to_status}")
        now = self._clock()
        sets = {**(fields or {}), "status": str(to_status), "updated_at": now}
        set_sql = ", ".join(f"{k} = ?" for k in sets)
        statuses = [str(s) for s in allowed]
        placeholders = ", ".join("?" for _ in statuses)
        moved: list[tuple[str, str]] = []  # (custom_id, status before), in the order given
        with self._all_or_nothing():
            for start in range(0, len(custom_ids), _CHUNK):
                chunk = list(custom_ids[start : start + _CHUNK])
                marks = ", ".join("?" for _ in chunk)
                where = f"WHERE custom_id IN ({marks}) AND status IN ({placeholders})"
                reader = self._db.cursor()
                reader.row_factory = None  # plain tuples: much faster than sqlite3.Row here
                found = dict(reader.execute(f"SELECT custom_id, status FROM items {where}", [*chunk, *statuses]))
                if strict and len(found) != len(chunk):
                    raise TransitionError(
                        f"{len(chunk) - len(found)} of {len(chunk)} items are not in {sorted(allowed)}; "
                        f"cannot move them to {to_status}"
                    )
                if not found:
                    continue
                cur = self._db.execute(f"UPDATE items SET {set_sql} {where}", [*sets.values(), *chunk, *statuses])
                if cur.rowcount != len(found):  # cannot happen under the write lock; a guard for other engines
                    raise TransitionError(f"items moved by another writer while moving them to {to_status}")
                for custom_id in dict.fromkeys(chunk):
                    if custom_id in found:
                        moved.append((custom_id, str(found.pop(custom_id))))
            if moved:
                detail = f"{len(moved)} items"
                self._db.executemany(
                    "INSERT INTO events (at, entity, entity_id, from_status, to_status, detail) "
                    "VALUES (?, 'item', ?, ?, ?, ?)",
                    [(now, custom_id, before, str(to_status), detail) for custom_id, before in moved],
                )
        return len(moved)

    def update_item_fields(self, custom_id: str, fields: Mapping[str, object]) -> None:
        """Set non-status columns of one item (e.g. its shard name)."""
        if "status" in fields:
            raise LedgerError("use transition_items to change a status")
        sets = {**fields, "updated_at": self._clock()}
        self._exec(
            f"UPDATE items SET {', '.join(f'{k} = ?' for k in sets)} WHERE custom_id = ?",
            [*sets.values(), custom_id],
        )

    def item_history(self, custom_id: str) -> list[dict[str, Any]]:
        """The ``item`` events of one item, oldest first: ``event_id``, ``custom_id``, ``from_status``,
        ``to_status``, ``detail``, ``created_at`` (unix seconds); ``[]`` if it never moved."""
        rows = self._rows(
            "SELECT event_id, entity_id AS custom_id, from_status, to_status, detail, at AS created_at FROM events "
            "WHERE entity_id = ? AND entity = 'item' ORDER BY event_id",
            (custom_id,),
        )
        return [dict(r) for r in rows]

    def item(self, custom_id: str) -> ItemRow | None:
        """One item row by ``custom_id``."""
        rows = self._rows("SELECT * FROM items WHERE custom_id = ?", (custom_id,))
        return ItemRow(**dict(rows[0])) if rows else None

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
        """Item rows matching every given filter, in ``custom_id`` order, streamed in pages of 1,000 (keyset pages
        that the primary key serves in order, testing the run or job on the way). The rows of one
        ``shard`` or ``batch_id`` (at most 50,000: the Batch API's limit) are one query of that column's index,
        ordered here; so are a run's when at most :data:`_ONE_QUERY_ROWS` match (counted first through
        ``items_run``, stopping at one more): its failed rows, or a run that skipped every item, are then found in
        time linear in the run, not in every run the ledger holds.

        ``latest_only`` keeps, per (job, key), only the highest attempt (the row that speaks for the item).
        """
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        # ``job || ''`` / ``run_id || ''``: no index gives a job's or a run's rows in custom_id order (the UNIQUE one
        # is job, item_key, attempt; ``items_run`` is run_id in insertion order, cheap to build), so their pages
        # follow the primary key and test the job or run, instead of sorting the whole run on every page
        if key is not None:  # one item's attempts: the UNIQUE (job, item_key, attempt) index finds them with a job
            where.append("item_key = ?" if job is None else "job = ? AND item_key = ?")
            params.extend([key] if job is None else [job, key])
            job = None
        for column, value in (("job || ''", job), ("shard", shard), ("batch_id", batch_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for column, values in (
            ("status", statuses),
            ("error_code", error_codes),
            ("c2pa_state", c2pa_states),
        ):
            if values is not None:
                listed = [str(v) for v in values]
                where.append(f"{column} IN ({', '.join('?' for _ in listed)})" if listed else "1 = 0")
                params.extend(listed)
        if since is not None:
            where.append("updated_at >= ?")
            params.append(since)
        if until is not None:
            where.append("updated_at < ?")
            params.append(until)
        if latest_only:
            where.append(_LATEST_ATTEMPT)
        # the run's test comes first: ``test`` reads it on the way (``run_id || ''``), ``indexed`` through its index
        test = indexed = " AND ".join(where)
        if run_id is not None:
            test, indexed = f"run_id || '' = ? AND {test}", f"run_id = ? AND {test}"
            params.insert(0, run_id)
        bounded = shard is not None or batch_id is not None or key is not None  # <= 50,000 rows
        source = "items"
        if not bounded and run_id is not None:
            # a run's rows through its index, if few match: the follow-up's failed rows of a run, a re-run's run
            # that skipped everything. The primary key's pages test every row of every run the ledger holds
            # (2.85 s for no row of a new run beside a 1,000,000-item one; more with every night kept)
            probe = f"SELECT count(*) FROM (SELECT 1 FROM items INDEXED BY items_run WHERE {indexed} LIMIT ?)"
            if int(self._rows(probe, [*params, _ONE_QUERY_ROWS + 1])[0][0]) <= _ONE_QUERY_ROWS:
                bounded, test, source = True, indexed, "items INDEXED BY items_run"
        if bounded:  # one query, one sort
            rows = self._rows(f"SELECT * FROM {source} WHERE {test}", params)
            rows.sort(key=lambda row: str(row["custom_id"]))
            for row in rows:
                yield ItemRow(**dict(row))
            return
        last = ""
        while True:
            rows = self._rows(
                f"SELECT * FROM items WHERE {test} AND custom_id > ? ORDER BY custom_id LIMIT 1000",
                [*params, last],
            )
            if not rows:
                return
            for row in rows:
                yield ItemRow(**dict(row))
            last = str(rows[-1]["custom_id"])

    def latest_attempts(self, job: str, keys: Sequence[str]) -> dict[str, ItemRow]:
        """For each key of ``job`` that has rows, its highest attempt (:func:`~batchpipe.domain.records.
        highest_attempts`)."""
        chunks = (list(keys[start : start + _CHUNK]) for start in range(0, len(keys), _CHUNK))
        return highest_attempts(
            row
            for chunk in chunks
            for row in self._rows(
                f"SELECT * FROM items WHERE job = ? AND item_key IN ({', '.join('?' for _ in chunk)})", [job, *chunk]
            )
        )

    def succeeded_with(
        self, job: str, pairs: Sequence[tuple[str, str]], *, by: HashColumn = "request_hash"
    ) -> set[str]:
        """The keys of ``pairs`` (``(item_key, hash)``) whose latest succeeded attempt in ``job`` has that hash in
        column ``by``: the items a re-run skips as unchanged (see :meth:`batchpipe.ports.Ledger.succeeded_with`).

        One statement per :data:`_SUCCEEDED_CHUNK` pairs, passed as one JSON array (:data:`_CHANGED_SQL`): SQLite
        looks each key's latest success up in the UNIQUE (job, item_key, attempt) index and returns only the
        positions of the pairs that do *not* match, as one JSON array, so every chunk is one step of SQLite with the
        GIL released. Returning every match row by row made the ledger thread take the GIL back 1,000,000 times
        beside the validating event loop: 9 s of a 1,000,000-row re-run (py-spy), against 4.1 s alone; returning the
        changed positions row by row cost a first build as much (every position changed: 9.6 s of py-spy samples
        in the build phase at 1,000,000 items with two lookups per chunk)."""
        sql = _CHANGED_SQL.format(column=hash_column(by))
        unchanged: set[str] = set()
        for start in range(0, len(pairs), _SUCCEEDED_CHUNK):
            chunk = pairs[start : start + _SUCCEEDED_CHUNK]
            with self._lock:
                reader = self._db.cursor()
                reader.row_factory = None
                (positions,) = reader.execute(sql, (orjson.dumps(chunk).decode(), job)).fetchone()
            changed = set(orjson.loads(positions))
            unchanged.update(key for i, (key, _) in enumerate(chunk) if i not in changed)
        return unchanged

    def succeeded_hashes(self, job: str) -> Iterator[tuple[str, str]]:
        """``(item_key, request_hash)`` of every succeeded item of ``job`` (for skip-unchanged re-runs)."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT item_key, request_hash FROM items WHERE job = ? AND status = 'succeeded'", (job,)
            )
            rows = cursor.fetchall()
        for row in rows:
            yield str(row[0]), str(row[1])

    def count_items(
        self, *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> dict[str, int]:
        """Item counts by status (only statuses that occur), for a run, a job, or everything: one aggregate query.
        ``latest_only`` counts, per (job, key), only the highest attempt (as :meth:`items` selects it)."""
        where, params = ["1 = 1"], []
        if run_id is not None:
            where, params = ["run_id = ?"], [run_id]
        elif job is not None:
            where, params = ["job = ?"], [job]
        if latest_only:
            where.append(_LATEST_ATTEMPT)
        rows = self._rows(
            f"SELECT status, COUNT(*) AS n FROM items WHERE {' AND '.join(where)} GROUP BY status", params
        )
        return {str(r["status"]): int(r["n"]) for r in rows}

    def cost_usd(self, *, run_id: str | None = None, job: str | None = None) -> float:
        """Sum of recorded costs (USD), for a run (wins over ``job``), a job, or everything."""
        if run_id is not None:
            rows = self._rows("SELECT COALESCE(SUM(cost_usd), 0) AS c FROM items WHERE run_id = ?", (run_id,))
        elif job is not None:
            rows = self._rows("SELECT COALESCE(SUM(cost_usd), 0) AS c FROM items WHERE job = ?", (job,))
        else:
            rows = self._rows("SELECT COALESCE(SUM(cost_usd), 0) AS c FROM items")
        return float(rows[0]["c"])

    def error_counts(
        self, statuses: Iterable[str], *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> list[dict[str, object]]:
        """Items in ``statuses`` by (error code or status, status): one aggregate query (see :class:`Ledger`)."""
        wanted = [str(status) for status in statuses]
        if not wanted:
            return []
        where: list[str] = [f"status IN ({', '.join(['?'] * len(wanted))})"]
        params: list[object] = [*wanted]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        elif job is not None:
            where.append("job = ?")
            params.append(job)
        if latest_only:
            where.append(_LATEST_ATTEMPT)
        rows = self._rows(
            "SELECT COALESCE(error_code, status) AS code, status, COUNT(*) AS n, MAX(COALESCE(retryable, 0)) AS r, "
            f"MIN(custom_id) AS example FROM items WHERE {' AND '.join(where)} "
            "GROUP BY COALESCE(error_code, status), status",
            params,
        )
        return error_groups(dict(r) for r in rows)

    def item_summary(self, error_statuses: Iterable[str], *, job: str | None = None) -> ItemSummary:
        """Counts (every attempt, latest attempts), cost and latest error groups of ``job`` or everything, in one
        aggregate query over the items (:data:`_SUMMARY_SQL`); see :meth:`batchpipe.ports.Ledger.item_summary`."""
        errors = [str(status) for status in error_statuses]
        scope: list[object] = [] if job is None else [job]
        sql = _SUMMARY_SQL.format(
            retried=_RETRIED_CTE.format(where="1 = 1" if job is None else "job = ?"),
            where_scan="1 = 1" if job is None else "job || '' = ?",  # the table front to back, as items() reads it
            errors=", ".join("?" for _ in errors) or "NULL",
        )
        rows = self._rows(sql, [*scope, *errors, *errors, *scope])
        return item_summary((dict(r) for r in rows), errors)

    def export_jsonl(self, *, run_id: str | None = None, latest_only: bool = True) -> Iterator[str]:
        """Export lines built by SQLite (``json_object``, :data:`_EXPORT_OBJECT_SQL`), a chunk per keyset page of
        :data:`_EXPORT_PAGE` rows in ``rowid`` order: the order rows were inserted and the order of the table's
        B-tree, so the file is read front to back (``custom_id`` order, a hash, would read a random page per row: 3-4x
        slower at 1M items). A run's pages are ``items_run`` lookups, whose entries are in ``rowid`` order too. See
        :meth:`batchpipe.ports.Ledger.export_jsonl`; Python only joins the lines.

        The export covers the rows that exist when it starts (``rowid`` up to the largest then). With
        ``latest_only``, the rowids of the attempts a higher one follows (:data:`_OLDER_ATTEMPTS_SQL`) are kept aside
        first in a temporary table of this connection, dropped at the end; a page leaves them out with one lookup
        in it per row."""
        where: list[str] = []
        params: list[object] = []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        older: str | None = None
        with self._lock:
            if latest_only:
                self._exports += 1
                older = f"export_older_{self._exports}"
                self._exec(f"CREATE TEMP TABLE {older} (id INTEGER PRIMARY KEY)")
                self._exec(f"INSERT INTO temp.{older} {_OLDER_ATTEMPTS_SQL}")
            top = self._db.execute("SELECT MAX(rowid) FROM items").fetchone()[0] or 0
        if older is not None:
            where.append(f"rowid NOT IN temp.{older}")
        sql = (
            f"SELECT rowid, {_EXPORT_OBJECT_SQL} FROM items WHERE {' AND '.join([*where, 'rowid > ?', 'rowid <= ?'])} "
            f"ORDER BY rowid LIMIT {_EXPORT_PAGE}"
        )
        last = 0
        try:
            while True:
                with self._lock:
                    reader = self._db.cursor()
                    reader.row_factory = None
                    page = reader.execute(sql, [*params, last, top]).fetchall()
                if not page:
                    return
                yield "\n".join(line for _, line in page) + "\n"
                last = int(page[-1][0])
        finally:
            if older is not None:
                with self._lock, contextlib.suppress(sqlite3.Error):  # a closed ledger took its temporary tables
                    self._exec(f"DROP TABLE IF EXISTS temp.{older}")

    # -- shards (submission intents) --------------------------------------------------------------------
    def insert_shard(self, row: Mapping[str, object]) -> None:
        """Record a built shard (``status`` ``built``). Raises :class:`LedgerError` on a duplicate ``name`` or a
        missing required column."""
        now = self._clock()
        values = {**row, "status": "built", "created_at": now, "updated_at": now}
        columns = list(values)
        with self.transaction():
            try:
                self._exec(
                    f"INSERT INTO shards ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                    list(values.values()),
                )
            except sqlite3.IntegrityError as exc:
                raise LedgerError(f"cannot insert shard {values.get('name')!r} (duplicate name?): {exc}") from exc
            self._event("shard", str(values["name"]), None, "built", None)

    def transition_shard(
        self,
        name: str,
        to_status: str,
        *,
        fields: Mapping[str, object] | None = None,
        note: str | None = None,
    ) -> None:
        """Guarded shard status change along :data:`SHARD_TRANSITIONS` (raises :class:`TransitionError`)."""
        allowed = [s for s, targets in SHARD_TRANSITIONS.items() if to_status in targets]
        sets = {**(fields or {}), "status": to_status, "updated_at": self._clock(), "note": note}
        with self.transaction():
            current = self._rows("SELECT status FROM shards WHERE name = ?", (name,))
            if not current:
                raise LedgerError(f"no shard {name!r}")
            cur = self._exec(
                f"UPDATE shards SET {', '.join(f'{k} = ?' for k in sets)} WHERE name = ? "
                f"AND status IN ({', '.join('?' for _ in allowed)})",
                [*sets.values(), name, *allowed],
            )
            if cur.rowcount != 1:
                raise TransitionError(f"shard {name} is {current[0]['status']}, cannot move to {to_status}")
            self._event("shard", name, str(current[0]["status"]), to_status, note)

    def shards(self, *, run_id: str | None = None, statuses: Iterable[str] | None = None) -> list[ShardRow]:
        """Shards of a run (or all), optionally by status, in creation order."""
        where, params = ["1 = 1"], []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if statuses is not None:
            listed = list(statuses)
            where.append(f"status IN ({', '.join('?' for _ in listed)})" if listed else "1 = 0")
            params.extend(listed)
        rows = self._rows(f"SELECT * FROM shards WHERE {' AND '.join(where)} ORDER BY created_at, name", params)
        return [ShardRow(**dict(r)) for r in rows]

    def shard(self, name: str) -> ShardRow | None:
        """One shard by name."""
        rows = self._rows("SELECT * FROM shards WHERE name = ?", (name,))
        return ShardRow(**dict(rows[0])) if rows else None

    # -- batches ----------------------------------------------------------------------------------------
    def record_batch(self, batch: Mapping[str, Any], *, shard: str, run_id: str, model: str) -> bool:
        """Record a batch the service created (idempotent on ``batch_id``); True if it was new.

        ``created_at`` is the service's (unix seconds), which the poller compares with list pages.
        """
        now = self._clock()
        with self.transaction():
            cur = self._exec(
                "INSERT INTO batches (batch_id, shard, run_id, model, status, input_file_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id) DO NOTHING",
                (
                    batch["id"],
                    shard,
                    run_id,
                    model,
                    batch["status"],
                    batch["input_file_id"],
                    float(batch.get("created_at") or now),
                    now,
                ),
            )
            if cur.rowcount:
                self._event("batch", str(batch["id"]), None, str(batch["status"]), shard)
            return bool(cur.rowcount)

    def update_batch(self, batch: Mapping[str, Any]) -> str | None:
        """Store the service's view of a batch if its status did not go backwards; returns the previous status if it
        moved forward, else None (see :meth:`batchpipe.ports.Ledger.update_batch`). Raises :class:`LedgerError`
        for an unknown batch.

        The stored status is read and the row updated with ``WHERE status = <the status read>`` in one transaction
        (compare-and-set; PostgreSQL would read it ``FOR UPDATE``)."""
        batch_id = str(batch["id"])
        reported = str(batch["status"])
        errors = batch.get("errors")
        ended = None
        for key in ("completed_at", "failed_at", "expired_at", "cancelled_at"):
            if batch.get(key):
                ended = float(batch[key])
        with self.transaction():
            rows = self._rows("SELECT status FROM batches WHERE batch_id = ?", (batch_id,))
            if not rows:
                raise LedgerError(f"unknown batch {batch_id!r}")
            previous = str(rows[0]["status"])
            if reported != previous and not batch_may_move(previous, reported):
                self._stale_batch(batch_id, previous, reported)
                return None
            cur = self._exec(
                "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?, request_counts_json = ?, "
                "errors_json = ?, ended_at = COALESCE(ended_at, ?), updated_at = ? WHERE batch_id = ? AND status = ?",
                (
                    reported,
                    batch.get("output_file_id"),
                    batch.get("error_file_id"),
                    orjson.dumps(batch.get("request_counts")).decode(),
                    orjson.dumps(redact_value(errors)).decode() if errors else None,
                    ended,
                    self._clock(),
                    batch_id,
                    previous,
                ),
            )
            if cur.rowcount != 1:  # cannot happen under the write lock; a guard for other engines
                raise LedgerError(f"batch {batch_id} changed under an update")
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
        """Batch rows of a run or all; ``unfinished``: not yet reconciled."""
        where, params = ["1 = 1"], []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if unfinished:
            where.append("reconciled = 0")
        return [
            BatchRow(**dict(r))
            for r in self._rows(f"SELECT * FROM batches WHERE {' AND '.join(where)} ORDER BY created_at", params)
        ]

    def batch(self, batch_id: str) -> BatchRow | None:
        """One batch row by id."""
        rows = self._rows("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
        return BatchRow(**dict(rows[0])) if rows else None

    def set_batch_progress(self, batch_id: str, **fields: object) -> None:
        """Set collection progress columns (``output_offset``, ``error_offset``, ``output_done``, ``error_done``,
        ``reconciled``) of a batch."""
        allowed = {"output_offset", "error_offset", "output_done", "error_done", "reconciled"}
        if not fields or set(fields) - allowed:
            raise LedgerError(f"unknown batch progress fields: {sorted(set(fields) - allowed)}")
        self._exec(
            f"UPDATE batches SET {', '.join(f'{k} = ?' for k in fields)}, updated_at = ? WHERE batch_id = ?",
            [*fields.values(), self._clock(), batch_id],
        )

    # -- files ------------------------------------------------------------------------------------------
    def record_file(self, file_obj: Mapping[str, Any], *, role: str, sha256: str | None = None) -> None:
        """Record a Files API object (``OpenAIFile``) with our ``role`` (input/output/error/reference)."""
        self._exec(
            "INSERT INTO files (file_id, role, purpose, filename, bytes, sha256, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (file_id) DO NOTHING",
            (
                file_obj["id"],
                role,
                file_obj.get("purpose", ""),
                file_obj.get("filename"),
                file_obj.get("bytes"),
                sha256,
                float(file_obj.get("created_at") or self._clock()),
                file_obj.get("expires_at"),
            ),
        )

    def mark_file_deleted(self, file_id: str) -> None:
        """Record that a file was deleted from the Files API."""
        self._exec(
            "UPDATE files SET deleted_at = ? WHERE file_id = ? AND deleted_at IS NULL",
            (self._clock(), file_id),
        )

    def files(
        self, *, role: str | None = None, deleted: bool | None = None, file_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """File rows as dicts, by role, deletion state and id."""
        where: list[str] = ["1 = 1"]
        params: list[object] = []
        if role is not None:
            where.append("role = ?")
            params.append(role)
        if file_ids is not None:
            listed = list(file_ids)
            where.append(f"file_id IN ({', '.join('?' for _ in listed)})" if listed else "1 = 0")
            params.extend(listed)
        if deleted is not None:
            where.append("deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL")
        return [dict(r) for r in self._rows(f"SELECT * FROM files WHERE {' AND '.join(where)}", params)]

    def file_by_sha256(self, sha256: str, *, role: str, not_expired_at: float) -> dict[str, Any] | None:
        """A live (not deleted, not expiring before ``not_expired_at``) file of ``role`` with this content hash."""
        rows = self._rows(
            "SELECT * FROM files WHERE sha256 = ? AND role = ? AND deleted_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY created_at DESC",
            (sha256, role, not_expired_at),
        )
        return dict(rows[0]) if rows else None

    # -- events -----------------------------------------------------------------------------------------
    def events(self, *, entity: str | None = None, entity_id: str | None = None) -> list[dict[str, Any]]:
        """The append-only transition log, oldest first."""
        where, params = ["1 = 1"], []
        if entity is not None:
            where.append("entity = ?")
            params.append(entity)
        if entity_id is not None:
            where.append("entity_id = ?")
            params.append(entity_id)
        return [
            dict(r) for r in self._rows(f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY event_id", params)
        ]

    # -- claims (owner + lease) -------------------------------------------------------------------------
    def claim(self, kind: str, key: str, *, owner: str, lease_s: float) -> bool:
        """Take or renew the claim on ``(kind, key)`` for ``owner`` until now + ``lease_s`` seconds; False if another
        owner holds an unexpired lease. One guarded ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (so separate
        connections, other processes included, race safely). Raises ``ValueError`` for a lease that is not a
        positive finite number of seconds."""
        _check_lease(lease_s)
        now = self._clock()
        return self._exec(_CLAIM_SQL, (kind, key, owner, now + lease_s, now)).rowcount == 1

    def release(self, kind: str, key: str, *, owner: str) -> bool:
        """Drop the claim on ``(kind, key)`` if ``owner`` holds it (expired or not); True if dropped."""
        cur = self._exec("DELETE FROM claims WHERE kind = ? AND key = ? AND owner = ?", (kind, key, owner))
        return cur.rowcount == 1

    def claim_holder(self, kind: str, key: str) -> tuple[str, float] | None:
        """``(owner, expires_at)`` (unix seconds) of the unexpired claim on ``(kind, key)``, or None."""
        rows = self._rows(
            "SELECT owner, expires_at FROM claims WHERE kind = ? AND key = ? AND expires_at > ?",
            (kind, key, self._clock()),
        )
        return (str(rows[0]["owner"]), float(rows[0]["expires_at"])) if rows else None


#: Rows per statement of :func:`_one_step_insert` (a build's chunk is one).
_ONE_STEP_ROWS: Final = 1000
#: The ``items`` columns of type REAL: SQLite's JSON reader does not read every double back exactly (3.40: 378,000
#: of 400,000 random doubles came back changed), so :func:`_one_step_insert` binds them as parameters instead.
_REAL_ITEM_COLUMNS: Final = frozenset({"created_at", "updated_at", "cost_usd"})


def _one_step_insert(columns: Sequence[str], params: list[tuple[object, ...]]) -> tuple[str, tuple[object, ...]] | None:
    """``(sql, parameters)`` inserting every tuple of ``params`` (values of ``columns``) into ``items`` as one
    statement: the tuples as one JSON array (parameter 1) read by ``json_each``; the REAL columns
    (:data:`_REAL_ITEM_COLUMNS`) bound once, so each must hold one value in every tuple (a chunk's rows share their
    times). None when that does not hold, or the JSON cannot carry the values exactly (an integer beyond 53 bits, a
    string orjson refuses, or a NUL character, where SQLite's JSON text ends): then each tuple is its own step.

    Why: ``executemany`` takes the GIL back after every row's step, and beside a busy event loop thread each take
    waits for a switch interval (5 ms): 4,000 rows took 25 s beside a busy thread, 0.1 s alone. One statement per
    chunk takes it back once. Measured (the build phase of ``run``, 1,000,000 items, group commits on, 2,000-row
    chunks): 71–74 s and 274 MB peak RSS with ``executemany``, 60–67 s and 284 MB in statements of 1,000 rows
    (:data:`_ONE_STEP_ROWS`), 55–61 s and 298–308 MB in statements of 2,000 (each statement's JSON text is held
    three times, by orjson, Python and SQLite). The JSON costs SQLite 13 µs a row against 3.8 µs for
    ``executemany`` (17 columns, no index), on the ledger thread, without the GIL. ``INSERT OR FAIL``: a refused
    row ends the statement without a statement journal (the chunk's SAVEPOINT undoes it)."""
    try:
        rows = orjson.dumps(params, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return None
    if b"\\u0000" in rows:
        return None
    values: list[object] = [rows.decode()]
    select: list[str] = []
    for position, column in enumerate(columns):
        if column in _REAL_ITEM_COLUMNS:
            shared = {row[position] for row in params}
            if len(shared) != 1:
                return None
            values.append(shared.pop())
            select.append(f"?{len(values)}")
        else:
            select.append(f"json_extract(value, '$[{position}]')")
    sql = f"INSERT OR FAIL INTO items ({', '.join(columns)}) SELECT {', '.join(select)} FROM json_each(?1)"
    return sql, tuple(values)


def _refused(exc: sqlite3.IntegrityError) -> LedgerError:
    """The error :meth:`SqliteLedger.insert_items` raises for rows the schema refuses."""
    return LedgerError(f"cannot insert items (duplicate custom_id or job/key/attempt?): {exc}")


def _check_lease(lease_s: float) -> None:
    """Raises ValueError unless ``lease_s`` is a positive finite number of seconds."""
    if not (isinstance(lease_s, int | float) and math.isfinite(lease_s) and lease_s > 0):
        raise ValueError(f"a lease must be a positive number of seconds, not {lease_s!r}")


if TYPE_CHECKING:  # mypy proves that SqliteLedger implements the Ledger port; nothing runs
    _conforms: Ledger = SqliteLedger(Path("ledger.sqlite"))


def open_ledger(workdir: Path) -> SqliteLedger:
    """The ledger of a work directory: ``<workdir>/ledger.sqlite``."""
    return SqliteLedger(workdir / "ledger.sqlite")
