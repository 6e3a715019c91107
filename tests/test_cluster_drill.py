"""The cluster drill, small: three ``batchpipe worker`` processes on embedded PostgreSQL + SeaweedFS against a
faulty standalone emulator, SIGKILLed at random and restarted, lose nothing, create no batch twice and collect
no output file twice (``scripts/cluster_drill.py``'s :func:`run_cluster_drill`, about 60 items, 4 kills)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_drill", REPO / "scripts" / "cluster_drill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_drill"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cluster_drill = _load()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_workers_lose_nothing_create_no_batch_twice_and_collect_no_file_twice(tmp_path: Path) -> None:
    options = cluster_drill.ClusterDrillOptions(
        items=60,
        workers=3,
        kills=4,
        seed=5,
        shard_size=12,
        kill_every_s=(1.5, 3.5),
        timeout_s=150,
        workdir=tmp_path,
    )
    lines: list[str] = []
    report = cluster_drill.run_cluster_drill(options, echo=lines.append)
    figures = report.figures
    assert report.problems == [], "\n".join([*lines, *report.problems[:30]])
    assert figures["kills"] == 4 and figures["starts"] == 3 + 4
    assert figures["succeeded"] + figures["failed_final"] == 60 and figures["paid_twice"] == 0
    assert figures["objects_ok"] == figures["c2pa_trusted"] == figures["succeeded"]
    assert figures["batches_created"] == figures["shards"] >= 5  # the service's own count: none created twice
    assert figures["shards_with_2_batches"] == 0 and figures["orphan_batches"] == 0
    assert figures["collected_twice"] == 0
    assert figures["shards_read_from_store"] >= 1  # no worker saw the planner's disk
    assert figures["ambiguous_creates"] >= 1 and figures["bad_downloads"] >= 1  # the faults really happened
