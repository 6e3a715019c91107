"""The runner on fakes only: MemoryLedger, MemoryImageStore and MemoryBatchApi (no HTTP, no SQLite, no image files).

Covers submit → poll → collect → settle, a response lost after the create, and a crash between the create and
recording it: each ends with exactly one batch per shard at the service and every item accounted for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpipe.domain.items import Item, ItemStatus
from batchpipe.fakes import MemoryBatchApi, MemoryImageStore, MemoryLedger
from batchpipe.fakes.batch_api import PNG_1X1, Crash
from batchpipe.runtime.runner import Runner
from batchpipe.runtime.settings import RunOptions

GEN = "/v1/images/generations"


def _items(n: int, *, failing: frozenset[int] = frozenset()) -> Iterator[Item]:
    for i in range(n):
        prompt = f"A mug, variant {i}" + (" FAIL" if i in failing else "")
        yield Item(key=f"sku-{i}", endpoint=GEN, body={"model": "gpt-image-2", "prompt": prompt}, metadata={})


def _runner(tmp_path: Path, ledger: MemoryLedger, api: MemoryBatchApi, store: MemoryImageStore) -> Runner:
    async def no_sleep(_: float) -> None:
        return None

    options = RunOptions(
        workdir=tmp_path,
        max_shard_requests=4,
        poll_interval_s=0.01,
        max_poll_interval_s=0.01,
        output_grace_s=0.0,
        max_attempts=1,
    )
    return Runner(ledger, api, options=options, output_dir=tmp_path / "out", store=store, sleep=no_sleep)  # type: ignore[arg-type]


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
            assert row.output_path is not None and store.read(row.output_path) == PNG_1X1
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
