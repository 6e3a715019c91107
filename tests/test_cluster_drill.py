"""The cluster drill, small: three ``batchpipe worker`` processes on embedded PostgreSQL + SeaweedFS against a
faulty standalone emulator, SIGKILLed at random and restarted, lose nothing, create no batch twice and collect
no output file twice (``scripts/cluster_drill.py``'s :func:`run_cluster_drill`, about 60 items, 4 kills)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

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
        kill_every_s=(0.5, 1.5),  # 4 kills well before the ~8 s the 60 items take (wider gaps could miss some)
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


@pytest.mark.slow
def test_a_worker_stops_cleanly_on_sigterm(tmp_path: Path, fresh_postgres_url: Any, s3_server: Any) -> None:
    ledger_url, store_url = fresh_postgres_url(), s3_server.new_prefix()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCHPIPE_"))}
    env.update(s3_server.env(), PYTHONPATH=str(REPO))
    bp = [sys.executable, "-m", "batchpipe", "--log-json"]
    init = subprocess.run([*bp, "ledger", "init", "--ledger", ledger_url], env=env, capture_output=True, text=True)
    assert init.returncode == 0 and "job queue (procrastinate) created" in init.stderr, init.stderr
    again = subprocess.run([*bp, "ledger", "init", "--ledger", ledger_url], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "job queue (procrastinate) ready" in again.stderr  # idempotent
    worker = subprocess.Popen(
        [*bp, "worker", "--api", "http://127.0.0.1:9/v1", "--ledger", ledger_url, "--store", store_url,
         "--workdir", str(tmp_path), "--name", "w1", "--keeper-interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stderr is not None
        started = time.monotonic()
        while "worker started" not in worker.stderr.readline():
            assert worker.poll() is None and time.monotonic() - started < 60
        time.sleep(0.5)  # a few keeper passes with no open run: it keeps waiting (no --until-idle)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert "worker w1: jobs none;" in err
