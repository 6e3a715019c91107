"""Three ``batchpipe run`` processes of one job at once, sharing a PostgreSQL ledger and an S3 bucket, against one
standalone emulator: the claims in the ledger (build, shard, output file) split the work, so every item succeeds
exactly once, no batch is created twice and every image in S3 matches its ledger row. (A first step towards
``batchpipe worker``: the workers here share the work directory for shard files, i.e. they run on one machine.)"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchpipe.adapters.postgres_ledger import PostgresLedger
from batchpipe.adapters.s3_store import open_s3_store

REPO = Path(__file__).resolve().parents[1]


def _emulator(state: Path) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "emulator", "serve", "--port", str(port), "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/models", headers={"Authorization": "Bearer x"}, timeout=1)
            return server, base
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError("the emulator did not start")


def _json_lines(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


@pytest.mark.slow
def test_three_runs_of_one_job_share_the_work_through_the_ledger(
    tmp_path: Path, fresh_postgres_url: Callable[[], str], s3_server: Any
) -> None:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    spec = tmp_path / "jobs" / "catalog-nightly.toml"
    spec.write_text(re.sub(r"max_requests_per_shard = \d+", "max_requests_per_shard = 6", spec.read_text()))
    ledger_url, store_url = fresh_postgres_url(), s3_server.new_prefix()
    server, base = _emulator(tmp_path / "emulator")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "BATCHPIPE_LEDGER", "BATCHPIPE_STORE")}
    env.update(s3_server.env())
    command = [
        sys.executable, "-m", "batchpipe", "--log-json", "--log-level", "info", "run", str(spec),
        "--limit", "36", "--api", base, "--poll-interval", "0.1", "--workdir", str(tmp_path / "work"),
        "--ledger", ledger_url, "--store", store_url,
    ]  # fmt: skip
    try:
        workers = [
            subprocess.Popen(
                command,
                env={**env, "BATCHPIPE_WORKER": f"worker-{n}"},
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(3)
        ]
        created: dict[str, int] = {}
        for n, worker in enumerate(workers):
            _, err = worker.communicate(timeout=240)
            assert worker.returncode == 0, err
            created[f"worker-{n}"] = sum(entry.get("event") == "batch created" for entry in _json_lines(err))
        listed = httpx.get(f"{base}/batches", params={"limit": 100}, headers={"Authorization": "Bearer x"}).json()
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)

    ledger = PostgresLedger(ledger_url)
    try:
        rows = list(ledger.items(latest_only=True))
        assert len(rows) == 36 and {row.status for row in rows} == {"succeeded"}
        for row in rows:  # collected once: one move to succeeded per item
            assert [e["to_status"] for e in ledger.item_history(row.custom_id)].count("succeeded") == 1
        batches = ledger.batches()
        shards = ledger.shards()
        assert len(shards) == 6 and len(batches) == 6  # 36 items, 6 per shard
        assert len(listed["data"]) == 6  # the service's own count: no batch created twice
        assert len({b.shard for b in batches}) == 6
        store = open_s3_store(store_url, s3_server.env())
        for row in rows:
            assert row.output_uri is not None and row.output_uri.startswith(store_url + "/")
            assert hashlib.sha256(store.read(row.output_uri)).hexdigest() == row.sha256
        assert sum(created.values()) == 6, created  # each batch created by exactly one worker
    finally:
        ledger.close()
