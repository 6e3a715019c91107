"""The runner on fakes: MemoryLedger, MemoryImageStore and MemoryBatchApi (no HTTP, no image files). The nightly
re-run test also runs on the SQLite ledger (an in-process file), whose "already succeeded" check and follow-up read
are its own SQL.

Covers submit → poll → collect → settle, a response lost after the create, and a crash between the create and
recording it: each ends with exactly one batch per shard at the service and every item accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from runner_helpers import fake_runner

from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.cli.exits import EXIT_STOPPED, exit_code
from batchpipe.domain.items import Item, ItemStatus
from batchpipe.errors import DownloadError
from batchpipe.fakes import MemoryBatchApi, MemoryImageStore, MemoryLedger
from batchpipe.fakes.batch_api import PNG_1X1, Crash, MemoryFileStream
from batchpipe.ports import Ledger
from batchpipe.runtime.runner import Runner
from batchpipe.runtime.settings import RunOptions

GEN = "/v1/images/generations"


def _items(n: int, *, failing: frozenset[int] = frozenset()) -> Iterator[Item]:
    for i in range(n):
        prompt = f"A mug, variant {i}" + (" FAIL" if i in failing else "")
        yield Item(key=f"sku-{i}", endpoint=GEN, body={"model": "gpt-image-2", "prompt": prompt}, metadata={})


_runner = fake_runner


async def test_submit_poll_collect_settle(tmp_path: Path) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    summary = await _runner(tmp_path, ledger, api, store).run(
        "job", "h1", lambda: _items(10, failing=frozenset({3})), source_name="t"
    )
    assert summary.finished
    assert summary.items == {ItemStatus.SUCCEEDED: 9, ItemStatus.FAILED: 1}
    assert api.creates == 3 and len(api.batches) == 3  # 10 items, 4 a shard: one batch per shard
    rows = {row.item_key: row for row in ledger.items()}
    assert rows["sku-3"].error_code == "x" and rows["sku-3"].status == ItemStatus.FAILED
    for key, row in rows.items():
        if key != "sku-3":
            assert row.output_uri is not None and store.read(row.output_uri) == PNG_1X1
    assert not (tmp_path / "out").exists()  # nothing touched the disk but the shard files


@pytest.mark.parametrize("hook", ["lose_create", "crash_after_create"])
async def test_a_create_whose_outcome_is_unknown_is_adopted_never_repeated(tmp_path: Path, hook: str) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    setattr(api, hook, 1)
    items = lambda: _items(6)  # noqa: E731
    if hook == "crash_after_create":
        with pytest.raises(Crash):
            await _runner(tmp_path, ledger, api, store).run("job", "h1", items, source_name="t")
        assert api.creates == 1  # the service has the batch; the ledger says only "creating"
        assert next(s.status for s in ledger.shards()) == "creating"
    summary = await _runner(tmp_path, ledger, api, store).run("job", "h1", items, source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 6}
    assert api.creates == 2 == len(api.batches)  # two shards, one batch each: the first was adopted
    assert {b.metadata.get("batchpipe_shard") for b in api.batches.values()} == {s.name for s in ledger.shards()}


async def test_two_workers_on_one_ledger_never_take_the_same_work(tmp_path: Path) -> None:
    """Two runners (owners A and B) run the same job at once against one ledger and one API: one builds, the
    other waits for the build; every shard is created once, every batch collected once, every item succeeds."""
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    workers = []
    for owner in ("A", "B"):
        runner = _runner(tmp_path, ledger, api, store)
        runner.owner = owner
        workers.append(runner)
    summaries = await asyncio.gather(*(w.run("job", "h1", lambda: _items(20), source_name="t") for w in workers))
    assert all(s.finished for s in summaries), summaries
    assert api.creates == 5 == len(api.batches)  # 20 items, 4 a shard: one batch per shard, none twice
    assert ledger.count_items() == {ItemStatus.SUCCEEDED: 20}
    for row in ledger.items():
        history = [(e["from_status"], e["to_status"]) for e in ledger.item_history(row.custom_id)]
        assert history == [("pending", "submitted"), ("submitted", "succeeded")], history
    assert len(store.locations()) == 20


def test_a_worker_restarted_under_its_name_takes_its_claims_back(tmp_path: Path) -> None:
    ledger = MemoryLedger()
    assert ledger.claim("shard", "s1", owner="host-a", lease_s=3600)
    assert not ledger.claim("shard", "s1", owner="host-b", lease_s=3600)  # another worker waits
    assert ledger.claim("shard", "s1", owner="host-a", lease_s=3600)  # the same name after a restart: at once


class _ThreadWatchingLedger(MemoryLedger):
    """A MemoryLedger that notes the thread of every public call."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def __getattribute__(self, name: str) -> object:
        if not name.startswith("_") and name != "threads":
            object.__getattribute__(self, "threads").add(threading.get_ident())
        return object.__getattribute__(self, name)


async def test_no_ledger_call_runs_on_the_event_loop(tmp_path: Path) -> None:
    ledger, api, store = _ThreadWatchingLedger(), MemoryBatchApi(), MemoryImageStore()
    ledger.threads.clear()
    summary = await _runner(tmp_path, ledger, api, store).run(
        "job", "h1", lambda: _items(10, failing=frozenset({3})), source_name="t"
    )
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 9, ItemStatus.FAILED: 1}
    assert ledger.threads and threading.get_ident() not in ledger.threads


async def test_a_build_killed_part_way_is_discarded_and_built_again(tmp_path: Path) -> None:
    """A kill mid-build leaves committed chunks of rows and shard files but no built run: the next run throws
    them away and builds from the start (attempt 1 for every key, no row twice)."""
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    run_id, _ = ledger.open_run("job", "h1", "openai")
    ledger.insert_items(
        [
            {
                "custom_id": f"job:sku-{i}:1",
                "job": "job",
                "item_key": f"sku-{i}",
                "attempt": 1,
                "run_id": run_id,
                "endpoint": GEN,
                "model": "gpt-image-2",
                "request_hash": "stale",
                "body_json": "{}",
                "metadata_json": "{}",
                "source": "t",
                "status": ItemStatus.PENDING,
            }
            for i in range(3)
        ]
    )
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    (shard_dir / f"{run_id}-00000-gen-gpt-image-2.jsonl").write_text("{}\n")
    (shard_dir / f".{run_id}-00001-gen-gpt-image-2.jsonl.part").write_text("{")
    (shard_dir / "other-run-00000-gen-gpt-image-2.jsonl").write_text("{}\n")  # not ours: kept
    summary = await _runner(tmp_path, ledger, api, store).run("job", "h1", lambda: _items(6), source_name="t")
    assert summary.run_id == run_id and summary.finished and summary.items == {ItemStatus.SUCCEEDED: 6}
    assert sorted(row.attempt for row in ledger.items()) == [1] * 6 and api.creates == 2
    assert {row.request_hash for row in ledger.items()} != {"stale"}
    assert sorted(p.name for p in shard_dir.iterdir() if "other-run" in p.name or p.name.startswith(".")) == [
        "other-run-00000-gen-gpt-image-2.jsonl"
    ]


async def test_a_build_that_fails_part_way_keeps_no_row_and_no_shard_file(tmp_path: Path) -> None:
    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()

    def items() -> Iterator[Item]:
        yield from _items(4500)  # more than two ledger commits and many shard files
        raise RuntimeError("the catalog's disk went away")

    with pytest.raises(RuntimeError, match="went away"):
        await _runner(tmp_path, ledger, api, store).run("job", "h1", items, source_name="t")
    assert ledger.count_items() == {} and ledger.shards() == [] and api.creates == 0
    assert list((tmp_path / "shards").iterdir()) == []
    summary = await _runner(tmp_path, ledger, api, store).run("job", "h1", lambda: _items(5), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 5}


class _VirtualTime:
    """A clock that only sleeps move (unix seconds), for runs that must wait a bounded time."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        await asyncio.sleep(0)


def _timed_runner(
    tmp_path: Path, ledger: MemoryLedger, api: MemoryBatchApi, time_: _VirtualTime, **opts: object
) -> Runner:
    options = RunOptions(
        workdir=tmp_path,
        max_shard_requests=4,
        poll_interval_s=0.01,
        max_poll_interval_s=0.01,
        output_grace_s=0.0,
        max_attempts=1,
        list_lag_s=20.0,
        **opts,  # type: ignore[arg-type]
    )
    return Runner(
        ledger,
        api,
        options=options,
        output_dir=tmp_path / "out",
        store=MemoryImageStore(),
        sleep=time_.sleep,
        clock=time_,
    )


async def test_a_lost_create_that_the_list_shows_late_is_adopted_not_repeated(tmp_path: Path) -> None:
    """The create happened but its answer was lost, and GET /batches leaves the batch out for several reads
    (an eventually consistent list): the runner reads again, adopts it, and never creates it twice."""
    time_ = _VirtualTime()
    ledger, api = MemoryLedger(), MemoryBatchApi(clock=time_)
    api.lose_create, api.list_lag_calls = 1, 4
    summary = await _timed_runner(tmp_path, ledger, api, time_).run("job", "h1", lambda: _items(8), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 8}
    assert api.create_calls == api.creates == 2 == len(api.batches)  # one per shard, none twice
    assert summary.unknown_batches == []


async def test_a_create_the_list_never_shows_is_made_again_only_after_the_lag_bound(tmp_path: Path) -> None:
    time_ = _VirtualTime()
    ledger, api = MemoryLedger(), MemoryBatchApi(clock=time_)
    api.refuse_create_unseen = 1
    runner = _timed_runner(tmp_path, ledger, api, time_)
    summary = await runner.run("job", "h1", lambda: _items(4), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 4}
    assert api.create_calls == 2 and api.creates == 1  # the second create only after the list proved absence
    assert time_.slept >= 20.0  # absence was decisive only once list_lag_s had passed
    notes = [e["detail"] for e in ledger.events(entity="shard") if e["to_status"] == "uploaded"]
    assert any(n and "never reached the service" in n for n in notes), notes


async def test_repeated_ambiguous_creates_stop_the_run_resumably(tmp_path: Path) -> None:
    from batchpipe.errors import IndeterminateSubmissionError

    time_ = _VirtualTime()
    ledger, api = MemoryLedger(), MemoryBatchApi(clock=time_)
    api.refuse_create_unseen = 5
    with pytest.raises(IndeterminateSubmissionError, match="2 times"):
        await _timed_runner(tmp_path, ledger, api, time_).run("job", "h1", lambda: _items(4), source_name="t")
    assert api.creates == 0 and api.create_calls == 2
    assert [s.status for s in ledger.shards()] == ["indeterminate"]
    api.refuse_create_unseen = 0
    time_.now += 3600  # later: the list is long current; the next run settles the shard and finishes
    summary = await _timed_runner(tmp_path, ledger, api, time_).run("job", "h1", lambda: _items(4), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 4} and api.creates == 1


async def test_batches_of_this_run_unknown_to_the_ledger_are_reported(tmp_path: Path) -> None:
    time_ = _VirtualTime()
    ledger, api = MemoryLedger(), MemoryBatchApi(clock=time_)
    runner = _timed_runner(tmp_path, ledger, api, time_)
    original = api.create_batch

    async def create_twice(**kwargs: Any) -> Any:  # a proxy that replays the create: the service has two
        await original(**kwargs)
        return await original(**kwargs)

    api.create_batch = create_twice  # type: ignore[method-assign]
    summary = await runner.run("job", "h1", lambda: _items(4), source_name="t")
    assert summary.finished and len(api.batches) == 2
    assert [u["batch_id"] for u in summary.unknown_batches] == [min(api.batches)]
    assert summary.unknown_batches[0]["requests"] == 4 and summary.unknown_cost_usd >= 0


class _BrokenProxyApi(MemoryBatchApi):
    """Serves an HTML error page, with 200, for every output/error file while ``broken`` is set."""

    broken = True

    @contextlib.asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[MemoryFileStream]:
        f = self.files.get(file_id)
        if self.broken and f is not None and f.purpose == "batch_output":
            yield MemoryFileStream(b"<html><body>502 Bad Gateway</body></html>\n", 0)
        else:
            async with super().stream_file_content(file_id, start_byte=start_byte) as stream:
                yield stream


async def test_an_unreadable_output_file_stops_the_run_before_anything_is_judged_or_deleted(tmp_path: Path) -> None:
    """Issue 11, behaviour 2 on the fakes: DownloadError (exit 3) with every row still submitted, no row missing,
    no file deleted, nothing resubmitted; once the proxy heals, the same run resumes and finishes."""
    ledger, api, store = MemoryLedger(), _BrokenProxyApi(), MemoryImageStore()
    runner = _runner(tmp_path, ledger, api, store)
    with pytest.raises(DownloadError) as caught:
        await runner.run("job", "h1", lambda: _items(6), source_name="t")
    assert exit_code(caught.value) == EXIT_STOPPED and "resumes" in str(caught.value)
    assert {row.status for row in ledger.items()} == {ItemStatus.SUBMITTED}
    outputs = [b.output_file_id for b in api.batches.values()]
    assert all(file_id in api.files for file_id in outputs)  # never deleted on an unverified download
    api.broken = False
    summary = await _runner(tmp_path, ledger, api, store).run("job", "h1", lambda: _items(6), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 6}
    assert api.creates == 2 == len(api.batches)  # nothing resubmitted


async def test_a_ledger_error_in_a_queued_chunk_insert_stops_the_build_and_keeps_nothing(tmp_path: Path) -> None:
    """Chunk inserts run on the ledger thread while validation goes on: an insert that fails still stops the build,
    and what the build wrote is discarded."""
    from batchpipe.errors import LedgerError

    class FailingSecondInsert(MemoryLedger):
        calls = 0

        def insert_items(self, rows: Any) -> int:
            FailingSecondInsert.calls += 1
            if FailingSecondInsert.calls == 2:
                raise LedgerError("disk full")
            return super().insert_items(rows)

    ledger, api, store = FailingSecondInsert(), MemoryBatchApi(), MemoryImageStore()
    with pytest.raises(LedgerError, match="disk full"):
        await _runner(tmp_path, ledger, api, store).run("job", "h1", lambda: _items(4500), source_name="t")
    assert ledger.count_items() == {} and ledger.shards() == [] and api.creates == 0
    assert list((tmp_path / "shards").iterdir()) == []


async def test_the_cost_cap_is_reserved_per_shard_before_its_upload(tmp_path: Path) -> None:
    """With a cap that holds one shard's estimate and not two, the first shard goes out and the second is refused
    before its upload (CostCapError, exit 2); the batch in flight is not cancelled, and the same run resumed
    without the cap collects it and submits the rest: each shard still has exactly one batch."""
    from batchpipe.runtime.costguard import CostCapError, estimate_items

    ledger, api, store = MemoryLedger(), MemoryBatchApi(), MemoryImageStore()
    per_shard = estimate_items(list(_items(4))).cost_usd
    assert per_shard > 0
    capped = _runner(tmp_path, ledger, api, store)
    capped.cost_cap_usd = per_shard * 1.5
    with pytest.raises(CostCapError) as refused:
        await capped.run("job", "h1", lambda: _items(10), source_name="t")
    assert exit_code(refused.value) == 2 and "nothing more was submitted" in str(refused.value)
    assert api.creates == 1 and api.uploads == 1  # the second shard was not even uploaded
    statuses = sorted(s.status for s in ledger.shards())
    assert statuses == ["built", "built", "created"]
    assert all(b.status != "cancelled" for b in api.batches.values())

    summary = await _runner(tmp_path, ledger, api, store).run("job", "h1", lambda: _items(10), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 10}
    assert api.creates == 3 == len(api.batches)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_rerun_skips_the_unchanged_items_and_numbers_the_changed_ones_after_their_history(
    tmp_path: Path, kind: str
) -> None:
    """A nightly re-run where some items changed: the unchanged ones (succeeded with the same request) are skipped
    and cost nothing; a changed one becomes attempt 2 pointing at attempt 1, which is superseded; a failed one is
    sent again as attempt 2. The estimate summed during the build counts only what is sent. On the in-memory
    ledger and on SQLite (whose check is one SQL statement per chunk, and whose follow-up reads the run's rows
    through its index)."""
    from batchpipe.runtime.costguard import SpendEstimate

    api, store = MemoryBatchApi(), MemoryImageStore()
    ledger: Ledger = MemoryLedger() if kind == "memory" else SqliteLedger(tmp_path / "ledger.sqlite")
    first = await _runner(tmp_path, ledger, api, store).run(
        "job", "h1", lambda: _items(10, failing=frozenset({3})), source_name="t"
    )
    assert first.items == {ItemStatus.SUCCEEDED: 9, ItemStatus.FAILED: 1}

    def changed() -> Iterator[Item]:
        for item in _items(10):  # sku-3 no longer fails
            if item.key == "sku-5":
                item.body = {**item.body, "prompt": "A mug, redrawn"}
            yield item

    estimates: list[SpendEstimate] = []
    runner = _runner(tmp_path, ledger, api, store)
    runner.on_estimate = estimates.append
    second = await runner.run("job", "h2", changed, source_name="t")
    assert second.finished and second.items == {ItemStatus.SUCCEEDED: 2}
    assert len(estimates) == 1 and estimates[0].requests == 2 and estimates[0].skipped == 8
    rows = {(row.item_key, row.attempt): row for row in ledger.items()}
    for key in ("sku-3", "sku-5"):
        assert rows[(key, 2)].previous_custom_id == rows[(key, 1)].custom_id
        assert rows[(key, 2)].status == ItemStatus.SUCCEEDED and rows[(key, 1)].status == ItemStatus.SUPERSEDED
    assert not any(attempt == 2 for key, attempt in rows if key not in ("sku-3", "sku-5"))
    assert rows[("sku-0", 1)].status == ItemStatus.SUCCEEDED
    ledger.close()


async def test_a_batch_that_ends_while_another_is_collected_is_seen_and_collected_meanwhile(tmp_path: Path) -> None:
    """The drive loop polls on while an output file is read: the second batch ends only once the first one's output
    is being read, and the first read waits (up to 5 s) until the second batch's output is being read too. A loop
    that waited for each collection before polling again would never see the second batch end (the first read
    would time out and stop the run)."""

    class SlowFirstRead(MemoryBatchApi):
        def __init__(self) -> None:
            super().__init__()
            self.first_read = asyncio.Event()
            self.second_read = asyncio.Event()

        def _first(self) -> Any:
            return next(iter(self.batches.values()))

        def _advance(self, batch: Any) -> None:
            if batch is not self._first() and not self.first_read.is_set():
                return  # the second batch renders until the first one's output file is being read
            super()._advance(batch)

        @contextlib.asynccontextmanager
        async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[MemoryFileStream]:
            if file_id == self._first().output_file_id:
                self.first_read.set()
                await asyncio.wait_for(self.second_read.wait(), 5)
            else:
                self.second_read.set()
            async with super().stream_file_content(file_id, start_byte=start_byte) as stream:
                yield stream

    ledger, api, store = MemoryLedger(), SlowFirstRead(), MemoryImageStore()
    summary = await _runner(tmp_path, ledger, api, store).run("job", "h1", lambda: _items(8), source_name="t")
    assert summary.finished and summary.items == {ItemStatus.SUCCEEDED: 8}
    assert api.first_read.is_set() and api.second_read.is_set() and len(api.batches) == 2
