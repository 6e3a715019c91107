"""The seams of the pipeline: the ledger, the image store, the C2PA verifier, the Batch API and the clock, as
Protocols, plus :class:`AsyncLedger`, the one way code on the event loop reaches a ledger.

Stages (:mod:`batchpipe.stages`) type against these and never import an adapter; adapters
(:mod:`batchpipe.adapters`: the SQLite ledger, the local image store, the OpenAI HTTP client) and
:mod:`batchpipe.provenance` implement them; :mod:`batchpipe.runtime` wires one to the other. A PostgreSQL ledger or
an object-storage image store plugs in by implementing the same Protocols. :mod:`batchpipe.fakes` ships in-memory
implementations (``MemoryLedger``, ``MemoryImageStore``) and ``tests/contracts`` runs one suite of behaviour tests
against every implementation of :class:`Ledger` and :class:`ImageStore`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from batchpipe.domain.api import Batch, FileObject, Page
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import BatchRow, HashColumn, ItemRow, ItemSummary, ShardRow

__all__ = [
    "AsyncLedger",
    "BatchApi",
    "Clock",
    "FileContent",
    "ImageStore",
    "Ledger",
    "StoredImage",
    "Verifier",
    "VerifierReport",
]


class Clock(Protocol):
    """Now, as unix seconds (``time.time``): injected wherever the pipeline reads the time, so tests pin it."""

    def __call__(self) -> float: ...


@dataclass(frozen=True, slots=True)
class StoredImage:
    """Where an image went: ``location`` (a URI: ``file:///...``, ``s3://bucket/key``...), ``sha256`` (hex),
    ``size_bytes``."""

    location: str
    sha256: str
    size_bytes: int


class ImageStore(Protocol):
    """The image store as the collector uses it (thread-safe: called from worker threads). Images are addressed
    by URI (:mod:`batchpipe.domain.locations`), which is what the ledger records (``items.output_uri``), so any
    store can answer for the images it holds."""

    def location_for(self, key: str, index: int, ext: str, attempt: int = 1) -> str:
        """The deterministic location (a URI inside this store) of image ``index`` (0-based, of ``n``) of attempt
        ``attempt`` (1-based) of item ``key`` with extension ``ext``. Different attempts get different locations,
        so a new attempt never replaces the file an earlier attempt's ledger row describes (its sha256 keeps
        matching); attempt 1 keeps the name it always had. Raises ``ValueError`` for an attempt below 1."""
        ...

    def read(self, location: str) -> bytes:
        """The bytes stored at ``location``. Raises ``FileNotFoundError`` if there are none."""
        ...

    def put(self, location: str, data: bytes) -> StoredImage:
        """Store ``data`` at ``location`` atomically (all or nothing; durable by the next :meth:`sync` at the
        latest); returns what was stored."""
        ...

    def exists(self, location: str) -> bool:
        """True if something is stored at ``location``."""
        ...

    def sync(self) -> None:
        """Make everything ``put`` so far durable (called before the ledger records it)."""
        ...


class VerifierReport(Protocol):
    """One file's C2PA result as the collector records it (``provenance.verify.C2paReport``): ``state``
    (``trusted``, ``valid``, ``invalid``, ``missing``, ``unreadable``) and ``to_dict()``, the JSON the ledger keeps
    in ``c2pa_json`` (issuer, claim generator, failure codes...)."""

    @property
    def state(self) -> str: ...

    def to_dict(self) -> dict[str, object]: ...


class Verifier(Protocol):
    """What the collector needs of a C2PA verifier (:class:`batchpipe.provenance.verify.C2paVerifier`)."""

    def verify_bytes(self, data: bytes, mime: str | None = None) -> VerifierReport:
        """Check one in-memory file (``mime`` a hint, None: detect); never raises for bad data."""
        ...


class Ledger(Protocol):
    """The results ledger: the source of truth for every run, item, shard, batch and Files API object.

    Implementations: :class:`batchpipe.adapters.sqlite_ledger.SqliteLedger` (WAL file, the production one) and
    :class:`batchpipe.fakes.MemoryLedger` (in memory, for tests); ``tests/contracts/test_ledger_contract.py`` holds
    every implementation to the semantics written here.

    Rules every implementation keeps:

    * Item statuses move only along :data:`~batchpipe.domain.records.ITEM_TRANSITIONS` and shard statuses along
      :data:`~batchpipe.domain.records.SHARD_TRANSITIONS`, by guarded compare-and-set changes (a row moves only if
      it is in an allowed status at the moment of the change, so two writers cannot both move it); a change the
      table forbids raises :class:`~batchpipe.errors.TransitionError` and changes nothing.
    * Batch statuses only move forward (:data:`~batchpipe.domain.records.BATCH_TRANSITIONS`): an older status
      reported later is ignored, not an error (:meth:`update_batch`).
    * Every run, shard and batch status change appends to ``events`` (the append-only log), and so does every
      item's: one event per item changed, in the transaction of the change (:meth:`item_history`).
    * Work is claimed before it is done (:meth:`claim`: an owner and a lease on ``(kind, key)``), so two workers
      sharing one ledger never take the same shard or output file.
    * Thread-safe; :meth:`transaction` groups writes atomically, and every write method outside one opens its own.
    * Rows come back as they were stored: times are unix seconds (float), flags and sizes ints (sizes in bytes).
    * Other refusals raise :class:`~batchpipe.errors.LedgerError` (duplicate rows, unknown batch or shard...).
    """

    def close(self) -> None:
        """Release the ledger's resources (idempotent)."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A block whose writes all happen or, if it raises, none do (rolled back, the exception propagates).

        Re-entrant: an inner block joins the outer one (only the outermost block commits or rolls back). Other
        threads wait while a block is open.
        """
        ...

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
        """The unfinished (``running``) run of ``job`` if there is one, else a new one: ``(run_id, resumed)``.

        A new run's id is ``<job>-<UTC YYYYmmddTHHMMSS>`` (``-2``, ``-3``... if taken) and logs a ``run`` event.
        ``output_dir``, ``trust`` and ``spec_path`` are stored on a new run (so a retry can run its items again).
        """
        ...

    def finish_run(self, run_id: str, status: str) -> None:
        """Mark a ``running`` run ``status`` (``finished``: every item terminal, or ``stopped``) with
        ``finished_at``; a run that is not running is left as it is (a ``run`` event is logged either way). A
        finished run is never resumed."""
        ...

    def run_info(self, run_id: str) -> dict[str, object] | None:
        """The run's row (``run_id``, ``job``, ``spec_hash``, ``api``, ``output_dir``, ``trust``, ``spec_path``,
        ``status``, ``started_at``, ``finished_at``, ``built_at``) as a new dict, or None."""
        ...

    def finish_build(self, run_id: str, shards: Sequence[Mapping[str, object]]) -> int:
        """Close the build of ``run_id`` in one transaction: insert its ``shards`` (as :meth:`insert_shard`),
        supersede every earlier attempt (``previous_custom_id``) of the run's items that is not ``submitted`` or
        already ``superseded``, and set the run's ``built_at`` (now) with a ``run`` event. A build writes its items
        in chunks (:meth:`insert_items`, each atomic; an implementation may commit several in one transaction,
        and commits them all here at the latest) and ends here, so a run without ``built_at`` is
        a build that did not finish. Returns how many attempts were superseded. Raises
        :class:`~batchpipe.errors.LedgerError` for an unknown run or one already built (nothing changed)."""
        ...

    def discard_build(self, run_id: str) -> int:
        """Delete what an unfinished build of ``run_id`` left (its items with their events, its shards), so it can
        be built again from the start; returns how many items were deleted. Raises
        :class:`~batchpipe.errors.LedgerError` for an unknown run or one already built (nothing changed)."""
        ...

    def open_runs(self) -> list[str]:
        """The ids of the runs that are ``running`` and built (``built_at`` set), oldest first: what workers on a
        shared ledger join (``batchpipe worker``)."""
        ...

    def latest_run(self, job: str | None = None) -> dict[str, object] | None:
        """The most recently started run (of ``job`` if given) as :meth:`run_info` gives it, or None."""
        ...

    # -- items ------------------------------------------------------------------------------------------
    def insert_items(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Insert new item rows, all or none; returns how many.

        Each mapping gives item columns (:data:`~batchpipe.domain.records.ITEM_COLUMNS`; other keys are ignored,
        missing optional ones are NULL, ``created_at``/``updated_at`` default to now). Raises
        :class:`~batchpipe.errors.LedgerError` if a ``status`` is not ``pending`` or ``invalid``, on a duplicate
        ``custom_id`` or (job, item_key, attempt), or a missing required column; then no row is inserted.
        """
        ...

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
        how many rows changed.

        ``from_statuses`` defaults to every status allowed to reach ``to_status``; naming one that may not reach it
        raises :class:`~batchpipe.errors.TransitionError` before anything is looked at. With ``strict``, if any id
        is unknown or not in an allowed status, :class:`~batchpipe.errors.TransitionError` is raised and no row is
        changed (even inside an outer :meth:`transaction` that catches it); without it, such rows are skipped (the
        idempotent replay after a crash). Every row changed logs one ``item`` event in the same transaction (entity
        id: its ``custom_id``, ``from_status``: its status before, ``to_status``, detail ``"<n> items"``: how many
        rows this call changed; ``at``: the ``updated_at`` set), in the order the ids were given.
        """
        ...

    def update_item_fields(self, custom_id: str, fields: Mapping[str, object]) -> None:
        """Set non-status columns of one item (e.g. its shard name); an unknown ``custom_id`` changes nothing.
        Raises :class:`~batchpipe.errors.LedgerError` if ``fields`` has ``status`` (use :meth:`transition_items`)."""
        ...

    def item_history(self, custom_id: str) -> list[dict[str, Any]]:
        """The status changes of one item, oldest first (``[]`` for an unknown id or one that never moved): new
        dicts with ``event_id`` (increasing int), ``custom_id``, ``from_status``, ``to_status``, ``detail`` and
        ``created_at`` (unix seconds). Inserting an item is not a change: its first event is its first move."""
        ...

    def item(self, custom_id: str) -> ItemRow | None:
        """One item row by ``custom_id``, or None."""
        ...

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
        """Item rows matching every given filter, in ``custom_id`` order, streamed lazily in pages.

        ``key``: one item key (its attempts; with ``job`` the unique index finds them, without it every job's).
        ``statuses``/``error_codes``/``c2pa_states``: the column is one of them (an empty list matches nothing);
        ``since``/``until``: ``since <= updated_at < until`` (unix seconds). ``latest_only`` keeps, per (job, key),
        only the row of the highest attempt in the whole ledger (the row that speaks for the item), so a row whose
        later attempt fails another filter is left out too.
        """
        ...

    def latest_attempts(self, job: str, keys: Sequence[str]) -> dict[str, ItemRow]:
        """For each key of ``job`` that has rows, its row of the highest attempt: ``{item_key: row}``."""
        ...

    def succeeded_hashes(self, job: str) -> Iterator[tuple[str, str]]:
        """``(item_key, request_hash)`` of every ``succeeded`` row of ``job``, in no particular order (every row of
        the job: a re-run checks its items with :meth:`succeeded_with`, chunk by chunk, instead)."""
        ...

    def succeeded_with(
        self, job: str, pairs: Sequence[tuple[str, str]], *, by: HashColumn = "request_hash"
    ) -> set[str]:
        """The keys of ``pairs`` (``(item_key, hash)``) whose latest ``succeeded`` row in ``job`` has that hash in
        column ``by``: ``request_hash`` (the request it sent) or ``source_hash`` (what it was built from: a catalog
        row and the part of the job spec that renders it). What a re-run skips as unchanged. Called per chunk of a
        build (an indexed lookup of the chunk's keys), so no caller holds every hash of a catalog. A key given in
        several pairs is in the answer when any of them matches. Raises ``ValueError`` for another ``by``."""
        ...

    def count_items(
        self, *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> dict[str, int]:
        """Item counts by status (only statuses that occur), for a run (``run_id`` wins over ``job``), a job, or
        everything, counted by the store (an aggregate query), never by reading the rows. ``latest_only`` counts
        only each item's row of the highest attempt in the whole ledger, as :meth:`items` selects it."""
        ...

    def cost_usd(self, *, run_id: str | None = None, job: str | None = None) -> float:
        """Sum of the recorded ``cost_usd`` of items (USD; 0.0 if none), for a run (``run_id`` wins over ``job``), a
        job (every attempt), or everything."""
        ...

    def error_counts(
        self, statuses: Iterable[str], *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> list[dict[str, object]]:
        """Items in ``statuses`` grouped by error code and status, counted by the store (an aggregate query), never
        by reading every row: one dict per group, ``code`` (the error code, or the status for rows without one),
        ``status``, ``count``, ``retryable`` (True if any row of the group is) and ``example_custom_id`` (the
        group's smallest ``custom_id``; :meth:`item` reads it). For a run (``run_id`` wins over ``job``), a job, or
        everything; ``latest_only`` as in :meth:`count_items`. Ordered by count (highest first), code, status."""
        ...

    def item_summary(self, error_statuses: Iterable[str], *, job: str | None = None) -> ItemSummary:
        """What ``batchpipe status`` counts of ``job``'s items (or of every item), in one pass over them: every
        attempt by status, each item's latest attempt by status, the summed cost of every attempt, and the latest
        attempts in ``error_statuses`` grouped as :meth:`error_counts` groups them. Equal to ``count_items(job=job)``,
        ``count_items(job=job, latest_only=True)``, ``cost_usd(job=job)`` and ``error_counts(error_statuses,
        job=job, latest_only=True)``, which would read every row four times (see
        :class:`~batchpipe.domain.records.ItemSummary`)."""
        ...

    def export_jsonl(self, *, run_id: str | None = None, latest_only: bool = True) -> Iterator[str]:
        """``batchpipe ledger export``'s JSON lines: one line per item row of ``run_id`` (or of every run), each
        item's latest attempt only with ``latest_only`` (as :meth:`items` selects it). Each line is
        ``orjson.dumps(row.export_record())`` plus ``\n``, byte for byte
        (:meth:`~batchpipe.domain.records.ItemRow.export_record`). Yielded as chunks of whole lines (a page each),
        read lazily in keyset pages (no OFFSET), in the order the store reads fastest, the same from one export to the
        next (SQLite: the order rows were inserted; PostgreSQL and the in-memory ledger: ``custom_id``). SQLite builds
        each line in SQL and copies a JSON column's text as it is, so the column must hold orjson's compact text (as
        every writer of the ledger stores it)."""
        ...

    # -- shards (submission intents) --------------------------------------------------------------------
    def insert_shard(self, row: Mapping[str, object]) -> None:
        """Record a built shard: ``row`` gives the shard columns of :class:`~batchpipe.domain.records.ShardRow` but
        ``status`` (set to ``built``) and the times; logs a ``shard`` event. Raises
        :class:`~batchpipe.errors.LedgerError` on a duplicate ``name`` or a missing required column."""
        ...

    def transition_shard(
        self,
        name: str,
        to_status: str,
        *,
        fields: Mapping[str, object] | None = None,
        note: str | None = None,
    ) -> None:
        """Guarded shard status change along :data:`~batchpipe.domain.records.SHARD_TRANSITIONS`, setting
        ``fields``, ``note`` (replaced, None clears it) and ``updated_at``; logs a ``shard`` event with ``note`` as
        detail. Raises :class:`~batchpipe.errors.LedgerError` for an unknown shard and
        :class:`~batchpipe.errors.TransitionError` (changing nothing) if its status may not move to ``to_status``."""
        ...

    def shards(self, *, run_id: str | None = None, statuses: Iterable[str] | None = None) -> list[ShardRow]:
        """Shards of a run (or all), optionally by status (an empty list matches nothing), ordered by
        ``created_at`` then ``name``."""
        ...

    def shard(self, name: str) -> ShardRow | None:
        """One shard by name, or None."""
        ...

    # -- batches ----------------------------------------------------------------------------------------
    def record_batch(self, batch: Mapping[str, Any], *, shard: str, run_id: str, model: str) -> bool:
        """Record a batch the service created (an OpenAI ``Batch``: ``id``, ``status``, ``input_file_id``,
        ``created_at`` in unix seconds, else now); idempotent on ``id``: True and a ``batch`` event if it was new,
        False (and nothing changed) if it was known. Collection progress starts at offsets 0, flags 0."""
        ...

    def update_batch(self, batch: Mapping[str, Any]) -> str | None:
        """Store the service's view of a known batch (an OpenAI ``Batch``: status, output/error file ids,
        ``request_counts``, errors; ``ended_at`` is the first end time ever seen, unix seconds).

        Guarded by :func:`~batchpipe.domain.records.batch_may_move`, compare-and-set on the stored status:

        * a move forward stores everything, logs a ``batch`` event and returns the previous status;
        * the same status stores the other fields (e.g. an ``output_file_id`` that appeared) and returns None;
        * a backwards or sideways status (``completed`` → ``in_progress`` from a lagging list page or a cached
          object; any change of a terminal status) stores nothing, logs no event, returns None and is logged (once
          per batch and pair of statuses) as ``ledger.stale_batch_status``.

        A status the service added after this code was written is stored unless the stored one is terminal, and
        counts as not terminal. Raises :class:`~batchpipe.errors.LedgerError` for an unknown batch."""
        ...

    def batches(self, *, run_id: str | None = None, unfinished: bool = False) -> list[BatchRow]:
        """Batch rows (:class:`~batchpipe.domain.records.BatchRow`) of a run or all, by ``created_at``;
        ``unfinished``: not yet ``reconciled``."""
        ...

    def batch(self, batch_id: str) -> BatchRow | None:
        """One batch row by id, or None."""
        ...

    def set_batch_progress(self, batch_id: str, **fields: object) -> None:
        """Set collection progress columns of a batch: ``output_offset``/``error_offset`` (bytes) and
        ``output_done``/``error_done``/``reconciled`` (0 or 1); an unknown ``batch_id`` changes nothing. Raises
        :class:`~batchpipe.errors.LedgerError` if no field or another field is given."""
        ...

    # -- files ------------------------------------------------------------------------------------------
    def record_file(self, file_obj: Mapping[str, Any], *, role: str, sha256: str | None = None) -> None:
        """Record a Files API object (an ``OpenAIFile``: ``id``, ``purpose``, ``filename``, ``bytes``,
        ``created_at``, ``expires_at``) with our ``role`` (input/output/error/reference) and content ``sha256``;
        idempotent on ``id`` (a known file is left as it is)."""
        ...

    def mark_file_deleted(self, file_id: str) -> None:
        """Record that a file was deleted from the Files API (``deleted_at`` = now, kept if already set)."""
        ...

    def files(
        self, *, role: str | None = None, deleted: bool | None = None, file_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """File rows as new dicts (``file_id``, ``role``, ``purpose``, ``filename``, ``bytes``, ``sha256``,
        ``created_at``, ``expires_at``, ``deleted_at``) by role, deletion state and id (an empty id list matches
        nothing), in no particular order."""
        ...

    def file_by_sha256(self, sha256: str, *, role: str, not_expired_at: float) -> dict[str, Any] | None:
        """The newest live file of ``role`` with this content hash: not deleted, and not expiring at or before
        ``not_expired_at`` (unix seconds); None if there is none."""
        ...

    # -- events -----------------------------------------------------------------------------------------
    def events(self, *, entity: str | None = None, entity_id: str | None = None) -> list[dict[str, Any]]:
        """The append-only transition log, oldest first: dicts with ``event_id`` (increasing int), ``at`` (unix
        seconds), ``entity`` (``run``/``item``/``shard``/``batch``), ``entity_id`` (run id, ``custom_id``, shard
        name, batch id), ``from_status`` (None when new or not known), ``to_status`` and ``detail``."""
        ...

    # -- claims (owner + lease) -------------------------------------------------------------------------
    def claim(self, kind: str, key: str, *, owner: str, lease_s: float) -> bool:
        """Take the claim on ``(kind, key)`` for ``owner`` until now + ``lease_s`` (seconds, on the ledger's clock),
        or renew it (a new expiry, now + ``lease_s``) if ``owner`` holds it already; True if ``owner`` holds it now.

        False, and nothing changed, if another owner holds an unexpired lease (expiry after now); an expired claim
        (expiry at or before now) goes to whoever claims it next. One guarded write, so of two workers racing for a
        key exactly one wins. Kinds in use: ``"shard"`` (key: the shard name) and ``"output"`` (key:
        ``"<batch_id>:output"`` or ``"<batch_id>:error"``). A claim inside :meth:`transaction` is rolled back with
        it. Raises ``ValueError`` if ``lease_s`` is not a positive finite number."""
        ...

    def release(self, kind: str, key: str, *, owner: str) -> bool:
        """Drop the claim on ``(kind, key)`` if ``owner`` holds it (even if its lease has run out); True if it was
        dropped, False (nothing changed) if there is none or another owner holds it."""
        ...

    def claim_holder(self, kind: str, key: str) -> tuple[str, float] | None:
        """``(owner, expires_at)`` (unix seconds) of the unexpired claim on ``(kind, key)``, or None."""
        ...


T = TypeVar("T")


class AsyncLedger:
    """The ledger as the pipeline's event loop uses it: every call runs on the ledger's own thread, never on the
    loop, and no transaction spans an ``await``.

    Wraps any :class:`Ledger` (SQLite, the in-memory fake; a PostgreSQL one next). Calls are queued to one worker
    thread in the order they were awaited, so the ledger sees one caller at a time. A group of writes that must
    commit together is one synchronous function given to :meth:`atomic`, which runs it inside
    :meth:`Ledger.transaction` on that thread. Each method has the semantics (and raises the errors) of the
    :class:`Ledger` method of the same name. Code that is not on an event loop (the CLI's reports, tests) uses
    :attr:`sync` directly.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.sync = ledger
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    def close(self) -> None:
        """Stop the ledger thread after the calls already queued (the wrapped ledger stays open)."""
        self._thread.shutdown(wait=True)

    async def call(self, fn: Callable[[Ledger], T]) -> T:
        """``fn(ledger)`` on the ledger thread; its result (or exception)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, self.sync)

    def submit(self, fn: Callable[[Ledger], T]) -> Future[T]:
        """``fn(ledger)`` queued on the ledger thread, in order with the awaited calls, for synchronous code on the
        loop that must not wait for it at once (a generator that looks a chunk up while it reads the next one): a
        :class:`concurrent.futures.Future` whose ``result()`` blocks."""
        return self._thread.submit(fn, self.sync)

    async def atomic(self, fn: Callable[[Ledger], T]) -> T:
        """``fn(ledger)`` inside one :meth:`Ledger.transaction` on the ledger thread: every write in it commits, or
        (if it raises) none does."""

        def run(ledger: Ledger) -> T:
            with ledger.transaction():
                return fn(ledger)

        return await self.call(run)

    # -- the calls the stages make, one line each --------------------------------------------------------
    async def open_run(
        self,
        job: str,
        spec_hash: str,
        api: str,
        *,
        output_dir: str | None = None,
        trust: str | None = None,
        spec_path: str | None = None,
    ) -> tuple[str, bool]:
        """:meth:`Ledger.open_run`."""
        return await self.call(
            lambda db: db.open_run(job, spec_hash, api, output_dir=output_dir, trust=trust, spec_path=spec_path)
        )

    async def finish_run(self, run_id: str, status: str) -> None:
        """:meth:`Ledger.finish_run`."""
        await self.call(lambda db: db.finish_run(run_id, status))

    async def run_info(self, run_id: str) -> dict[str, object] | None:
        """:meth:`Ledger.run_info`."""
        return await self.call(lambda db: db.run_info(run_id))

    async def open_runs(self) -> list[str]:
        """:meth:`Ledger.open_runs`."""
        return await self.call(lambda db: db.open_runs())

    async def finish_build(self, run_id: str, shards: Sequence[Mapping[str, object]]) -> int:
        """:meth:`Ledger.finish_build`."""
        return await self.call(lambda db: db.finish_build(run_id, shards))

    async def discard_build(self, run_id: str) -> int:
        """:meth:`Ledger.discard_build`."""
        return await self.call(lambda db: db.discard_build(run_id))

    async def insert_items(self, rows: Sequence[Mapping[str, object]]) -> int:
        """:meth:`Ledger.insert_items`."""
        return await self.call(lambda db: db.insert_items(rows))

    async def transition_items(
        self,
        custom_ids: Sequence[str],
        to_status: ItemStatus,
        *,
        from_statuses: Iterable[ItemStatus] | None = None,
        fields: Mapping[str, object] | None = None,
        strict: bool = True,
    ) -> int:
        """:meth:`Ledger.transition_items`."""
        return await self.call(
            lambda db: db.transition_items(
                custom_ids, to_status, from_statuses=from_statuses, fields=fields, strict=strict
            )
        )

    async def items(self, **filters: Any) -> list[ItemRow]:
        """:meth:`Ledger.items` with the same keyword filters, read whole (a list: use it for bounded sets, e.g.
        one batch's rows; page through :attr:`sync` in a thread for a whole catalog)."""
        return await self.call(lambda db: list(db.items(**filters)))

    async def latest_attempts(self, job: str, keys: Sequence[str]) -> dict[str, ItemRow]:
        """:meth:`Ledger.latest_attempts`."""
        return await self.call(lambda db: db.latest_attempts(job, keys))

    async def succeeded_with(
        self, job: str, pairs: Sequence[tuple[str, str]], *, by: HashColumn = "request_hash"
    ) -> set[str]:
        """:meth:`Ledger.succeeded_with`."""
        return await self.call(lambda db: db.succeeded_with(job, pairs, by=by))

    async def count_items(
        self, *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
    ) -> dict[str, int]:
        """:meth:`Ledger.count_items`."""
        return await self.call(lambda db: db.count_items(run_id=run_id, job=job, latest_only=latest_only))

    async def cost_usd(self, *, run_id: str | None = None, job: str | None = None) -> float:
        """:meth:`Ledger.cost_usd`."""
        return await self.call(lambda db: db.cost_usd(run_id=run_id, job=job))

    async def transition_shard(
        self, name: str, to_status: str, *, fields: Mapping[str, object] | None = None, note: str | None = None
    ) -> None:
        """:meth:`Ledger.transition_shard`."""
        await self.call(lambda db: db.transition_shard(name, to_status, fields=fields, note=note))

    async def shards(self, *, run_id: str | None = None, statuses: Iterable[str] | None = None) -> list[ShardRow]:
        """:meth:`Ledger.shards`."""
        return await self.call(lambda db: db.shards(run_id=run_id, statuses=statuses))

    async def shard(self, name: str) -> ShardRow | None:
        """:meth:`Ledger.shard`."""
        return await self.call(lambda db: db.shard(name))

    async def update_batch(self, batch: Mapping[str, Any]) -> str | None:
        """:meth:`Ledger.update_batch`."""
        return await self.call(lambda db: db.update_batch(batch))

    async def batches(self, *, run_id: str | None = None, unfinished: bool = False) -> list[BatchRow]:
        """:meth:`Ledger.batches`."""
        return await self.call(lambda db: db.batches(run_id=run_id, unfinished=unfinished))

    async def batch(self, batch_id: str) -> BatchRow | None:
        """:meth:`Ledger.batch`."""
        return await self.call(lambda db: db.batch(batch_id))

    async def set_batch_progress(self, batch_id: str, **fields: object) -> None:
        """:meth:`Ledger.set_batch_progress`."""
        await self.call(lambda db: db.set_batch_progress(batch_id, **fields))

    async def record_file(self, file_obj: Mapping[str, Any], *, role: str, sha256: str | None = None) -> None:
        """:meth:`Ledger.record_file`."""
        await self.call(lambda db: db.record_file(file_obj, role=role, sha256=sha256))

    async def mark_file_deleted(self, file_id: str) -> None:
        """:meth:`Ledger.mark_file_deleted`."""
        await self.call(lambda db: db.mark_file_deleted(file_id))

    async def files(
        self, *, role: str | None = None, deleted: bool | None = None, file_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`Ledger.files`."""
        return await self.call(lambda db: db.files(role=role, deleted=deleted, file_ids=file_ids))

    async def file_by_sha256(self, sha256: str, *, role: str, not_expired_at: float) -> dict[str, Any] | None:
        """:meth:`Ledger.file_by_sha256`."""
        return await self.call(lambda db: db.file_by_sha256(sha256, role=role, not_expired_at=not_expired_at))

    async def claim(self, kind: str, key: str, *, owner: str, lease_s: float) -> bool:
        """:meth:`Ledger.claim`."""
        return await self.call(lambda db: db.claim(kind, key, owner=owner, lease_s=lease_s))

    async def release(self, kind: str, key: str, *, owner: str) -> bool:
        """:meth:`Ledger.release`."""
        return await self.call(lambda db: db.release(kind, key, owner=owner))

    async def claim_holder(self, kind: str, key: str) -> tuple[str, float] | None:
        """:meth:`Ledger.claim_holder`."""
        return await self.call(lambda db: db.claim_holder(kind, key))


class FileContent(Protocol):
    """The body of ``GET /files/{file_id}/content`` from ``start_byte`` on (``adapters.openai.FileStream``):
    ``total_bytes`` is the whole file's size when the server said it."""

    start_byte: int
    total_bytes: int | None

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The bytes from ``start_byte`` on, in chunks of ``chunk_size`` bytes; a cut stream raises
        ``ApiConnectionError``."""
        ...


class BatchApi(Protocol):
    """The OpenAI Files and Batches API as the pipeline uses it (``adapters.openai.OpenAIClient``;
    ``fakes.batch_api.MemoryBatchApi``). Objects are parsed at this boundary into the typed, lenient models of
    :mod:`batchpipe.domain.api` (``Batch``, ``FileObject``, ``Page``): a field of the wrong type never crashes a
    run. Every method raises the :class:`~batchpipe.errors.ApiError` family (``NotFoundError`` for an unknown id,
    ``ApiProtocolError`` for an answer that is not the object the API promises)."""

    async def upload_file(
        self, path: Path, *, purpose: str, filename: str | None = None, expires_after_s: int | None = None
    ) -> FileObject: ...

    async def list_files(
        self, *, purpose: str | None = None, after: str | None = None, limit: int | None = None, order: str = "desc"
    ) -> Page[FileObject]: ...

    async def retrieve_file(self, file_id: str) -> FileObject:
        """``GET /files/{file_id}``: the ``OpenAIFile`` (``bytes``: the file's size, which a download of its
        content must reach)."""
        ...

    async def delete_file(self, file_id: str) -> dict[str, Any]: ...

    def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AbstractAsyncContextManager[FileContent]: ...

    async def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, str] | None = None,
        output_expires_after_s: int | None = None,
    ) -> Batch: ...

    async def retrieve_batch(self, batch_id: str) -> Batch: ...

    async def list_batches(self, *, after: str | None = None, limit: int = 100) -> Page[Batch]: ...

    def iter_batches(
        self, *, limit: int = 100, stop: Callable[[Batch], bool] | None = None
    ) -> AsyncIterator[Batch]: ...

    async def retrieve_model(self, model: str) -> dict[str, Any]: ...
