"""``batchpipe worker``: stage jobs on procrastinate, so identical workers on any machine share the open runs.

A run is planned once (``batchpipe run JOB --ledger postgresql://...``: validate, items into the ledger, shards
built and put into the image store); every worker then joins every open run (:meth:`Ledger.open_runs`) and
takes whatever stage work is ready. The jobs are coarse, never one per image (procrastinate's queue costs about
9 ms a job here; ``shared/reference/scale-out-notes.md`` §1.2):

============================  ======================================  ==========================================
task                          procrastinate ``lock`` (one at a time)   ``queueing_lock`` (one waiting)
============================  ======================================  ==========================================
``batchpipe.submit_shard``    ``shard:<shard>``                        ``submit:<shard>``
``batchpipe.poll_sweep``      ``poll:<run_id>``                        ``poll:<run_id>``
``batchpipe.collect_batch``   ``batch:<batch_id>``                     ``collect:<batch_id>``
============================  ======================================  ==========================================

* ``submit_shard`` runs :meth:`Runner.submit_shard` (claim, settle a killed worker's intent against the
  service's lists, upload the shard file read back from the store, create the batch: intent first, so never
  twice), then asks for a poll sweep.
* ``poll_sweep`` runs :meth:`Runner.poll_sweep` (one ``GET /batches`` walk for the run's open batches), defers a
  ``collect_batch`` for every batch that is now terminal, makes the follow-up attempts when nothing is open
  (:meth:`Runner.follow_up`, under a ledger claim) and defers their shards, marks the run finished when nothing
  is pending (:meth:`Runner.settle`), else defers itself ``poll_interval_s`` later.
* ``collect_batch`` runs :meth:`Runner.finish_batch` (claim ``output``, stream the output and error files into the
  store, C2PA-check, reconcile leftovers, clean up). The ``batch:`` lock and the ledger's ``output`` claim each
  keep a second worker off a file being collected; the ledger's byte offsets and guarded transitions keep an
  item from being collected twice after a takeover.

**Jobs follow the ledger, not the other way round.** The ledger is the source of truth. Each worker runs a
*keeper* beside procrastinate's loop (every ``keeper_interval_s``): for every open run it defers what the ledger
says is due (a poll sweep, a submit per ready shard, a collect per terminal batch not reconciled), each
de-duplicated by its ``queueing_lock`` (``AlreadyEnqueued`` is ignored). So a worker killed between a ledger
transition and deferring the next job loses nothing: the next keeper pass defers it. This is why the next job is
not deferred inside the ledger transition's transaction (procrastinate's external connection): the ledger
adapters run synchronous psycopg on their own thread and pool, and with jobs derived from ledger state a
transactional outbox would only save one keeper interval, while a duplicate job is harmless (claims + guarded
transitions).

**A killed worker.** Its jobs stay ``doing`` in procrastinate's table and its ``lock`` keeps others off them
until the keeper of any live worker finds them stalled (the dead worker's heartbeat is older than
``stalled_after_s``: ``JobManager.get_stalled_jobs``) and retries them (``retry_job``; a retry refused because
the same work is already queued ends the stalled job as failed instead). The ledger claims it held run out
after ``lease_s`` (the keeper renews the claims of its running jobs every ``lease_s / 4``), or at once when it
restarts under the same name (``BATCHPIPE_WORKER``). A stage that a killed worker left half done is settled by
the same reconciliation a restarted ``batchpipe run`` does.

procrastinate is imported only here (the single-machine default never imports this module). Its schema is
applied by :func:`apply_queue_schema` (``batchpipe ledger init``, and every worker at start), once, under an
advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import procrastinate
import psycopg
import structlog
from procrastinate import exceptions as queue_errors
from procrastinate import jobs as queue_jobs
from procrastinate.schema import SchemaManager

from batchpipe.adapters.openai import OpenAIClient
from batchpipe.domain.records import batch_status_is_terminal
from batchpipe.errors import InputError
from batchpipe.ports import AsyncLedger, Ledger
from batchpipe.runtime.locations import is_shared_ledger, open_ledger_url, open_store_url
from batchpipe.runtime.runner import DEFAULT_LEASE_S, Runner, default_owner
from batchpipe.runtime.settings import RunOptions
from batchpipe.runtime.wiring import api_settings, worker_runner_factory

__all__ = [
    "COLLECT_TASK",
    "POLL_TASK",
    "QUEUE_SCHEMA_LOCK",
    "SUBMIT_TASK",
    "Cluster",
    "WorkerSettings",
    "WorkerStats",
    "apply_queue_schema",
    "default_run_options",
    "make_app",
    "run_worker",
    "serve_worker",
]

log = structlog.get_logger("batchpipe.worker")

#: The advisory lock key under which the queue schema is applied (one applier at a time; the others wait).
QUEUE_SCHEMA_LOCK: Final = 0x6261746368_7071  # "batch" "pq"
#: The additional-context key under which a worker's :class:`Cluster` reaches its tasks.
_CONTEXT_KEY: Final = "batchpipe"
#: The names of the stage tasks (procrastinate's ``task_name`` of their jobs).
SUBMIT_TASK: Final = "batchpipe.submit_shard"
POLL_TASK: Final = "batchpipe.poll_sweep"
COLLECT_TASK: Final = "batchpipe.collect_batch"


@dataclass(frozen=True)
class WorkerSettings:
    """How one worker behaves. Times in seconds.

    ``owner``: its name in the ledger's claims (default :func:`default_owner`: ``BATCHPIPE_WORKER`` or the host
    name; two workers on one machine need two names). ``concurrency``: jobs at once. ``lease_s``: how long a
    claim of a dead worker keeps others off its work (renewed every ``lease_s / 4`` while the job runs).
    ``keeper_interval_s``: how often the keeper defers due jobs and looks for stalled ones.
    ``heartbeat_s`` / ``stalled_after_s``: procrastinate's worker heartbeat, and its age after which a worker's
    jobs are taken over. ``fetch_interval_s``: procrastinate's fallback poll of its job table (new jobs also
    arrive by LISTEN/NOTIFY). ``until_idle``: exit once no run is open. ``shutdown_grace_s``: how long a stop
    (SIGTERM) waits for running jobs before aborting them (they are taken over like a dead worker's).
    ``poll_interval_s``: between poll sweeps of a run (None: the run's own setting).
    """

    owner: str = field(default_factory=default_owner)
    concurrency: int = 4
    lease_s: float = DEFAULT_LEASE_S
    keeper_interval_s: float = 2.0
    heartbeat_s: float = 10.0
    stalled_after_s: float = 30.0
    fetch_interval_s: float = 5.0
    until_idle: bool = False
    shutdown_grace_s: float = 30.0
    poll_interval_s: float | None = None


@dataclass
class WorkerStats:
    """What this worker did: ``jobs`` by task name, ``batches_created``, ``batches_collected``,
    ``items_collected`` (items of the batches it reconciled), ``stalled_retried`` (jobs of dead workers it put
    back), ``job_errors`` (jobs that raised; their work is deferred again by a keeper)."""

    jobs: Counter[str] = field(default_factory=Counter)
    batches_created: int = 0
    batches_collected: int = 0
    items_collected: int = 0
    stalled_retried: int = 0
    job_errors: int = 0

    def line(self, owner: str) -> str:
        """``worker w1: jobs submit_shard=2 poll_sweep=30 collect_batch=3; batches created 2, collected 3;
        items collected 60; stalled jobs retried 0; job errors 0``."""
        jobs = " ".join(f"{name.split('.')[-1]}={n}" for name, n in sorted(self.jobs.items())) or "none"
        return (
            f"worker {owner}: jobs {jobs}; batches created {self.batches_created}, collected "
            f"{self.batches_collected}; items collected {self.items_collected}; stalled jobs retried "
            f"{self.stalled_retried}; job errors {self.job_errors}"
        )


#: Makes the :class:`Runner` of a run from its ledger row (``run_info``): options, verifier, output folder.
RunnerFactory = Callable[[dict[str, object]], Awaitable[Runner]]


class Cluster:
    """One worker process's side of the cluster: the ledger (bound once as an :class:`AsyncLedger`), one
    :class:`Runner` per open run (made by ``runner_for``, cached), and the work the tasks and the keeper do.

    ``app`` is the procrastinate app whose tasks :func:`make_app` registered. Raises nothing of its own: a
    stage's errors propagate to procrastinate (the job fails, a keeper defers it again).
    """

    def __init__(self, app: procrastinate.App, ledger: Ledger, runner_for: RunnerFactory, settings: WorkerSettings):
        self.app = app
        self.db = AsyncLedger(ledger)
        self.settings = settings
        self.stats = WorkerStats()
        self._runner_for = runner_for
        self._runners: dict[str, Runner] = {}
        self._making = asyncio.Lock()
        self._held: dict[tuple[str, str], int] = {}  # ledger claims of running jobs (renewed by the keeper)
        self._last_renewal = 0.0

    async def runner(self, run_id: str) -> Runner | None:
        """The runner of ``run_id`` (None when the ledger does not know it)."""
        async with self._making:  # two jobs of one new run make one runner
            runner = self._runners.get(run_id)
            if runner is None:
                info = await self.db.run_info(run_id)
                if info is None:
                    return None
                runner = await self._runner_for(info)
                runner.bind(self.db)
                self._runners[run_id] = runner
        return runner

    @property
    def busy(self) -> bool:
        """True while a job of this worker holds a ledger claim."""
        return bool(self._held)

    def close(self) -> None:
        """End every runner's collector and the ledger thread (the ledger itself stays open)."""
        for runner in self._runners.values():
            runner.close_collector()
        self._runners.clear()
        self.db.close()

    @contextlib.asynccontextmanager
    async def _holding(self, kind: str, key: str) -> AsyncIterator[None]:
        """Mark the ledger claim ``(kind, key)`` as one a running job of this worker holds (the keeper renews it)."""
        self._held[(kind, key)] = self._held.get((kind, key), 0) + 1
        try:
            yield
        finally:
            self._held[(kind, key)] -= 1
            if not self._held[(kind, key)]:
                del self._held[(kind, key)]

    # -- deferring ------------------------------------------------------------------------------------------
    async def _defer(self, task: str, *, lock: str, queueing_lock: str, delay_s: float = 0.0, **kwargs: str) -> bool:
        """Defer one job of ``task``; False when the same work is already waiting (``AlreadyEnqueued``)."""
        options: dict[str, Any] = {"lock": lock, "queueing_lock": queueing_lock}
        if delay_s > 0:
            options["schedule_in"] = {"seconds": delay_s}
        try:
            await self.app.configure_task(task, **options).defer_async(**kwargs)
        except queue_errors.AlreadyEnqueued:
            return False
        return True

    async def defer_submit(self, run_id: str, shard: str) -> bool:
        """Ask for ``shard`` to be submitted (or its intent settled)."""
        return await self._defer(
            SUBMIT_TASK, lock=f"shard:{shard}", queueing_lock=f"submit:{shard}", run_id=run_id, shard=shard
        )

    async def defer_poll(self, run_id: str, delay_s: float = 0.0) -> bool:
        """Ask for a poll sweep of ``run_id`` in ``delay_s`` seconds."""
        return await self._defer(
            POLL_TASK, lock=f"poll:{run_id}", queueing_lock=f"poll:{run_id}", delay_s=delay_s, run_id=run_id
        )

    async def defer_collect(self, run_id: str, batch_id: str) -> bool:
        """Ask for batch ``batch_id``'s files to be collected and its rows reconciled."""
        return await self._defer(
            COLLECT_TASK,
            lock=f"batch:{batch_id}",
            queueing_lock=f"collect:{batch_id}",
            run_id=run_id,
            batch_id=batch_id,
        )

    # -- the stage jobs ---------------------------------------------------------------------------------------
    async def submit_shard(self, run_id: str, shard: str) -> None:
        """The ``submit_shard`` job."""
        self.stats.jobs[SUBMIT_TASK] += 1
        runner = await self.runner(run_id)
        if runner is None:
            return
        async with self._holding("shard", shard):
            created = await runner.submit_shard(shard)
        if created:
            self.stats.batches_created += 1
            await self.defer_poll(run_id)

    async def poll_sweep(self, run_id: str) -> None:
        """The ``poll_sweep`` job: poll, defer collections, follow up, settle or poll again later."""
        self.stats.jobs[POLL_TASK] += 1
        runner = await self.runner(run_id)
        info = await self.db.run_info(run_id)
        if runner is None or info is None or info.get("status") != "running" or info.get("built_at") is None:
            return
        open_batches = await self.db.batches(run_id=run_id, unfinished=True)
        if open_batches:
            sweep = await runner.poll_sweep(run_id, open_batches)
            for batch_id in sweep.ready:
                await self.defer_collect(run_id, batch_id)
        else:
            async with self._holding("follow-up", run_id):
                new_shards = await runner.follow_up(str(info["job"]), run_id)
            for shard in new_shards:
                await self.defer_submit(run_id, shard)
            if not new_shards and not await runner.ready_shards(run_id) and await runner.settle(run_id):
                await runner.cleanup_leftovers(run_id)  # files a killed worker did not delete
                log.info("run finished", run_id=run_id, worker=self.settings.owner)
                return
        interval = self.settings.poll_interval_s or runner.options.poll_interval_s
        await self.defer_poll(run_id, delay_s=interval)

    async def collect_batch(self, run_id: str, batch_id: str) -> None:
        """The ``collect_batch`` job."""
        self.stats.jobs[COLLECT_TASK] += 1
        runner = await self.runner(run_id)
        if runner is None:
            return
        async with self._holding("output", batch_id):
            reconciled = await runner.finish_batch(batch_id)
        if reconciled:
            items = len(await self.db.items(batch_id=batch_id))
            self.stats.batches_collected += 1
            self.stats.items_collected += items
            log.info("batch collected", batch_id=batch_id, run_id=run_id, worker=self.settings.owner, items=items)
            await self.defer_poll(run_id)  # the run may be settled, or need follow-up attempts

    # -- the keeper -------------------------------------------------------------------------------------------
    async def keep(self) -> bool:
        """One keeper pass: take over stalled jobs, renew the claims of running jobs, and defer what every open
        run's ledger state says is due. Returns True when a run is open."""
        await self._retry_stalled()
        await self._renew_claims()
        runs = await self.db.open_runs()
        for run_id in runs:
            runner = await self.runner(run_id)
            if runner is None:
                continue
            await self.defer_poll(run_id)
            for shard in await runner.ready_shards(run_id):
                await self.defer_submit(run_id, shard)
            for batch in await self.db.batches(run_id=run_id, unfinished=True):
                if batch_status_is_terminal(batch.status):
                    await self.defer_collect(run_id, str(batch.batch_id))
        for run_id in set(self._runners) - set(runs):  # finished runs: end their collectors' threads
            self._runners.pop(run_id).close_collector()
        return bool(runs)

    async def _retry_stalled(self) -> None:
        """Put the ``doing`` jobs of workers whose heartbeat is older than ``stalled_after_s`` back in the queue."""
        manager = self.app.job_manager
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=self.settings.stalled_after_s):
            if job.id is None:
                continue
            try:
                await manager.retry_job(job)
            except queue_errors.UniqueViolation:  # the same work is queued already: end the stalled copy
                with contextlib.suppress(queue_errors.ConnectorException):
                    await manager.finish_job_by_id_async(job.id, queue_jobs.Status.FAILED, delete_job=False)
            except queue_errors.ConnectorException:
                continue  # another keeper took it over first
            self.stats.stalled_retried += 1
            log.warning("took over a stalled job", task=job.task_name, job_id=job.id, lock=job.lock)

    async def _renew_claims(self) -> None:
        """Renew the ledger claims of this worker's running jobs every ``lease_s / 4``."""
        now = time.monotonic()
        if now - self._last_renewal < self.settings.lease_s / 4:
            return
        self._last_renewal = now
        for kind, key in list(self._held):
            await self.db.claim(kind, key, owner=self.settings.owner, lease_s=self.settings.lease_s)


def make_app(connector: procrastinate.BaseConnector) -> procrastinate.App:
    """The procrastinate app with batchpipe's three stage tasks (see the module docstring) on ``connector``
    (a ``PsycopgConnector`` in production, an ``InMemoryConnector`` in unit tests). A task finds its worker's
    :class:`Cluster` in the job context (``additional_context["batchpipe"]``)."""
    app = procrastinate.App(connector=connector)

    def cluster_of(context: procrastinate.JobContext) -> Cluster:
        cluster = context.additional_context[_CONTEXT_KEY]
        assert isinstance(cluster, Cluster)
        return cluster

    async def counted(context: procrastinate.JobContext, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            cluster_of(context).stats.job_errors += 1
            raise

    @app.task(name=SUBMIT_TASK, pass_context=True)
    async def submit_shard(context: procrastinate.JobContext, run_id: str, shard: str) -> None:
        await counted(context, cluster_of(context).submit_shard(run_id, shard))

    @app.task(name=POLL_TASK, pass_context=True)
    async def poll_sweep(context: procrastinate.JobContext, run_id: str) -> None:
        await counted(context, cluster_of(context).poll_sweep(run_id))

    @app.task(name=COLLECT_TASK, pass_context=True)
    async def collect_batch(context: procrastinate.JobContext, run_id: str, batch_id: str) -> None:
        await counted(context, cluster_of(context).collect_batch(run_id, batch_id))

    return app


def apply_queue_schema(url: str) -> bool:
    """Create procrastinate's tables and functions in the database at ``url`` unless they are there; True if they
    were created now. Idempotent and safe when several workers start at once (a transaction-scoped advisory
    lock, :data:`QUEUE_SCHEMA_LOCK`). The SQL is the installed procrastinate's ``schema.sql``."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (QUEUE_SCHEMA_LOCK,))
        row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if row is not None and row[0]:
            return False
        conn.execute(SchemaManager.get_schema())
    return True


async def run_worker(
    cluster: Cluster,
    *,
    echo: Callable[[str], None] = print,
    install_signal_handlers: bool = True,
) -> WorkerStats:
    """Run procrastinate's worker loop and the keeper until stopped (SIGTERM/SIGINT: running jobs get
    ``shutdown_grace_s`` to finish) or, with ``until_idle``, until no run is open and no job of this worker runs.
    The app must be open. Returns the worker's :class:`WorkerStats` (also printed through ``echo``)."""
    settings = cluster.settings
    app = cluster.app
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    worker = asyncio.create_task(
        app.run_worker_async(
            name=settings.owner,
            concurrency=settings.concurrency,
            wait=True,
            fetch_job_polling_interval=settings.fetch_interval_s,
            abort_job_polling_interval=max(settings.fetch_interval_s, 1.0),
            update_heartbeat_interval=settings.heartbeat_s,
            stalled_worker_timeout=settings.stalled_after_s,
            shutdown_graceful_timeout=settings.shutdown_grace_s,
            install_signal_handlers=False,
            additional_context={_CONTEXT_KEY: cluster},
            delete_jobs="successful",
        ),
        name="procrastinate worker",
    )
    log.info("worker started", worker=settings.owner, concurrency=settings.concurrency)
    try:
        while not stop.is_set() and not worker.done():
            try:
                busy = await cluster.keep()
            except Exception as exc:  # a database or service hiccup: the next pass tries again
                log.warning("keeper pass failed; trying again", worker=settings.owner, error=str(exc))
                busy = True
            if settings.until_idle and not busy and not cluster.busy:
                log.info("no open run: stopping", worker=settings.owner)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.keeper_interval_s)
    finally:
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        cluster.close()
    echo(cluster.stats.line(settings.owner))
    return cluster.stats


def default_run_options(workdir: Path, poll_interval_s: float) -> RunOptions:
    """The options of a run whose job spec this worker cannot read: the defaults, polled every
    ``poll_interval_s`` seconds (up to 10x that)."""
    return RunOptions(workdir=workdir, poll_interval_s=poll_interval_s, max_poll_interval_s=poll_interval_s * 10)


async def serve_worker(
    *,
    ledger_url: str,
    store_url: str,
    api_label: str,
    base_url: str | None,
    environ: Mapping[str, str],
    workdir: Path,
    settings: WorkerSettings,
    local: bool,
    trust: str | None = None,
    echo: Callable[[str], None] = print,
) -> WorkerStats:
    """``batchpipe worker``: open the shared ledger (``ledger_url``, PostgreSQL), the store (``store_url``) and the
    API client, apply the queue schema if it is missing, and run this worker (:func:`run_worker`) until it stops.
    ``local``: the API is on this machine (its timings, :func:`~batchpipe.runtime.settings.api_timing`). Raises
    :class:`~batchpipe.errors.InputError` for a ledger that is not PostgreSQL."""
    if not is_shared_ledger(ledger_url):
        raise InputError("batchpipe worker needs a shared ledger: --ledger postgresql://...", file="--ledger")
    await asyncio.to_thread(apply_queue_schema, ledger_url)
    ledger = open_ledger_url(ledger_url, workdir)
    try:
        store = open_store_url(store_url, workdir / "out", environ)
        async with OpenAIClient(api_settings(api_label, base_url, environ)) as client:
            factory = worker_runner_factory(
                ledger,
                client,
                store,
                workdir=workdir,
                api_label=api_label,
                local=local,
                poll_interval_s=settings.poll_interval_s,
                trust=trust,
                owner=settings.owner,
                lease_s=settings.lease_s,
                echo=echo,
            )
            connector = procrastinate.PsycopgConnector(
                conninfo=ledger_url, min_size=1, max_size=settings.concurrency + 2
            )
            app = make_app(connector)
            async with app.open_async():
                return await run_worker(Cluster(app, ledger, factory, settings), echo=echo)
    finally:
        ledger.close()
