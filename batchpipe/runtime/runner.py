"""The run: build → submit (intent first) → poll → collect → reconcile → follow-up attempts.

Decide first, then do the I/O (STYLE.md §8): every remote call that creates something (upload, batch create)
is preceded by a committed *intent* (the shard's status in the ledger), so a process killed at any point
restarts, reconciles the intent against ``GET /v1/files`` / ``GET /v1/batches`` and adopts what the service
already has instead of creating it twice (gotchas #9). The ledger is the source of truth; running the same
command again resumes the same run.

Shard statuses: ``built → uploading → uploaded → creating → created → done`` (``indeterminate`` stops the
run). Item statuses: see :class:`batchpipe.domain.items.ItemStatus`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from batchpipe.adapters.local_store import LocalImageStore
from batchpipe.domain.api import Batch
from batchpipe.domain.backoff import Backoff
from batchpipe.domain.items import BatchStatus, ImageRef, Item, ItemStatus, make_custom_id, request_hash
from batchpipe.domain.lifecycle import ModelPolicy
from batchpipe.domain.records import BatchRow, ItemRow, ShardRow, batch_status_is_terminal
from batchpipe.domain.spec import estimate_input_tokens
from batchpipe.errors import (
    ApiError,
    ApiStatusError,
    IndeterminateSubmissionError,
    InputError,
    LedgerError,
    NotFoundError,
)
from batchpipe.input.validate import ManifestItems, Unchanged, UnchangedLookup
from batchpipe.ports import AsyncLedger, BatchApi, Clock, ImageStore, Ledger, Verifier
from batchpipe.runtime import costguard
from batchpipe.runtime.settings import RunOptions
from batchpipe.stages.collect import RETRYABLE_ERROR_CODES, Collector
from batchpipe.stages.listing import iter_files
from batchpipe.stages.poll import Poller
from batchpipe.stages.shard import ShardBuilder, ShardInfo, shard_files_of

__all__ = [
    "RunOptions",
    "RunSummary",
    "Runner",
    "SubmissionStalled",
    "Sweep",
    "ValidationFailed",
    "shard_location",
]

log = structlog.get_logger("batchpipe.run")

#: Metadata keys put on every batch we create (SPEC ``Metadata``: <= 16 pairs, keys <= 64, values <= 512).
META_RUN, META_SHARD, META_SHA = "batchpipe_run", "batchpipe_shard", "batchpipe_shard_sha256"
#: How long a claim (a build, a shard being submitted, a batch being collected) holds before another worker may
#: take it over, in seconds: longer than any single step (a 200 MB upload, a 3 GB output file).
DEFAULT_LEASE_S: Final = 3600.0
#: Item rows per ledger call while building (``insert_items``: each call is atomic; the SQLite ledger groups a
#: build's calls into transactions of up to 50,000 rows or 2 seconds, ``sqlite_ledger._GROUP_ROWS``). Measured at
#: 1,000,000 items against 2,000: the build phase of ``run`` 58.8 s and 268 MB peak RSS against 59.8–63.2 s and
#: 284–285 MB; the no-change re-run 17.4–18.5 s and 247 MB against 17.9–18.1 s and 258–259 MB.
_ROWS_PER_CHUNK: Final = 1000
#: Chunk inserts a build keeps queued on the ledger thread while it validates on.
_INSERTS_IN_FLIGHT: Final = 2
#: How far the service's clock may be ahead of ours (seconds): a listed batch proves the list current past an
#: attempt only if the service says it was created at least this long after the attempt (by our clock).
CLOCK_SKEW_S: Final = 30.0
#: Shard statuses of a submission whose outcome a killed worker left undecided (settled by reconciliation).
_INTENT_STATUSES: Final = ("uploading", "creating", "indeterminate")
#: The reserved item-key prefix under which shard files are kept in the image store (:func:`shard_location`).
SHARD_KEY_PREFIX: Final = "_batchpipe/shards/"
#: Environment variable naming this worker (default: the host name): two workers on one machine need two names.
WORKER_ENV: Final = "BATCHPIPE_WORKER"


def default_owner() -> str:
    """This worker's name in the ledger's claims: ``BATCHPIPE_WORKER`` if set, else the host name. It is stable
    across restarts, so a worker killed mid-step takes its own claims back at once instead of waiting for the
    lease to run out."""
    return os.environ.get(WORKER_ENV) or socket.gethostname() or "worker"


def _inputs_json(inputs: tuple[ImageRef, ...]) -> str | None:
    """Input image references as the ledger stores them (JSON list of ``{kind, ref, sha256}``), or None."""
    if not inputs:
        return None
    return orjson.dumps([{"kind": r.kind, "ref": r.ref, "sha256": r.sha256} for r in inputs]).decode()


def _definitely_not_done(exc: ApiError) -> bool:
    """True when the service certainly did not act on the request: a 4xx answer other than 408/409."""
    return isinstance(exc, ApiStatusError) and exc.status_code < 500 and exc.status_code not in (408, 409)


def _worth_waiting(exc: ApiError) -> bool:
    """A refusal that passes with time: rate limits (not quota) and the upload→create race (gotchas #7)."""
    if not isinstance(exc, ApiStatusError):
        return False
    if exc.status_code == 429:
        return exc.code != "insufficient_quota"
    return exc.status_code == 404


class SubmissionStalled(ApiError):
    """The service kept refusing every submission (429, 404...) for longer than the run waits, or asked for a
    longer wait: the run stops (exit 3); nothing was created twice and the same command resumes it later."""


#: Batch statuses of SPEC ``Batch.status``; another one is logged once and treated as not terminal.
_KNOWN_BATCH_STATUSES: Final = frozenset(str(s) for s in BatchStatus)


#: What a build chunk needs of the ledger: the latest attempt per key, and the keys that already succeeded with
#: the same request.
_History = tuple[dict[str, ItemRow], set[str]]


class _ChunkWriter:
    """Writes a build's rows to shards and the ledger one chunk behind validation.

    ``push(rows)`` starts the lookup of the chunk's history on the ledger thread (``succeeded_with``: which items
    already succeeded with the same request, so a nightly no-change re-run skips them without holding every hash
    of the job in memory; then ``latest_attempts`` of the rows kept) and then settles the chunk before it: drops the
    unchanged rows (counted in ``stats["skipped"]``), numbers the attempts, adds the lines to the shards and
    queues the insert. So the
    ledger thread inserts chunk N while the event loop validates chunk N+2; SQLite releases the GIL while it
    writes. At most :data:`_INSERTS_IN_FLIGHT` inserts are queued (bounded memory); each is still atomic.
    The lookup of chunk N runs before chunk N-1's insert: a build's keys are distinct (validation renames repeats),
    so it never needs to see them. ``finish()`` settles the last chunk and waits for every insert (raising the first
    error); ``drain()`` waits for what is queued, ignoring errors (before a failed build is discarded).
    """

    def __init__(
        self,
        runner: Runner,
        job: str,
        run_id: str,
        builder: ShardBuilder,
        stats: dict[str, int],
        tally: costguard.CostTally | None = None,
    ) -> None:
        self._runner = runner
        self._job = job
        self._run_id = run_id
        self._builder = builder
        self._stats = stats
        self._tally = tally
        self._waiting: tuple[list[dict[str, object]], asyncio.Future[_History]] | None = None
        self._inserts: list[asyncio.Future[int]] = []

    async def push(self, rows: list[dict[str, object]]) -> None:
        """Take one chunk of rows (not empty unless it is the last)."""
        job = self._job
        keys = [str(r["item_key"]) for r in rows]
        pending = [(str(r["item_key"]), str(r["request_hash"])) for r in rows if r["status"] == ItemStatus.PENDING]

        def history(db: Ledger) -> _History:
            unchanged = db.succeeded_with(job, pending) if pending else set()
            # only the rows kept need their attempts numbered: a no-change re-run reads no earlier row whole
            # (measured: 100,000 unchanged rows, the whole-row lookups were 43% of the re-run's CPU)
            kept = [key for key in keys if key not in unchanged] if unchanged else keys
            return (db.latest_attempts(job, kept) if kept else {}), unchanged

        lookup = asyncio.ensure_future(self._runner.db.call(history))
        if self._waiting is not None:
            await self._settle(*self._waiting)
        self._waiting = (rows, lookup)

    async def _settle(self, rows: list[dict[str, object]], lookup: asyncio.Future[_History]) -> None:
        previous, unchanged = await lookup
        if unchanged:
            kept = [r for r in rows if r["status"] != ItemStatus.PENDING or str(r["item_key"]) not in unchanged]
            self._stats["skipped"] += len(rows) - len(kept)
            rows = kept
        # a pending row is pushed as its key, request hash and item; the ledger row is made (and the item priced)
        # only for the rows kept
        pending_row, job, run_id, tally = self._runner._pending_row, self._job, self._run_id, self._tally
        made: list[dict[str, object]] = []
        for row in rows:
            item = row.get("_item")
            if row["status"] == ItemStatus.PENDING and isinstance(item, Item):
                if tally is not None:
                    tally.add(item.model, item.body)
                row = pending_row(job, run_id, item, str(row["request_hash"]))
            made.append(row)
        rows = made
        await self._runner._number_after(self._job, rows, previous, self._builder)
        while len(self._inserts) >= _INSERTS_IN_FLIGHT:
            await self._inserts.pop(0)
        if rows:
            self._inserts.append(asyncio.ensure_future(self._runner.db.insert_items(rows)))

    async def finish(self) -> None:
        """Settle the last chunk and wait for every insert."""
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            await self._settle(*waiting)
        while self._inserts:
            await self._inserts.pop(0)

    async def drain(self) -> None:
        """Wait for every queued ledger call, ignoring their errors (the build is being abandoned)."""
        pending: list[asyncio.Future[Any]] = [*self._inserts]
        if self._waiting is not None:
            pending.append(self._waiting[1])
        self._inserts, self._waiting = [], None
        await asyncio.gather(*pending, return_exceptions=True)


class ValidationFailed(InputError):
    """Items failed validation and ``skip_invalid`` is off: nothing was recorded or submitted.

    ``problems`` lists every problem found (``str()`` of each names file, line and field).
    """

    def __init__(self, problems: list[Any], *, file: str) -> None:
        super().__init__(
            f"{len(problems)} invalid item(s); nothing was submitted (fix them, or pass --skip-invalid to "
            "record them as invalid and submit the rest)",
            file=file,
            problems=problems,
        )
        self.problems: list[Any] = problems


@dataclass
class RunSummary:
    """What a run did: item counts by status, batches, cost (USD), and whether every item succeeded."""

    run_id: str
    job: str
    items: dict[str, int]
    batches: int
    cost_usd: float
    skipped_unchanged: int
    invalid: int
    duplicates: int
    finished: bool
    #: batches the service holds with this run's metadata that the ledger does not know (never collected):
    #: ``{batch_id, shard, status, requests}`` each; ``unknown_cost_usd``: their estimated cost exposure (USD)
    unknown_batches: list[dict[str, object]] = field(default_factory=list)
    unknown_cost_usd: float = 0.0

    @property
    def all_succeeded(self) -> bool:
        """True if every item of the run succeeded (superseded attempts aside)."""
        return self.finished and all(
            status in (ItemStatus.SUCCEEDED, ItemStatus.SUPERSEDED) for status, n in self.items.items() if n
        )


@dataclass(frozen=True)
class Sweep:
    """What one :meth:`Runner.poll_sweep` saw: ``changed`` (a batch's status moved), ``moving`` (requests are being
    answered), ``ready`` (ids of batches that are terminal and not yet reconciled: to collect), ``open`` (the run's
    unfinished batches, ready ones included)."""

    changed: bool
    moving: bool
    ready: list[str]
    open: int


def shard_location(store: ImageStore, name: str) -> str:
    """Where shard ``name``'s file is kept in ``store`` when shards travel through it: the store's location of the
    reserved key ``_batchpipe/shards/<name>`` (an item keyed exactly so would share it; none is)."""
    return store.location_for(f"{SHARD_KEY_PREFIX}{name}", 0, "jsonl")


class Runner:
    """Runs one job against one API. ``client``: an ``OpenAIClient``; ``verifier``: a C2PA verifier or None.

    ``sleep`` and ``clock`` are injectable for tests; so are the stages' seams: ``store`` (an ``ImageStore``,
    default a ``LocalImageStore`` on ``output_dir``), ``poller`` and ``collector_factory`` (default: a
    ``Collector`` over this runner's client, ledger, store and verifier). ``model_policy``: when given, the
    service is asked about every model once (``GET /v1/models/{model}``) before anything is uploaded, and a
    model it refuses stops the run (:class:`~batchpipe.domain.lifecycle.LifecycleError`, exit 2).

    Work is claimed in the ledger, not assumed (``owner``, default :func:`default_owner`; ``lease_s`` seconds):
    the build of a run, each shard while it is submitted or reconciled, and each batch while its files are
    collected. Several workers may run the same job against one shared ledger: a shard or an output file another
    owner holds is left to it. An owner restarted under the same name takes its claims back at once.

    ``publish_shards``: every shard file is also put into the image store (:func:`shard_location`) before the ledger
    records it, and a worker that lacks the file on its disk reads it back from there before uploading it (workers
    on several machines, ``batchpipe worker``).

    ``cost_cap_usd``: each shard's estimate is reserved against it before its upload (:meth:`_reserve_cost`).
    ``on_estimate``: when given, a new run's build sums the cost guard's estimate of the items it records
    (:class:`~batchpipe.runtime.costguard.CostTally`, less the items skipped as unchanged) and calls it with the
    :class:`~batchpipe.runtime.costguard.SpendEstimate` once the build is done.

    The stages are also callable one at a time on a ledger bound with :meth:`bind` (what ``batchpipe worker``'s
    jobs do): :meth:`submit_shard`, :meth:`poll_sweep`, :meth:`finish_batch`, :meth:`follow_up` and
    :meth:`settle`; :meth:`run` drives the same units in one process.

    Raises :class:`ValidationFailed` on invalid input, :class:`IndeterminateSubmissionError` when a submission
    intent cannot be decided, and the client's :class:`ApiError` when the API is unusable after retries (the
    run stays resumable).
    """

    def __init__(
        self,
        ledger: Ledger,
        client: BatchApi,
        *,
        options: RunOptions,
        output_dir: Path,
        verifier: Verifier | None = None,
        api_label: str = "openai",
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Clock = time.time,
        progress: Callable[[str, dict[str, Any]], None] | None = None,
        model_policy: ModelPolicy | None = None,
        store: ImageStore | None = None,
        poller: Poller | None = None,
        collector_factory: Callable[[AsyncLedger], Collector] | None = None,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        publish_shards: bool = False,
        cost_cap_usd: float | None = None,
        on_estimate: Callable[[costguard.SpendEstimate], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.model_policy = model_policy
        self.client = client
        self.options = options
        self.store: ImageStore = store if store is not None else LocalImageStore(output_dir)
        self.output_dir = output_dir
        self.verifier = verifier
        self.api_label = api_label
        self._sleep = sleep
        self._clock = clock
        self._progress = progress or (lambda event, data: None)
        self.shard_dir = options.workdir / "shards"
        self.poller = poller if poller is not None else Poller(client)
        self.owner = owner or default_owner()
        self.lease_s = lease_s
        self.publish_shards = publish_shards
        self._collector_factory = collector_factory
        self._collector: Collector | None = None
        self._round = 0
        self._ambiguous: dict[str, int] = {}  # shard → ambiguous upload/create failures in this process
        self._refused_since: float | None = None  # since when every submission was refused (None: not now)
        self._last_refusal = ""
        self._unknown_seen: set[tuple[str, str]] = set()
        self.cost_cap_usd = cost_cap_usd
        self.on_estimate = on_estimate
        self._committed_usd: float | None = None  # spent + reserved (USD) of this run, as this process counts it

    # ------------------------------------------------------------------------------------------------
    async def run(
        self,
        job: str,
        spec_hash: str,
        items: Callable[[], Iterator[Any]],
        *,
        source_name: str,
        trust: str | None = None,
        prepare: Callable[[BatchApi, AsyncLedger], Awaitable[None]] | None = None,
        spec_path: str | None = None,
    ) -> RunSummary:
        """Run (or resume) ``job``. ``items()`` yields :class:`Item` or problem objects (with ``str()``).

        ``prepare(client, ledger)``, when given, runs before the build of a new run (e.g. uploading local
        reference images so items can name their ``file_id``); it is not run again when the run resumes.
        With a ``model_policy``, the models of every shard not yet submitted are checked (the service asked
        once per model) before the first upload of this invocation.
        """
        self.db = AsyncLedger(self.ledger)
        try:
            return await self._run(
                job, spec_hash, items, source_name=source_name, trust=trust, prepare=prepare, spec_path=spec_path
            )
        finally:
            self.db.close()

    def bind(self, db: AsyncLedger) -> None:
        """Use ``db`` (an :class:`AsyncLedger` over this runner's ledger, shared with other runners of the process)
        for the per-stage units; the caller closes it. :meth:`run` binds its own."""
        self.db = db

    def collector(self) -> Collector:
        """This runner's collector (made on first use: ``collector_factory``, else a :class:`Collector` over the
        client, the bound ledger, the store and the verifier); :meth:`close_collector` ends it."""
        if self._collector is None:
            self._collector = (
                self._collector_factory(self.db)
                if self._collector_factory is not None
                else Collector(
                    self.client,
                    self.db,
                    self.store,
                    self.verifier,
                    workers=self.options.collect_workers,
                    models=self.options.models,
                    sleep=self._sleep,
                )
            )
        return self._collector

    def close_collector(self) -> None:
        """Stop the collector's threads, if one was made (idempotent)."""
        if self._collector is not None:
            self._collector.close()
            self._collector = None

    async def settle(self, run_id: str) -> bool:
        """Mark the run ``finished`` when none of its items is ``pending`` or ``submitted`` any more; True if it
        is finished (now or before)."""
        counts = await self.db.count_items(run_id=run_id)
        finished = not any(counts.get(s) for s in (ItemStatus.PENDING, ItemStatus.SUBMITTED))
        if finished:
            await self.db.finish_run(run_id, "finished")
        return finished

    async def _run(
        self,
        job: str,
        spec_hash: str,
        items: Callable[[], Iterator[Any]],
        *,
        source_name: str,
        trust: str | None,
        prepare: Callable[[BatchApi, AsyncLedger], Awaitable[None]] | None,
        spec_path: str | None,
    ) -> RunSummary:
        run_id, resumed = await self.db.open_run(
            job, spec_hash, self.api_label, output_dir=str(self.output_dir), trust=trust, spec_path=spec_path
        )
        log.info("run", job=job, run_id=run_id, resumed=resumed)
        self._remove_stale_temporaries()
        stats = {"skipped": 0, "invalid": 0, "duplicates": 0}
        if not await self._built(run_id) and await self._claim_build(run_id):
            try:
                if not await self._built(run_id):  # another worker may have built it while we waited
                    await self._discard_unfinished_build(run_id)
                    if prepare is not None:
                        await prepare(self.client, self.db)
                    stats = await self._build(job, run_id, items, source_name=source_name)
            finally:
                await self.db.release("build", run_id, owner=self.owner)
        await self._check_models(
            {s.model for s in await self.db.shards(run_id=run_id) if s.batch_id is None}, source_name
        )
        if self.options.stop_after == "build":
            return await self._summary(job, run_id, stats, finished=False)
        try:
            await self._reconcile_intents(run_id)
            if self.options.stop_after == "submit":
                await self._submit_ready(run_id)
                return await self._summary(job, run_id, stats, finished=False)
            await self._drive(job, run_id)
        finally:
            self.close_collector()
        finished = await self.settle(run_id)
        summary = await self._summary(job, run_id, stats, finished=finished)
        await self._scan_unknown_batches(run_id, summary)
        return summary

    async def _scan_unknown_batches(self, run_id: str, summary: RunSummary) -> None:
        """Find batches the service holds with this run's metadata that the ledger does not know (a create the
        service performed after the run decided it had not), and report them in ``summary`` and the log with
        their estimated cost exposure (their requests × this run's mean recorded cost per item). A list that
        cannot be read is logged, never fatal: the run's own state is already settled."""
        info = await self.db.run_info(run_id)
        started = float(str(info.get("started_at"))) if info and info.get("started_at") is not None else 0.0
        known = {b.batch_id for b in await self.db.batches()}
        unknown: list[dict[str, object]] = []
        try:
            async for batch in self.client.iter_batches(
                limit=100, stop=lambda b: b.created_at is not None and b.created_at < started - 120
            ):
                meta = batch.metadata or {}
                if meta.get(META_RUN) == run_id and batch.id not in known:
                    requests = batch.request_counts.total if batch.request_counts else 0
                    unknown.append(
                        {
                            "batch_id": batch.id,
                            "shard": meta.get(META_SHARD),
                            "status": batch.status,
                            "requests": requests,
                        }
                    )
        except ApiError as exc:
            log.warning("could not list batches to look for unknown ones", error=str(exc))
            return
        if not unknown:
            return
        done = sum(summary.items.get(s, 0) for s in (ItemStatus.SUCCEEDED,))
        per_item = summary.cost_usd / done if done else 0.0
        summary.unknown_batches = unknown
        summary.unknown_cost_usd = round(per_item * sum(int(str(u["requests"])) for u in unknown), 6)
        log.warning(
            "batches with this run's metadata that the ledger does not know",
            run_id=run_id,
            count=len(unknown),
            batch_ids=[u["batch_id"] for u in unknown],
            cost_exposure_usd=summary.unknown_cost_usd,
        )

    async def _built(self, run_id: str) -> bool:
        """True when the run's build is finished (:meth:`Ledger.finish_build` set ``built_at``)."""
        info = await self.db.run_info(run_id)
        return info is not None and info.get("built_at") is not None

    async def _discard_unfinished_build(self, run_id: str) -> None:
        """Undo what a build killed part way left: its item rows (the ledger) and its shard files (the disk)."""
        gone = await self.db.discard_build(run_id)
        ours = shard_files_of(run_id)
        leftovers = (
            [p for p in sorted(self.shard_dir.iterdir()) if ours.fullmatch(p.name)] if self.shard_dir.is_dir() else []
        )
        for path in leftovers:
            path.unlink(missing_ok=True)
        if gone or leftovers:
            log.warning("discarded an unfinished build", run_id=run_id, items=gone, shard_files=len(leftovers))

    async def _claim_build(self, run_id: str) -> bool:
        """Claim the run's build; while another worker holds it, wait (backing off) until it is built or the
        claim is free. True: this worker builds; False: the run was built by another. Raises ``TimeoutError``
        when the other worker neither finishes nor lets go within ``lease_s``."""
        backoff = Backoff(min(0.05, self.options.poll_interval_s), max(self.options.poll_interval_s, 0.05) * 10)
        started = self._clock()
        attempt = 0
        while not await self.db.claim("build", run_id, owner=self.owner, lease_s=self.lease_s):
            if await self._built(run_id):
                return False
            if self._clock() - started > self.lease_s:  # time that passed, not the sleeps asked for
                raise TimeoutError(f"run {run_id} is being built by another worker for over {self.lease_s:g} s")
            if attempt == 0:
                holder = await self.db.claim_holder("build", run_id)
                log.info("waiting for another worker's build", run_id=run_id, holder=holder)
            await self._sleep(backoff.delay_s(attempt))
            attempt += 1
        return True

    async def _claim(self, kind: str, key: str) -> bool:
        """Take (or renew) this worker's claim on ``(kind, key)``; False when another owner holds it."""
        taken = await self.db.claim(kind, key, owner=self.owner, lease_s=self.lease_s)
        if not taken:
            log.info("left to another worker", kind=kind, key=key, holder=await self.db.claim_holder(kind, key))
        return taken

    async def _check_models(self, models: set[str] | frozenset[str], source_name: str) -> None:
        """Ask the service about ``models`` (once per model per run) and stop before any upload if one is
        refused. Raises :class:`~batchpipe.domain.lifecycle.LifecycleError`."""
        if self.model_policy is None or not models:
            return
        await self.model_policy.ask_service(self.client, models)
        self.model_policy.refuse(models, file=source_name)

    def _remove_stale_temporaries(self) -> None:
        """Let a local store delete the temporary files a killed run left (``LocalImageStore.recover``)."""
        if isinstance(self.store, LocalImageStore):
            self.store.recover()

    async def _summary(self, job: str, run_id: str, stats: dict[str, int], *, finished: bool) -> RunSummary:
        return RunSummary(
            run_id=run_id,
            job=job,
            items=await self.db.count_items(run_id=run_id),
            batches=len(await self.db.batches(run_id=run_id)),
            cost_usd=await self.db.cost_usd(run_id=run_id),
            skipped_unchanged=stats.get("skipped", 0),
            invalid=stats.get("invalid", 0),
            duplicates=stats.get("duplicates", 0),
            finished=finished,
        )

    # -- build ---------------------------------------------------------------------------------------
    def _builder(self, prefix: str) -> ShardBuilder:
        kwargs: dict[str, Any] = {}
        if self.options.max_shard_requests:
            kwargs["max_requests"] = self.options.max_shard_requests
        if self.options.max_shard_bytes:
            kwargs["max_bytes"] = self.options.max_shard_bytes
        if self.options.max_shard_input_tokens:
            kwargs["max_input_tokens"] = self.options.max_shard_input_tokens
        return ShardBuilder(self.shard_dir, prefix=prefix, **kwargs)

    async def _build(
        self, job: str, run_id: str, items: Callable[[], Iterator[Any]], *, source_name: str
    ) -> dict[str, int]:
        """Validate every item and write it to a shard and, in chunks of :data:`_ROWS_PER_CHUNK` rows, to the ledger;
        then :meth:`Ledger.finish_build` records the shards, supersedes earlier attempts and marks the run built, in
        one transaction. A :class:`~batchpipe.input.validate.ManifestItems` source is given the ledger's lookup of
        rows already succeeded from the same source (:meth:`_unchanged_lookup`): those come as
        :class:`~batchpipe.input.validate.Unchanged`, unrendered, and count as skipped (and toward ``limit``).
        A build that stops part way (invalid items without ``skip_invalid``, an error, a kill) leaves no built run:
        what it wrote is discarded (now, or by the next run) and it starts over. Raises :class:`ValidationFailed`
        (nothing kept)."""
        builder = self._builder(run_id)
        problems: list[Any] = []
        rows: list[dict[str, object]] = []
        stats = {"skipped": 0, "invalid": 0, "duplicates": 0, "items": 0}
        invalid_rows: dict[str, dict[str, object]] = {}
        count = 0
        tally = costguard.CostTally(self.options.models) if self.on_estimate is not None else None
        writer = _ChunkWriter(self, job, run_id, builder, stats, tally)
        entries = items(unchanged=self._unchanged_lookup(job)) if isinstance(items, ManifestItems) else items()
        try:
            for entry in entries:
                if type(entry) is Unchanged:  # already succeeded from the same row and spec: not even rendered
                    if self.options.limit is not None and count >= self.options.limit:
                        break
                    count += 1
                    stats["skipped"] += 1
                    continue
                if not isinstance(entry, Item):
                    problems.append(entry)
                    key = getattr(entry, "key", None)
                    if self.options.skip_invalid and key:
                        if key in invalid_rows:  # several problems with one item: one row, every message
                            row = invalid_rows[key]
                            row["error_message"] = f"{row['error_message']}; {entry}"[:4000]
                        else:
                            invalid_rows[key] = self._invalid_row(job, run_id, entry)
                            rows.append(invalid_rows[key])
                    continue
                if "_batchpipe" in entry.metadata:  # a renamed duplicate key (make_items warned about it)
                    stats["duplicates"] += 1
                if self.options.limit is not None and count >= self.options.limit:
                    break
                count += 1
                rhash = request_hash(entry.endpoint, entry.body)
                rows.append(
                    {"item_key": entry.key, "request_hash": rhash, "status": ItemStatus.PENDING, "_item": entry}
                )
                if len(rows) >= _ROWS_PER_CHUNK:
                    await writer.push(rows)
                    rows = []
            await writer.push(rows)
            await writer.finish()
            if problems and not self.options.skip_invalid:
                raise ValidationFailed(problems, file=source_name)
            shards = await builder.close()
            await self._publish(shards)
        except BaseException:
            await writer.drain()
            await builder.abort()
            await self._discard_unfinished_build(run_id)  # no shard file and no row of this build survives
            raise
        await self.db.finish_build(run_id, [self._shard_row(run_id, job, shard) for shard in shards])
        stats["invalid"] = len(problems)
        stats["items"] = count
        for problem in problems:
            log.warning("invalid item", problem=str(problem))
        if tally is not None and self.on_estimate is not None:
            self.on_estimate(tally.estimate(skipped=stats["skipped"]))
        self._progress("built", {"run_id": run_id, "items": count, "shards": len(shards), **stats})
        log.info(
            "built",
            run_id=run_id,
            items=count,
            shards=len(shards),
            **{k: v for k, v in stats.items() if k != "items"},
        )
        return stats

    def _unchanged_lookup(self, job: str) -> UnchangedLookup:
        """The build's :data:`~batchpipe.input.validate.UnchangedLookup`: each chunk's ``(key, source_hash)`` pairs
        are looked up on the ledger thread (``succeeded_with(..., by="source_hash")``, queued in order with the
        chunk inserts), and the answer is waited for when the chunk before it has been read."""

        def lookup(pairs: list[tuple[str, str]]) -> Callable[[], set[str]]:
            return self.db.submit(lambda db: db.succeeded_with(job, pairs, by="source_hash")).result

        return lookup

    def _pending_row(self, job: str, run_id: str, item: Item, rhash: str) -> dict[str, object]:
        return {
            "job": job,
            "item_key": item.key,
            "attempt": 0,  # not numbered yet: _flush_rows numbers it after the ledger's history
            "run_id": run_id,
            "endpoint": item.endpoint,
            "model": item.model,
            "request_hash": rhash,
            "body_json": item.body_bytes().decode(),
            "metadata_json": orjson.dumps(item.metadata).decode(),
            "source": item.source,
            "product_key": item.product_key,
            "variant": item.variant,
            "inputs_json": _inputs_json(item.inputs),
            "input_tokens_est": estimate_input_tokens(item.body),
            "status": ItemStatus.PENDING,
            "source_hash": item.source_hash,
            "_item": item,
        }

    def _invalid_row(self, job: str, run_id: str, problem: Any) -> dict[str, object]:
        key = str(problem.key)
        return {
            "job": job,
            "item_key": key,
            "attempt": 0,
            "run_id": run_id,
            "endpoint": "",
            "model": "",
            "request_hash": "",
            "body_json": "{}",
            "metadata_json": "{}",
            "source": f"{getattr(problem, 'file', '')}:{getattr(problem, 'line', '')}",
            "status": ItemStatus.INVALID,
            "error_code": "invalid_item",
            "error_message": str(problem)[:4000],
            "retryable": 0,
        }

    async def _number_rows(self, job: str, rows: list[dict[str, object]], builder: ShardBuilder) -> list[str]:
        """Number attempts after the ledger's history and add the items' lines to shards; returns the custom_ids
        of the earlier attempts the rows replace that are still to be superseded."""
        if not rows:
            return []
        previous = await self.db.latest_attempts(job, [str(r["item_key"]) for r in rows])
        return await self._number_after(job, rows, previous, builder)

    async def _number_after(
        self, job: str, rows: list[dict[str, object]], previous: Mapping[str, ItemRow], builder: ShardBuilder
    ) -> list[str]:
        """:meth:`_number_rows` with the ledger's latest attempts of the rows' keys already looked up."""
        supersede: list[str] = []
        for row in rows:
            prior = previous.get(str(row["item_key"]))
            attempt = (prior.attempt + 1) if prior else 1
            if prior is not None:
                row["previous_custom_id"] = prior.custom_id
                if prior.status not in (ItemStatus.SUBMITTED, ItemStatus.SUPERSEDED):
                    supersede.append(prior.custom_id)
            row["attempt"] = attempt
            row["custom_id"] = make_custom_id(job, str(row["item_key"]), attempt)
            item = row.pop("_item", None)  # invalid rows have none: they go to the ledger only
            if isinstance(item, Item):
                row["shard"] = await builder.add(str(row["custom_id"]), item)
        return supersede

    async def _publish(self, shards: list[ShardInfo]) -> None:
        """With ``publish_shards``, put each finished shard file into the image store (:func:`shard_location`)
        before the ledger records it, so a worker on another machine can upload it."""
        if not self.publish_shards:
            return
        for shard in shards:
            location = shard_location(self.store, shard.name)
            data = await asyncio.to_thread(shard.path.read_bytes)
            await asyncio.to_thread(self.store.put, location, data)
        if shards:
            await asyncio.to_thread(self.store.sync)
            log.info("shard files published", shards=len(shards))

    async def _shard_file(self, shard: ShardRow) -> Path:
        """The shard's file on this machine: the one the build wrote when it is here (of the recorded size), else,
        with ``publish_shards``, a copy read back from the image store into this worker's shard folder (temporary
        name, then renamed) after checking its sha256 and size against the ledger. Raises ``FileNotFoundError``
        when neither has it and ``LedgerError`` when the stored copy does not match the ledger."""
        path = Path(shard.path)
        local = self.shard_dir / path.name

        def present() -> Path | None:
            for candidate in (path, local):
                if candidate.is_file() and candidate.stat().st_size == shard.bytes:
                    return candidate
            return None

        found = await asyncio.to_thread(present)
        if found is not None:
            return found
        if not self.publish_shards:
            return path  # the upload reports the missing file, as before
        data = await asyncio.to_thread(self.store.read, shard_location(self.store, shard.name))
        if len(data) != shard.bytes or hashlib.sha256(data).hexdigest() != shard.sha256:
            raise LedgerError(
                f"the stored copy of shard {shard.name} does not match the ledger (size {len(data)} bytes, ledger "
                f"{shard.bytes})"
            )

        def write() -> None:
            local.parent.mkdir(parents=True, exist_ok=True)
            temporary = local.with_name(f"{local.name}.{os.getpid()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, local)

        await asyncio.to_thread(write)
        log.info("shard file read from the store", shard=shard.name, bytes=len(data))
        return local

    @staticmethod
    def _shard_row(run_id: str, job: str, shard: ShardInfo) -> dict[str, object]:
        """The ledger row of a finished shard file."""
        return {
            "name": shard.name,
            "run_id": run_id,
            "job": job,
            "endpoint": shard.endpoint,
            "model": shard.model,
            "path": str(shard.path),
            "requests": shard.requests,
            "bytes": shard.bytes,
            "sha256": shard.sha256,
            "input_tokens": shard.input_tokens,
        }

    # -- submit (intent first) -----------------------------------------------------------------------
    async def _reconcile_intents(self, run_id: str) -> None:
        """Settle shards a previous process left mid-submission by asking the service what it has."""
        for listed in await self.db.shards(run_id=run_id, statuses=_INTENT_STATUSES):
            if not await self._claim("shard", listed.name):
                continue
            try:
                shard = await self.db.shard(listed.name)  # as it is now that it is ours
                if shard is not None:
                    await self._reconcile_intent(shard)
            finally:
                await self.db.release("shard", listed.name, owner=self.owner)

    async def _reconcile_intent(self, shard: ShardRow) -> None:
        """Settle one claimed shard left mid-submission (``uploading``, ``creating``, ``indeterminate``); any
        other status is left as it is."""
        if shard.status not in _INTENT_STATUSES:
            return
        if shard.status == "uploading" or (shard.status == "indeterminate" and not shard.input_file_id):
            await self._reconcile_upload(shard)
        else:
            await self._reconcile_create(shard)

    async def submit_shard(self, name: str) -> bool:
        """Stage unit: claim shard ``name``, settle an intent a killed worker left on it (as a restart does),
        then upload and create its batch if it is ``built`` or ``uploaded``. True if this call gave the shard its
        batch (created, or adopted from the service's list); False when another worker holds it, it was deferred
        (429, upload race) or it already had its batch. Raises as :meth:`run` does (``IndeterminateSubmissionError``,
        :class:`SubmissionStalled`, the client's ``ApiError``)."""
        if not await self._claim("shard", name):
            return False
        try:
            shard = await self.db.shard(name)  # as it is now that it is ours
            if shard is None or shard.batch_id is not None:
                return False  # unknown, or another worker already submitted it
            await self._reconcile_intent(shard)
            shard = await self.db.shard(name)
            if shard is None or shard.status not in ("built", "uploaded"):
                return shard is not None and shard.batch_id is not None  # adopted by the reconciliation
            return await self._submit(shard)
        finally:
            await self.db.release("shard", name, owner=self.owner)

    async def _reconcile_upload(self, shard: ShardRow) -> None:
        """Settle an upload whose outcome is unknown: adopt the service's file of the same name and size, else
        return the shard to ``built`` (a second upload costs nothing but storage, and is cleaned up)."""
        filename = Path(shard.path).name
        since = (shard.intent_at or 0) - 120
        found = None
        try:
            async for listed in iter_files(self.client, purpose="batch", limit=10_000):
                if listed.filename == filename and listed.bytes == shard.bytes:
                    found = listed
                    break
                if listed.created_at is not None and listed.created_at < since:
                    break
        except ApiError as exc:
            await self._indeterminate(shard, f"cannot list files to reconcile the upload: {exc}")
        if found is not None:
            await self.db.record_file(found.as_record(), role="input", sha256=shard.sha256)
            await self.db.transition_shard(
                shard.name, "uploaded", fields={"input_file_id": found.id}, note="adopted existing upload"
            )
            log.info("adopted upload", shard=shard.name, file_id=found.id)
        else:
            await self.db.transition_shard(shard.name, "built", note="upload never reached the service")

    async def _find_batch(self, shard: ShardRow) -> tuple[Batch | None, int | None]:
        """One walk of ``GET /batches`` (newest first, back to 120 s before the attempt) for the batch carrying
        the shard's metadata: ``(batch or None, newest created_at seen or None)``."""
        since = (shard.intent_at or 0) - 120
        newest: int | None = None
        async for batch in self.client.iter_batches(
            limit=100, stop=lambda b: b.created_at is not None and b.created_at < since
        ):
            if batch.created_at is not None:
                newest = batch.created_at if newest is None else max(newest, batch.created_at)
            meta = batch.metadata or {}
            if meta.get(META_SHARD) == shard.name and meta.get(META_RUN) == shard.run_id:
                return batch, newest
        return None, newest

    async def _reconcile_create(self, shard: ShardRow) -> None:
        """Settle a create whose outcome is unknown (gotchas #9): adopt the batch if the service lists it, and
        decide it was never made only on proof, because ``GET /batches`` may lag behind a create.

        Absence from one list read proves nothing. It becomes proof once the list has shown itself current past
        the attempt (it lists a batch created :data:`CLOCK_SKEW_S` or more after ``intent_at``), or once
        ``list_lag_s`` have passed since the attempt; until then the list is read again, backing off (each read
        logged). Only then does the shard go back to ``uploaded`` to be created again. Raises
        :class:`IndeterminateSubmissionError` (exit 3, resumable) when the list cannot be read.
        """
        attempt_at = shard.intent_at or self._clock()
        backoff = Backoff(0.5, 8.0)
        reads = 0
        while True:
            try:
                found, newest = await self._find_batch(shard)
            except ApiError as exc:
                await self._indeterminate(shard, f"cannot list batches to reconcile the create: {exc}")
                return
            reads += 1
            if found is not None:
                if shard.status == "indeterminate":
                    await self.db.transition_shard(
                        shard.name, "uploaded", fields={"input_file_id": shard.input_file_id}
                    )
                    await self.db.transition_shard(shard.name, "creating")
                await self._adopt_batch(shard, found, note="adopted existing batch")
                log.info("adopted batch", shard=shard.name, batch_id=found.id, list_reads=reads)
                return
            waited = self._clock() - attempt_at
            current = newest is not None and newest >= attempt_at + CLOCK_SKEW_S
            if current or waited >= self.options.list_lag_s:
                break
            log.info(
                "the batch list does not show this shard's batch yet; reading it again",
                shard=shard.name,
                waited_s=round(waited, 1),
                decide_after_s=self.options.list_lag_s,
            )
            await self._sleep(min(backoff.delay_s(reads - 1), max(self.options.list_lag_s - waited, 0.05)))
        await self.db.transition_shard(
            shard.name, "uploaded", note=f"create never reached the service (not listed after {reads} reads)"
        )

    async def _indeterminate(self, shard: ShardRow, why: str) -> None:
        if shard.status != "indeterminate":
            await self.db.transition_shard(shard.name, "indeterminate", note=why)
        raise IndeterminateSubmissionError(
            why,
            shard=shard.name,
            resolve_command=f"batchpipe run <same job> --workdir {self.options.workdir}",
        )

    async def _inflight_tokens(self, run_id: str) -> dict[str, int]:
        tokens: dict[str, int] = {}
        live = {b.batch_id for b in await self.db.batches(run_id=run_id) if not batch_status_is_terminal(b.status)}
        for shard in await self.db.shards(run_id=run_id, statuses=["created"]):
            if shard.batch_id in live:
                tokens[shard.model] = tokens.get(shard.model, 0) + shard.input_tokens
        return tokens

    async def ready_shards(self, run_id: str) -> list[str]:
        """Stage unit: the shards of ``run_id`` to submit now, in order: those ``built`` or ``uploaded`` that fit
        each model's enqueued-token budget (assuming the earlier ones go out), and those left mid-submission
        (``uploading``, ``creating``, ``indeterminate``) for :meth:`submit_shard` to settle."""
        inflight = await self._inflight_tokens(run_id)
        names = [s.name for s in await self.db.shards(run_id=run_id, statuses=_INTENT_STATUSES)]
        for shard in await self.db.shards(run_id=run_id, statuses=["built", "uploaded"]):
            budget = self.options.enqueued_token_budget.get(shard.model)
            used = inflight.get(shard.model, 0)
            if budget is not None and used and used + shard.input_tokens > budget:
                continue  # next wave
            inflight[shard.model] = used + shard.input_tokens
            names.append(shard.name)
        return names

    async def _submit_ready(self, run_id: str) -> int:
        """Submit built shards, in order, while each model's enqueued-token budget allows; returns how many."""
        inflight = await self._inflight_tokens(run_id)
        submitted = 0
        for shard in await self.db.shards(run_id=run_id, statuses=["built", "uploaded"]):
            budget = self.options.enqueued_token_budget.get(shard.model)
            used = inflight.get(shard.model, 0)
            if budget is not None and used and used + shard.input_tokens > budget:
                continue  # next wave
            if not await self._claim("shard", shard.name):
                continue
            try:
                current = await self.db.shard(shard.name)  # as it is now that it is ours
                if current is None or current.status not in ("built", "uploaded"):
                    continue
                if await self._submit(current):
                    inflight[shard.model] = used + shard.input_tokens
                    submitted += 1
            finally:
                await self.db.release("shard", shard.name, owner=self.owner)
        return submitted

    async def _reserve_cost(self, shard: ShardRow) -> None:
        """The cost cap, per shard: before a shard's upload, its estimate (the cost guard's, over its pending items)
        is reserved against ``cost_cap_usd``, on top of what the run has recorded and the estimate of its items in
        flight when first asked (counted once, in this process). Raises
        :class:`~batchpipe.runtime.costguard.CostCapError` (exit 2) when the reservation would go over: the shard is
        not uploaded; batches already in flight are never cancelled for it and are collected when the run is
        resumed. Follow-up attempts go through here too, so they cannot spend past the cap either."""
        cap = self.cost_cap_usd
        if cap is None:
            return
        models = self.options.models
        rows = await self.db.items(shard=shard.name, statuses=[ItemStatus.PENDING])
        estimate = costguard.estimate_pending(rows, models=models).cost_usd
        if self._committed_usd is None:
            spent = await self.db.cost_usd(run_id=shard.run_id)
            inflight = await self.db.items(run_id=shard.run_id, statuses=[ItemStatus.SUBMITTED])
            self._committed_usd = spent + costguard.estimate_pending(inflight, models=models).cost_usd
        if self._committed_usd + estimate > cap + 1e-9:
            raise costguard.CostCapError(
                f"the cost cap ${cap:.2f} stops shard {shard.name} ({len(rows)} request(s), about ${estimate:.4f}): "
                f"this run has ${self._committed_usd:.4f} spent or in flight; nothing more was submitted and batches "
                "in flight were not cancelled. Raise --max-cost (or [run] max_cost_usd) and run the same command "
                "again to go on",
                file="--max-cost",
                field="run.max_cost_usd",
            )
        self._committed_usd += estimate

    async def _submit(self, shard: ShardRow) -> bool:
        """Upload (if needed) and create the shard's batch, intent first. False: deferred to a later pass.

        A definite refusal that can pass (429, the upload→create race's 404, gotchas #7) defers the shard.
        An ambiguous failure (5xx, timeout, cut connection: the request may have taken effect) is settled at once
        by the same reconciliation a restart does, so nothing is created twice (gotchas #9).
        """
        if shard.status == "built":
            await self._reserve_cost(shard)
            path = await self._shard_file(shard)
            await self.db.transition_shard(shard.name, "uploading", fields={"intent_at": self._clock()})
            try:
                uploaded = await self.client.upload_file(path, purpose="batch", filename=Path(shard.path).name)
            except ApiError as exc:
                await self._after_failure(shard.name, exc, what="upload", back_to="built")
                return False
            name, sha = shard.name, shard.sha256

            def record_upload(db: Ledger) -> ShardRow | None:
                db.record_file(uploaded.as_record(), role="input", sha256=sha)
                db.transition_shard(name, "uploaded", fields={"input_file_id": uploaded.id})
                return db.shard(name)

            stored = await self.db.atomic(record_upload)
            shard = stored or shard
        await self.db.transition_shard(shard.name, "creating", fields={"intent_at": self._clock()})
        metadata = {META_RUN: shard.run_id, META_SHARD: shard.name, META_SHA: shard.sha256[:64]}
        try:
            batch = await self.client.create_batch(
                input_file_id=str(shard.input_file_id), endpoint=shard.endpoint, metadata=metadata
            )
        except ApiError as exc:
            await self._after_failure(shard.name, exc, what="create", back_to="uploaded")
            return False
        await self._adopt_batch(await self.db.shard(shard.name) or shard, batch, note="created")
        log.info("batch created", shard=shard.name, batch_id=batch.id, requests=shard.requests)
        self._refused_since = None
        return True

    async def _after_failure(self, name: str, exc: ApiError, *, what: str, back_to: str) -> None:
        """Settle a failed upload or create.

        A definite refusal returns the shard to ``back_to``: deferred when it passes with time (429, the
        upload→create race's 404) unless the service asks for a wait beyond ``max_stall_s``, else raised (a 404
        on upload says the base URL is wrong). An ambiguous failure is reconciled against the service now; the
        ``max_ambiguous_submits``-th ambiguous failure of one shard in this process stops the run instead (exit 3)
        with the intent left standing, for the next run to settle after the service has caught up.
        """
        if _definitely_not_done(exc):
            await self.db.transition_shard(name, back_to, note=f"{what} refused: {exc}")
            retry_after = exc.retry_after_s if isinstance(exc, ApiStatusError) else None
            if what == "upload" and isinstance(exc, NotFoundError):
                raise ApiError(
                    f"{exc} -- the service has no Files API at this address: is the base URL right? The OpenAI "
                    "API's base URL ends in /v1 (https://api.openai.com/v1); pass --api with the /v1 part",
                    method=exc.method,
                    url=exc.url,
                ) from None
            if _worth_waiting(exc):
                if retry_after is not None and retry_after > self.options.max_stall_s:
                    raise SubmissionStalled(
                        f"{what} of shard {name}: the service refused ({exc}) and asks to wait "
                        f"{retry_after:g} s, longer than this run waits ({self.options.max_stall_s:g} s)"
                    ) from None
                self._last_refusal = f"{what} of shard {name}: {exc}"
                return
            raise exc
        count = self._ambiguous[name] = self._ambiguous.get(name, 0) + 1
        if count >= self.options.max_ambiguous_submits:
            shard = await self.db.shard(name)
            assert shard is not None
            await self._indeterminate(
                shard,
                f"{what} of shard {name} failed {count} times without a clear answer (last: {exc}); the service "
                "may or may not have acted on it. Nothing is created again until a later run has read the "
                "service's lists",
            )
        log.warning(f"{what} outcome unknown, reconciling", shard=name, error=str(exc), attempt=count)
        await self._sleep(1.0)
        shard = await self.db.shard(name)
        assert shard is not None
        await (self._reconcile_upload(shard) if what == "upload" else self._reconcile_create(shard))

    async def _adopt_batch(self, shard: ShardRow, batch: Batch, *, note: str) -> None:
        """Record the batch and move the shard to ``created`` and its pending items to ``submitted``, at once."""
        record = batch.as_record()

        def adopt(db: Ledger) -> None:
            db.record_batch(record, shard=shard.name, run_id=shard.run_id, model=shard.model)
            db.update_batch(record)
            ids = [row.custom_id for row in db.items(shard=shard.name, statuses=[ItemStatus.PENDING])]
            db.transition_items(ids, ItemStatus.SUBMITTED, fields={"batch_id": batch.id})
            db.transition_shard(shard.name, "created", fields={"batch_id": batch.id}, note=note)

        await self.db.atomic(adopt)

    # -- drive: poll, collect, reconcile, follow up -----------------------------------------------------
    async def _drive(self, job: str, run_id: str) -> None:
        """Submit, poll and collect until the run has nothing in flight.

        Collections run as tasks beside the loop (at most ``collect_concurrency`` at once): while one output file
        is read, the loop goes on polling, starts the collection of the next batch that ends and submits shards
        that an ended batch made room for (an enqueued-token budget). Measured (2,000 items in 2 batches on the
        emulator): the second batch's end was seen 2.8 s late, after the first batch's collection, when the loop
        waited for it. The first collection that raises stops the run: the others are cancelled (what they
        collected stays collected) and the error goes up.
        """
        # idle rounds back off from the base interval by 1.5x up to the maximum; any progress resets them
        backoff = Backoff(self.options.poll_interval_s, self.options.max_poll_interval_s, factor=1.5)
        idle = 0
        sem = asyncio.Semaphore(self.options.collect_concurrency)
        collecting: dict[str, asyncio.Future[bool]] = {}  # batch id → its collection, while it runs

        async def collect(batch_id: str) -> bool:
            async with sem:
                done = await self.finish_batch(batch_id)
            if not done:  # not collectable yet (its output file is still to appear): look again a poll later
                await self._sleep(self.options.poll_interval_s)
            return done

        await self._cleanup_leftovers(run_id)
        try:
            while True:
                collected = False
                for batch_id in [b for b, task in collecting.items() if task.done()]:
                    collected = collecting.pop(batch_id).result() or collected  # raises the collection's error
                if collected:
                    await self._report_progress(run_id)
                submitted = await self._submit_ready(run_id)
                if submitted:
                    await self._report_progress(run_id)
                open_batches = await self.db.batches(run_id=run_id, unfinished=True)
                if not open_batches and not collecting:
                    if await self.follow_up(job, run_id):
                        continue
                    if await self.db.shards(run_id=run_id, statuses=["built", "uploaded"]):
                        if not submitted:  # every shard was deferred (429, upload race): wait before trying again
                            self._check_stall()
                            log.info("every shard is deferred; trying again", refused=self._last_refusal)
                            await self._sleep(backoff.delay_s(idle))
                            idle += 1
                        continue
                    return
                sweep = await self.poll_sweep(run_id, open_batches)
                for batch_id in sweep.ready:
                    if batch_id not in collecting:
                        collecting[batch_id] = asyncio.ensure_future(collect(batch_id))
                progressed = sweep.changed or collected
                if progressed and not sweep.ready:
                    idle = 0
                    continue  # something moved: look again at once
                if collecting and len(collecting) >= sweep.open:
                    # every open batch is being collected: nothing to poll until one of them ends
                    await asyncio.wait(list(collecting.values()), return_when=asyncio.FIRST_COMPLETED)
                    continue
                busy = progressed or sweep.moving  # requests being answered keep the base interval
                if busy:
                    idle = 0
                await self._sleep(backoff.delay_s(idle))
                if not busy:
                    idle += 1
        finally:
            if collecting:  # the run stops (an error, a cancel): end the collections while the ledger is open
                for task in collecting.values():
                    task.cancel()
                await asyncio.gather(*collecting.values(), return_exceptions=True)

    async def poll_sweep(self, run_id: str, open_batches: list[BatchRow] | None = None) -> Sweep:
        """Stage unit: one poll of ``run_id``'s unfinished batches (``open_batches`` if the caller just read them),
        every answer recorded in the ledger. Returns a :class:`Sweep`: whether a status changed, whether requests
        are being answered, and the batches now ready to collect (terminal, not yet reconciled). Raises the
        client's ``ApiError`` when the service cannot be polled after retries."""
        if open_batches is None:
            open_batches = await self.db.batches(run_id=run_id, unfinished=True)
        tracked = {
            b.batch_id: float(b.created_at)
            for b in open_batches
            if not batch_status_is_terminal(b.status)
            # gotchas #3: completed while output_file_id is still null; poll again until it appears
            or (b.status == "completed" and not b.output_file_id and not b.error_file_id)
        }
        changed = False
        moving = False  # requests are being answered: keep polling at the base interval
        if tracked:
            before = {b.batch_id: b.request_counts_json for b in open_batches}
            result = await self.poller.poll(tracked)
            for batch_id, batch in result.batches.items():
                record = batch.as_record()
                counts = record["request_counts"]
                if counts is not None and orjson.dumps(counts).decode() != before.get(batch_id):
                    moving = True
                self._note_unknown_status(batch)
                if await self.db.update_batch(record) is not None:
                    changed = True
                    log.info("batch status", batch_id=batch_id, status=batch.status, counts=counts)
            await self._report_progress(run_id)
        remaining = await self.db.batches(run_id=run_id, unfinished=True)
        ready = [str(b.batch_id) for b in remaining if batch_status_is_terminal(b.status)]
        return Sweep(changed=changed, moving=moving, ready=ready, open=len(remaining))

    def _note_unknown_status(self, batch: Batch) -> None:
        """Log, once per batch and status, a status this code does not know (kept, and not terminal)."""
        if batch.status not in _KNOWN_BATCH_STATUSES and (batch.id, batch.status) not in self._unknown_seen:
            self._unknown_seen.add((batch.id, batch.status))
            log.warning(
                "unknown batch status; treated as not finished, polling on", batch_id=batch.id, status=batch.status
            )

    def _check_stall(self) -> None:
        """Raise :class:`SubmissionStalled` when every shard has been refused for ``max_stall_s`` with nothing
        in flight (the service keeps answering 429 or 404 to creates)."""
        now = self._clock()
        if self._refused_since is None:
            self._refused_since = now
        elif now - self._refused_since > self.options.max_stall_s:
            raise SubmissionStalled(
                f"no shard could be submitted for {now - self._refused_since:.0f} s; the service keeps refusing "
                f"({self._last_refusal})"
            )

    async def _report_progress(self, run_id: str) -> None:
        """Tell the progress callback where the run stands (event ``poll``): ``run_id``, ``batch_states`` (batches by
        status), ``rendered`` (requests the service answered), ``items_done`` / ``items_total`` (superseded attempts
        aside), ``items`` (counts by status) and ``cost_usd`` (recorded so far)."""
        states: dict[str, int] = {}
        rendered = 0
        for batch in await self.db.batches(run_id=run_id):
            states[batch.status] = states.get(batch.status, 0) + 1
            counts = orjson.loads(batch.request_counts_json or "null") or {}
            rendered += int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        items = await self.db.count_items(run_id=run_id)
        live = items.get(ItemStatus.PENDING, 0) + items.get(ItemStatus.SUBMITTED, 0)
        total = sum(n for status, n in items.items() if status != ItemStatus.SUPERSEDED)
        self._progress(
            "poll",
            {
                "run_id": run_id,
                "batch_states": states,
                "rendered": rendered,
                "items_done": total - live,
                "items_total": total,
                "items": dict(items),
                "cost_usd": await self.db.cost_usd(run_id=run_id),
            },
        )

    async def finish_batch(self, batch_id: str) -> bool:
        """Stage unit: collect a terminal batch's output and error files, reconcile its rows, clean up; True if it
        was reconciled. The batch is claimed (``output``) while this worker does it; False when another worker
        holds it, it is not terminal, or it was reconciled already. Raises the collector's errors (a download
        that cannot be read after retries: ``DownloadError``); what was collected stays collected."""
        if not await self._claim("output", batch_id):
            return False
        try:
            current = await self.db.batch(batch_id)  # as it is now that it is ours
            if current is None or current.reconciled or not batch_status_is_terminal(current.status):
                return False  # another worker finished it meanwhile, or it is not finished
            return await self._finish_claimed(current, self.collector())
        finally:
            await self.db.release("output", batch_id, owner=self.owner)

    async def _finish_claimed(self, batch: BatchRow, collector: Collector) -> bool:
        batch_id = batch.batch_id
        status = batch.status
        counts = orjson.loads(batch.request_counts_json or "null") or {}
        output_id, error_id = batch.output_file_id, batch.error_file_id
        if status == "completed" and output_id is None and (counts.get("completed") or 0) > 0:
            ended = batch.ended_at or batch.updated_at
            if self._clock() - float(ended) < self.options.output_grace_s:
                return False  # gotchas #3: completed while output_file_id is still null; wait for it
            log.warning("output file never appeared", batch_id=batch_id)
        targets = await collector.targets_for_batch(batch_id)
        if output_id and not batch.output_done:
            await self.db.record_file({"id": output_id, "purpose": "batch_output"}, role="output")
            await collector.collect_file(batch_id, output_id, "output", targets)
        if error_id and not batch.error_done:
            await self.db.record_file({"id": error_id, "purpose": "batch_output"}, role="error")
            await collector.collect_file(batch_id, error_id, "error", targets)
        await self._reconcile_batch(batch_id, status)
        await self._cleanup(batch)
        return True

    async def _reconcile_batch(self, batch_id: str, status: str) -> None:
        """Every submitted custom_id ends in exactly one state; leftovers become missing (or the batch's fate)."""
        await self.db.atomic(lambda db: self._reconcile_batch_in(db, batch_id, status))

    @staticmethod
    def _reconcile_batch_in(db: Ledger, batch_id: str, status: str) -> None:
        """:meth:`_reconcile_batch` inside its transaction."""
        left = [row.custom_id for row in db.items(batch_id=batch_id, statuses=[ItemStatus.SUBMITTED])]
        stored = db.batch(batch_id)
        if left and status == "failed":
            first = ((stored.errors if stored is not None else []) or [{}])[0]
            code = str(first.get("code") or "batch_failed")
            db.transition_items(
                left,
                ItemStatus.FAILED,
                fields={
                    "error_code": code,
                    "error_message": str(first.get("message") or "the batch failed validation")[:2000],
                    "retryable": 1 if code in RETRYABLE_ERROR_CODES else 0,
                },
            )
        elif left:
            fate = {"expired": ItemStatus.EXPIRED, "cancelled": ItemStatus.CANCELLED}.get(status, ItemStatus.MISSING)
            code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status, "missing")
            db.transition_items(
                left,
                fate,
                fields={
                    "error_code": code,
                    "error_message": "in neither the output file nor the error file"
                    if fate == ItemStatus.MISSING
                    else f"batch {status}",
                    "retryable": 1,
                },
            )
        if left:
            log.warning("reconciled leftovers", batch_id=batch_id, rows=len(left), batch_status=status)
        db.set_batch_progress(batch_id, reconciled=1)
        shard = db.shard(stored.shard) if stored is not None else None
        if shard is not None and shard.status == "created":
            db.transition_shard(shard.name, "done")

    def _cleanup_ids(self, batch: BatchRow) -> list[str]:
        ids: list[str | None] = []
        if self.options.cleanup_inputs:
            ids.append(batch.input_file_id)
        if self.options.cleanup_outputs:
            ids += [batch.output_file_id, batch.error_file_id]
        return [file_id for file_id in ids if file_id]

    async def _cleanup(self, batch: BatchRow) -> None:
        """Delete the batch's files from the Files API (gotchas #6); a 404 means already gone. A failure is
        left for :meth:`_cleanup_leftovers` on a later pass or run."""
        ids = self._cleanup_ids(batch)
        deleted = {f["file_id"] for f in await self.db.files(deleted=True, file_ids=ids)}
        for file_id in ids:
            if file_id in deleted:
                continue
            try:
                await self.client.delete_file(file_id)
            except NotFoundError:
                pass
            except ApiError as exc:
                log.warning("file not deleted yet", file_id=file_id, error=str(exc))
                continue
            await self.db.mark_file_deleted(file_id)

    async def cleanup_leftovers(self, run_id: str) -> None:
        """Stage unit: delete the service files of ``run_id``'s reconciled batches that a killed worker left
        (a failure is logged and left for a later pass)."""
        await self._cleanup_leftovers(run_id)

    async def _cleanup_leftovers(self, run_id: str) -> None:
        """Clean up reconciled batches whose files a killed process never deleted."""
        live = {f["file_id"] for f in await self.db.files(deleted=False)}
        for batch in await self.db.batches(run_id=run_id):
            if batch.reconciled and live.intersection(self._cleanup_ids(batch)):
                await self._cleanup(batch)

    async def follow_up(self, job: str, run_id: str) -> list[str]:
        """Stage unit: new attempts for retryable failures of this run (up to ``max_attempts``), in new shards
        recorded with them in one transaction; returns the new shards' names (empty: nothing to retry, or another
        worker holds the run's ``follow-up`` claim: two workers never number the same attempts)."""
        if not await self._claim("follow-up", run_id):
            return []
        try:
            return await self._follow_up(job, run_id)
        finally:
            await self.db.release("follow-up", run_id, owner=self.owner)

    async def _follow_up(self, job: str, run_id: str) -> list[str]:
        """:meth:`follow_up` under its claim."""
        retry = [
            row
            for row in await self.db.items(
                run_id=run_id,
                statuses=[ItemStatus.FAILED, ItemStatus.EXPIRED, ItemStatus.CANCELLED, ItemStatus.MISSING],
            )
            if (row.retryable or row.error_code in self.options.retry_error_codes)
            and row.attempt < self.options.max_attempts
        ]
        latest = await self.db.latest_attempts(job, [r.item_key for r in retry])
        retry = [r for r in retry if latest[r.item_key].custom_id == r.custom_id]
        if not retry:
            return []
        self._round += 1
        builder = self._builder(f"{run_id}-retry{int(self._clock())}-{self._round}")
        rows: list[dict[str, object]] = []
        supersede: list[str] = []
        try:
            for start in range(0, len(retry), _ROWS_PER_CHUNK):
                chunk = [
                    self._pending_row(job, run_id, r.as_item(), r.request_hash)
                    for r in retry[start : start + _ROWS_PER_CHUNK]
                ]
                supersede += await self._number_rows(job, chunk, builder)
                rows += chunk
            infos = await builder.close()
            await self._publish(infos)
            shards = [self._shard_row(run_id, job, shard) for shard in infos]
        except BaseException:
            await builder.abort()
            raise

        def commit(db: Ledger) -> None:  # the new attempts and their shards, all at once
            if supersede:
                db.transition_items(supersede, ItemStatus.SUPERSEDED, strict=False)
            db.insert_items(rows)
            for shard in shards:
                db.insert_shard(shard)

        await self.db.atomic(commit)
        log.info("follow-up attempts", run_id=run_id, items=len(retry))
        return [str(shard["name"]) for shard in shards]
