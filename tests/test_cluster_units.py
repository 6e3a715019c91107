"""``batchpipe worker``'s jobs on fakes: procrastinate's ``InMemoryConnector``, ``MemoryLedger``, ``MemoryBatchApi``
and ``MemoryImageStore`` (no PostgreSQL, no HTTP).

Two workers share one planned run and finish it from shard files they read back from the store; a job is
deferred once while it waits (``queueing_lock``) and serialised per shard, run and batch (``lock``); a dead
worker's running job is taken over by another worker's keeper; ``--until-idle`` stops when no run is open."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from procrastinate.testing import InMemoryConnector

from batchpipe.domain.items import Item, ItemStatus
from batchpipe.fakes import MemoryBatchApi, MemoryImageStore, MemoryLedger
from batchpipe.runtime.cluster import (
    COLLECT_TASK,
    POLL_TASK,
    SUBMIT_TASK,
    Cluster,
    WorkerSettings,
    make_app,
    run_worker,
)
from batchpipe.runtime.runner import Runner, shard_location
from batchpipe.runtime.settings import RunOptions

GEN = "/v1/images/generations"


def _items(n: int) -> Iterator[Item]:
    for i in range(n):
        yield Item(key=f"sku-{i}", endpoint=GEN, body={"model": "gpt-image-2", "prompt": f"A mug {i}"}, metadata={})


def _options(workdir: Path, *, stop_after: str | None = None) -> RunOptions:
    return RunOptions(
        workdir=workdir,
        max_shard_requests=4,
        poll_interval_s=0.01,
        max_poll_interval_s=0.01,
        output_grace_s=0.0,
        max_attempts=1,
        stop_after=stop_after,
    )


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def _plan(tmp_path: Path, ledger: MemoryLedger, api: MemoryBatchApi, store: MemoryImageStore, n: int) -> str:
    """Plan a run (build and publish its shards), then delete the planner's shard files: workers on other machines
    see only the store."""
    planner = Runner(
        ledger,
        api,  # type: ignore[arg-type]
        options=_options(tmp_path / "planner", stop_after="build"),
        output_dir=tmp_path / "out",
        store=store,
        sleep=_no_sleep,
        owner="planner",
        publish_shards=True,
    )
    summary = await planner.run("job", "h1", lambda: _items(n), source_name="t")
    for path in (tmp_path / "planner" / "shards").iterdir():
        path.unlink()
    return summary.run_id


def _cluster(
    app: object, tmp_path: Path, ledger: MemoryLedger, api: MemoryBatchApi, store: MemoryImageStore, name: str
) -> Cluster:
    async def runner_for(info: dict[str, object]) -> Runner:
        return Runner(
            ledger,
            api,  # type: ignore[arg-type]
            options=_options(tmp_path / name),
            output_dir=tmp_path / "out",
            store=store,
            sleep=_no_sleep,
            owner=name,
            publish_shards=True,
        )

    settings = WorkerSettings(owner=name, concurrency=2, keeper_interval_s=0.01, fetch_interval_s=0.02, until_idle=True)
    return Cluster(app, ledger, runner_for, settings)  # type: ignore[arg-type]


async def _drain(cluster: Cluster) -> None:
    """One keeper pass, then this worker runs every job ready now (procrastinate's ``wait=False``)."""
    await cluster.keep()
    await cluster.app.run_worker_async(
        wait=False,
        concurrency=2,
        name=cluster.settings.owner,
        install_signal_handlers=False,
        additional_context={"batchpipe": cluster},
        listen_notify=False,
    )


async def test_two_workers_finish_a_planned_run_from_shards_in_the_store(tmp_path: Path) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    run_id = await _plan(tmp_path, ledger, api, store, 10)
    shards = ledger.shards(run_id=run_id)
    assert len(shards) == 3 and all(store.exists(shard_location(store, s.name)) for s in shards)
    connector = InMemoryConnector()
    app = make_app(connector)
    async with app.open_async():
        workers = [_cluster(app, tmp_path, ledger, api, store, name) for name in ("w1", "w2")]
        for _ in range(200):
            if not ledger.open_runs():
                break
            for worker in workers:
                await _drain(worker)
        for worker in workers:
            worker.close()
    assert ledger.open_runs() == [] and ledger.run_info(run_id)["status"] == "finished"  # type: ignore[index]
    assert ledger.count_items(run_id=run_id) == {ItemStatus.SUCCEEDED: 10}
    assert api.creates == 3 == len(api.batches)  # one batch per shard, whoever submitted it
    created = sum(w.stats.batches_created for w in workers)
    collected = sum(w.stats.batches_collected for w in workers)
    assert created == 3 and collected == 3  # each batch created once and collected once across the workers
    assert sum(w.stats.items_collected for w in workers) == 10
    done = connector.jobs.values()
    assert {j["task_name"] for j in done} >= {SUBMIT_TASK, POLL_TASK, COLLECT_TASK}
    for job in done:  # the locks of the module docstring's table
        args = job["args"]
        want = {
            SUBMIT_TASK: (f"shard:{args.get('shard')}", f"submit:{args.get('shard')}"),
            POLL_TASK: (f"poll:{args.get('run_id')}", f"poll:{args.get('run_id')}"),
            COLLECT_TASK: (f"batch:{args.get('batch_id')}", f"collect:{args.get('batch_id')}"),
        }[job["task_name"]]
        assert (job["lock"], job["queueing_lock"]) == want
    for row in ledger.items():  # every shard was read back from the store by a worker: the planner's are gone
        assert row.output_uri is not None and store.exists(row.output_uri)
    assert any((tmp_path / name / "shards").is_dir() for name in ("w1", "w2"))


async def test_waiting_work_is_deferred_once(tmp_path: Path) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    app = make_app(InMemoryConnector())
    async with app.open_async():
        cluster = _cluster(app, tmp_path, ledger, api, store, "w1")
        assert await cluster.defer_collect("run", "batch_1")
        assert not await cluster.defer_collect("run", "batch_1")  # queueing_lock: already waiting
        assert await cluster.defer_collect("run", "batch_2")
        assert await cluster.defer_submit("run", "shard-1") and not await cluster.defer_submit("run", "shard-1")
        assert await cluster.defer_poll("run") and not await cluster.defer_poll("run", delay_s=5)
        cluster.close()


async def test_a_dead_workers_running_job_is_taken_over(tmp_path: Path) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    connector = InMemoryConnector()
    app = make_app(connector)
    async with app.open_async():
        cluster = _cluster(app, tmp_path, ledger, api, store, "w2")
        await cluster.defer_collect("run", "batch_1")
        dead = (await connector.register_worker_one())["worker_id"]
        job = await connector.fetch_job_one(queues=None, worker_id=dead)  # the dead worker was running it
        assert job["status"] == "doing" and "batch:batch_1" in connector.current_locks
        await cluster.keep()
        assert job["status"] == "doing"  # its heartbeat is fresh: alive, left alone
        connector.workers[dead] = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=120)
        await cluster.keep()
        assert job["status"] == "todo" and cluster.stats.stalled_retried == 1  # taken over: queued again
        assert "batch:batch_1" not in connector.current_locks
        cluster.close()


async def test_until_idle_stops_when_no_run_is_open(tmp_path: Path) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    app = make_app(InMemoryConnector())
    async with app.open_async():
        cluster = _cluster(app, tmp_path, ledger, api, store, "w1")
        lines: list[str] = []
        stats = await asyncio.wait_for(run_worker(cluster, echo=lines.append, install_signal_handlers=False), 30)
    assert stats.jobs == {} and lines == [stats.line("w1")]
    assert lines[0].startswith("worker w1: jobs none;")


@pytest.mark.parametrize("name", ["w1"])
async def test_a_worker_finishes_a_run_by_itself_until_idle(tmp_path: Path, name: str) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    run_id = await _plan(tmp_path, ledger, api, store, 6)
    app = make_app(InMemoryConnector())
    async with app.open_async():
        cluster = _cluster(app, tmp_path, ledger, api, store, name)
        stats = await asyncio.wait_for(run_worker(cluster, echo=lambda _: None, install_signal_handlers=False), 60)
    assert ledger.count_items(run_id=run_id) == {ItemStatus.SUCCEEDED: 6}
    assert stats.batches_created == 2 == stats.batches_collected and stats.items_collected == 6
