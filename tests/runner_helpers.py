"""A :class:`~batchpipe.runtime.runner.Runner` over the in-process fakes (or a ledger given), for tests that drive
whole runs without HTTP: no waiting between polls, one attempt per item."""

from __future__ import annotations

import asyncio
from pathlib import Path

from batchpipe.fakes import MemoryBatchApi, MemoryImageStore
from batchpipe.ports import Ledger
from batchpipe.runtime.runner import Runner
from batchpipe.runtime.settings import RunOptions


def fake_runner(
    tmp_path: Path, ledger: Ledger, api: MemoryBatchApi, store: MemoryImageStore, *, max_shard_requests: int = 4
) -> Runner:
    """A runner on ``ledger``, ``api`` and ``store`` with shards of ``max_shard_requests`` lines, polls 10 ms apart
    that only yield to the loop (no real sleep), no output grace and ``max_attempts`` 1; images under
    ``tmp_path / "out"``."""

    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)  # no waiting, but a turn of the loop, as a real sleep gives other tasks

    options = RunOptions(
        workdir=tmp_path,
        max_shard_requests=max_shard_requests,
        poll_interval_s=0.01,
        max_poll_interval_s=0.01,
        output_grace_s=0.0,
        max_attempts=1,
    )
    return Runner(ledger, api, options=options, output_dir=tmp_path / "out", store=store, sleep=no_sleep)  # type: ignore[arg-type]
