#!/usr/bin/env python3
"""Benchmark: scale-out on this machine (issue 13, "Past one machine").

Two parts, on embedded PostgreSQL + SeaweedFS (S3) + a standalone emulator (no faults), all on this machine:

**Collection with 1, 2 and 4 workers.** Per measured run: a fresh ledger schema and store prefix; the job
(``jobs/catalog-nightly.toml``: the first ``--collect-items`` catalog items in shards of ``--shard-size``) is planned
and submitted in-process (``stop_after="submit"``, not timed), the emulator is waited on until every batch is
``completed`` (not timed); then N ``batchpipe worker --until-idle`` processes are started at once and timed until
the last exits: they poll, collect every output file (download, base64, sha256, S3 put, C2PA check, ledger) and
settle the run. Reported: wall seconds, items/s, the ratio of items/s to 1 worker's in the same round, and each
worker's peak RSS (``ru_maxrss`` of that process, ``os.wait4``). Rounds are interleaved (``bench_common``:
1, 2, 4, 4, 2, 1, ...). Worker start-up (interpreter, imports, queue schema check: about 1-2 s) is inside the
timing, as it is for a real worker; the machine has ``os.cpu_count()`` cores shared by every worker, the S3 server,
PostgreSQL and the emulator, so the ratio is bounded by the cores, not by the design.

**The PostgreSQL ledger at ``--items`` items** (default 200,000; ``--items 1000000`` for the 1M figure): one run of
that many item rows inserted as a build does (``insert_items``, 2,000 rows a transaction); the set-based move of
every item to ``submitted`` in batches of 1,000 (``transition_items`` with ``batch_id``, as ``_adopt_batch``
does); the per-item moves to ``succeeded`` with their result fields, 64 to a transaction, as the collector does,
over ``--collect-sample`` items; claims (``claim`` + ``release``, one round trip each) from one process; and 4
processes racing to claim the same 2,000 keys (every key must be won exactly once); then the paged reads
(:func:`_ledger_reads`: a batch's rows, a run's rows and its latest attempts, both exports, one item's history) once
a second run has retried every 10th item.

Prints one line per figure and ``FINAL bench=scale ...`` last (see ``scripts/bench_common.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # puts this checkout first on sys.path and PYTHONPATH

from batchpipe.devservers import new_schema_url, postgres_server, s3_server

WORKER_COUNTS = (1, 2, 4)


# -- part 1: collection with N workers ---------------------------------------------------------------------
def _job_copy(directory: Path, shard_size: int) -> Path:
    import re

    text = bc.NIGHTLY_SPEC.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^path = "[^"]*"', f'path = "{bc.CATALOG_CSV.resolve().as_posix()}"', text)
    text = re.sub(r"(?m)^max_requests_per_shard = \d+", f"max_requests_per_shard = {shard_size}", text)
    path = directory / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _plan_and_submit(job: Path, workdir: Path, items: int, base_url: str, ledger_url: str, store_url: str) -> None:
    """Plan and submit the run in this process (not timed)."""
    import asyncio

    from batchpipe.logs import configure_logging
    from batchpipe.runtime.settings import api_timing
    from batchpipe.runtime.wiring import execute_async, request_from_spec

    configure_logging(level="warning")

    request = request_from_spec(
        job_spec=job,
        manifest=None,
        job_name=None,
        workdir=workdir,
        limit=items,
        skip_invalid=False,
        timing=api_timing(local=True, poll_interval_s=0.2),
        stop_after="submit",
        trust="emulator",
    )
    request.ledger_url, request.store_url = ledger_url, store_url
    asyncio.run(execute_async(request, api_label=base_url, base_url=base_url, environ=os.environ, echo=lambda _: None))


def _wait_completed(base_url: str, batches: int, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        page = httpx.get(f"{base_url}/batches", params={"limit": 100}, headers={"Authorization": "Bearer b"}).json()
        data = page.get("data") or []
        if len(data) >= batches and all(b["status"] == "completed" and b.get("output_file_id") for b in data):
            return
        time.sleep(0.5)
    raise RuntimeError("the emulator did not complete the batches in time")


def _collect_round(
    workers: int, *, root: Path, job: Path, items: int, shards: int, base_url: str, server: str, s3: Any
) -> dict[str, Any]:
    """One measured run of ``workers`` workers (see the module docstring)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=root))
    ledger_url, store_url = new_schema_url(server), s3.new_prefix()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCHPIPE_"))}
    env.update(s3.env())
    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    try:
        _plan_and_submit(job, run_dir / "planner", items, base_url, ledger_url, store_url)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _wait_completed(base_url, shards)
    results: list[bc.ChildResult] = [None] * workers  # type: ignore[list-item]

    def one(n: int) -> None:
        results[n] = bc.run_subprocess(
            [
                sys.executable, "-m", "batchpipe", "--log-level", "warning", "worker", "--api", base_url,
                "--ledger", ledger_url, "--store", store_url, "--workdir", str(run_dir / f"w{n}"),
                "--name", f"w{n}", "--until-idle", "--poll-interval", "0.2", "--keeper-interval", "0.3",
            ],
            env=env,
            log=run_dir / f"w{n}.log",
        )  # fmt: skip

    began = time.perf_counter()
    threads = [threading.Thread(target=one, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if any(r.returncode != 0 for r in results):
        raise RuntimeError(f"a worker failed: see {run_dir}")
    from batchpipe.adapters.postgres_ledger import PostgresLedger

    ledger = PostgresLedger(ledger_url)
    try:
        succeeded = ledger.count_items().get("succeeded", 0)
    finally:
        ledger.close()
    if succeeded != items:
        raise RuntimeError(f"{succeeded} of {items} items succeeded: see {run_dir}")
    shutil.rmtree(run_dir, ignore_errors=True)
    # the emulator keeps its batches: delete nothing there; each round lists only its own through the ledger
    return {
        "wall_s": wall,
        "items_per_s": items / wall,
        "peak_rss_mb": max(r.peak_rss_mb for r in results),
        "cpu_s": sum(r.cpu_s for r in results),
    }


# -- part 2: the ledger at N items -------------------------------------------------------------------------
def _rows(run_id: str, start: int, stop: int) -> Iterator[dict[str, object]]:
    for i in range(start, stop):
        key = f"sku-{i:08d}"
        yield {
            "custom_id": f"bench:{key}:1",
            "job": "bench",
            "item_key": key,
            "attempt": 1,
            "run_id": run_id,
            "endpoint": "/v1/images/generations",
            "model": "gpt-image-2",
            "request_hash": f"{i:064x}",
            "body_json": '{"model":"gpt-image-2","prompt":"p"}',
            "metadata_json": "{}",
            "source": f"catalog.csv:{i + 2}",
            "status": "pending",
            "shard": f"{run_id}-{i // 1000:05d}",
        }


def _claim_racer(url: str, owner: str, keys: int, out: Any) -> None:
    from batchpipe.adapters.postgres_ledger import PostgresLedger

    ledger = PostgresLedger(url)
    try:
        won = sum(ledger.claim("race", f"k{i}", owner=owner, lease_s=600) for i in range(keys))
    finally:
        ledger.close()
    out.put(won)


def ledger_figures(server: str, items: int, sample: int, report: bc.Report) -> None:
    """Part 2 (see the module docstring); figures into ``report``."""
    from batchpipe.adapters.postgres_ledger import PostgresLedger
    from batchpipe.domain.items import ItemStatus

    report.add_loads([bc.machine_load()])
    url = new_schema_url(server)
    ledger = PostgresLedger(url, pool_size=2)
    try:
        run_id, _ = ledger.open_run("bench", "h", "emulator")
        began = time.perf_counter()
        for start in range(0, items, 2000):
            ledger.insert_items(list(_rows(run_id, start, min(items, start + 2000))))
        insert_s = time.perf_counter() - began
        ledger.finish_build(run_id, [])
        ids = [f"bench:sku-{i:08d}:1" for i in range(items)]
        began = time.perf_counter()
        for start in range(0, items, 1000):
            with ledger.transaction():
                ledger.transition_items(
                    ids[start : start + 1000], ItemStatus.SUBMITTED, fields={"batch_id": f"batch_{start // 1000}"}
                )
        submit_s = time.perf_counter() - began
        step = max(1, items // sample)
        picked = ids[::step][:sample]
        began = time.perf_counter()
        for start in range(0, len(picked), 64):
            with ledger.transaction():
                for custom_id in picked[start : start + 64]:
                    ledger.transition_items(
                        [custom_id],
                        ItemStatus.SUCCEEDED,
                        from_statuses=[ItemStatus.SUBMITTED],
                        fields={"sha256": "0" * 64, "bytes": 1_500_000, "output_uri": f"s3://b/{custom_id}.png"},
                        strict=False,
                    )
        collect_s = time.perf_counter() - began
        claims = 5000
        began = time.perf_counter()
        for i in range(claims):
            ledger.claim("output", f"batch_{i}", owner="w1", lease_s=600)
            ledger.release("output", f"batch_{i}", owner="w1")
        claim_s = time.perf_counter() - began
        reads = _ledger_reads(ledger, run_id, ids)
    finally:
        ledger.close()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    race_keys = 2000
    racers = [context.Process(target=_claim_racer, args=(url, f"w{n}", race_keys, queue)) for n in range(4)]
    began = time.perf_counter()
    for racer in racers:
        racer.start()
    wins = [queue.get(timeout=300) for _ in racers]
    for racer in racers:
        racer.join()
    race_s = time.perf_counter() - began
    report.add_loads([bc.machine_load()])
    report.value("ledger_items", items)
    print(f"ledger: {items} items inserted in {insert_s:.1f} s ({items / insert_s:,.0f} rows/s, 2,000 a transaction)")
    print(f"ledger: {items} items -> submitted in {submit_s:.1f} s ({items / submit_s:,.0f}/s, 1,000 a statement)")
    print(
        f"ledger: {len(picked)} items -> succeeded one by one in {collect_s:.1f} s "
        f"({len(picked) / collect_s:,.0f}/s, 64 a transaction, on a {items}-item table)"
    )
    print(f"ledger: {claims} claim+release pairs in {claim_s:.1f} s ({claims / claim_s:,.0f} pairs/s, one process)")
    print(
        f"ledger: 4 processes raced for {race_keys} keys: wins {wins} (sum {sum(wins)}, want {race_keys}) in "
        f"{race_s:.1f} s incl. process start"
    )
    report.value("insert_rows_per_s", round(items / insert_s))
    report.value("submit_transitions_per_s", round(items / submit_s))
    report.value("collect_transitions_per_s", round(len(picked) / collect_s))
    report.value("claim_release_pairs_per_s", round(claims / claim_s))
    report.value("claim_race_double_wins", sum(wins) - race_keys)
    for name, (seconds, rows) in reads.items():
        print(f"ledger: read {name}: {rows:,} rows in {seconds:.2f} s")
        report.value(f"read_{name}_s", round(seconds, 3))


def _ledger_reads(ledger: Any, run_id: str, ids: list[str]) -> dict[str, tuple[float, int]]:
    """The paged reads of the ledger, timed on the table the moves above left (one run; a second run retries every
    10th item, so each item's latest attempt is a real question): ``(seconds, rows)`` by name. A read whose pages
    sort the run, or walk the whole table, on every page shows here as time growing faster than its rows."""
    from batchpipe.domain.items import ItemStatus

    ledger.finish_run(run_id, "finished")
    retry_id, _ = ledger.open_run("bench", "h2", "emulator")
    retried = [
        {**row, "custom_id": f"{row['custom_id'][:-2]}:2", "attempt": 2, "run_id": retry_id}
        for start in range(0, len(ids), 20_000)
        for row in _rows(run_id, start, min(len(ids), start + 20_000))
        if int(str(row["item_key"])[4:]) % 10 == 0
    ]
    for start in range(0, len(retried), 2000):
        ledger.insert_items(retried[start : start + 2000])
    ledger.finish_build(retry_id, [])
    ledger.transition_items([str(r["custom_id"]) for r in retried], ItemStatus.SUBMITTED, fields={"batch_id": "retry"})
    ledger.finish_run(retry_id, "finished")

    def timed(read: Any) -> tuple[float, int]:
        began = time.perf_counter()
        rows = read()
        return time.perf_counter() - began, rows

    return {
        "batch_rows": timed(lambda: sum(1 for _ in ledger.items(batch_id="retry"))),
        "run_rows": timed(lambda: sum(1 for _ in ledger.items(run_id=run_id))),
        "run_latest_rows": timed(lambda: sum(1 for _ in ledger.items(run_id=run_id, latest_only=True))),
        "export_run": timed(lambda: sum(chunk.count("\n") for chunk in ledger.export_jsonl(run_id=run_id))),
        "export_all": timed(lambda: sum(chunk.count("\n") for chunk in ledger.export_jsonl())),
        "item_history": timed(lambda: len(ledger.item_history(ids[len(ids) // 2]))),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--collect-items", type=int, default=480, help="items per collection run")
    parser.add_argument("--shard-size", type=int, default=20, help="requests per shard (batches to share)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of 1, 2 and 4 workers")
    parser.add_argument("--items", type=int, default=200_000, help="ledger rows for the claim/transition rates")
    parser.add_argument("--collect-sample", type=int, default=20_000, help="items moved to succeeded one by one")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--skip-collect", action="store_true")
    parser.add_argument("--skip-ledger", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.collect_items, args.rounds, args.items, args.collect_sample = 120, 1, 20_000, 2_000
    report = bc.Report("scale")
    root = Path(tempfile.mkdtemp(prefix="batchpipe-bench-scale-"))
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(postgres_server(root / "xdg-runtime", echo=print))
            if not args.skip_collect:
                s3 = stack.enter_context(s3_server(root / "seaweedfs", echo=print))
                emulator = stack.enter_context(bc.StandaloneEmulator(root / "emulator"))
                base_url = emulator.base_url
                job = _job_copy(root, args.shard_size)
                shards = -(-args.collect_items // args.shard_size)
                contenders = {
                    f"w{n}": (
                        lambda r, n=n: _collect_round(
                            n, root=root, job=job, items=args.collect_items, shards=shards, base_url=base_url,
                            server=server, s3=s3,
                        )
                    )
                    for n in WORKER_COUNTS
                }  # fmt: skip

                def show(r: int, name: str, result: dict[str, Any]) -> None:
                    print(
                        f"round {r} {name}: {result['wall_s']:.1f} s, {result['items_per_s']:.1f} items/s, "
                        f"peak RSS {result['peak_rss_mb']:.0f} MB/worker, CPU {result['cpu_s']:.1f} s, "
                        f"load {result['load1']:.2f}",
                        flush=True,
                    )

                paired = bc.run_interleaved(contenders, args.rounds, show=show)
                report.add_loads(paired.loads)
                report.value("collect_items", args.collect_items)
                report.value("shards", shards)
                for n in WORKER_COUNTS:
                    report.figure(f"w{n}_items_per_s", paired.spread(f"w{n}", "items_per_s"), unit="items/s")
                    report.figure(f"w{n}_peak_rss_mb", paired.spread(f"w{n}", "peak_rss_mb"), unit="MB")
                for n in WORKER_COUNTS[1:]:
                    report.figure(f"w{n}_ratio", paired.ratio(f"w{n}", "w1", "items_per_s"), unit="x 1 worker")
            if not args.skip_ledger:
                ledger_figures(server, args.items, min(args.collect_sample, args.items), report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.final()
    return 0


if __name__ == "__main__":
    sys.exit(main())
