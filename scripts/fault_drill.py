#!/usr/bin/env python3
"""Fault drill: "never pay twice, never lose an item", checked under SIGKILL and a misbehaving service.

What it does:

1. Starts the **standalone** emulator (``batchpipe emulator serve``) as its own process, with faults on: a
   share of 429s and 500/503s on every route, downloads cut mid-file, the first batch expiring with partial
   results, rows dropped from both result files, ``completed`` batches showing ``output_file_id: null`` for a
   while (gotchas #3), shuffled output (gotchas #1); and (issue 11) batch creates that succeed but answer 500
   (ambiguous creates) while ``GET /v1/batches`` lags a couple of seconds behind creates, and result-file
   downloads that serve something that is not the file (an HTML or JSON error page with 200, a short body, a
   garbled line). Killing batchpipe never kills the emulator, so batches keep running server-side exactly as
   they would at OpenAI. batchpipe and the emulator run as ``python -m batchpipe`` with this checkout first on
   ``PYTHONPATH``, so the drill always tries the code next to it.
2. Writes a job spec copying ``jobs/catalog-nightly.toml`` (real Flipkart catalog, first N items) with small
   shards, then runs ``batchpipe run JOB --api URL --workdir W --poll-interval 0.1`` as a subprocess and
   SIGKILLs it after random (seeded) delays, many times, so kills land in build, upload, create, poll and
   collect. Then it runs the same command until it exits 0 or 1 with the run finished (bounded).
3. Checks, from the ledger, the output directory and the emulator's own ``GET /v1/batches`` pages:
   every manifest item has exactly one live attempt that is ``succeeded``, or failed for good (not retryable,
   with its reason, or after ``max_attempts``); no key was rendered successfully twice; every shard maps to
   exactly one batch (metadata ``batchpipe_shard``; the service's list is read once its lag has passed) and
   the service holds no batch the ledger does not know;
   one file per succeeded item whose sha256 matches the ledger, no other files, no ``.tmp`` leftovers.

Prints the kill log, problems found, and one summary line of ``name=value`` pairs. Exit status 0 when every
check holds, 1 otherwise. ``--help`` lists the flags (size, kills, seed, shard size...).

The core is :func:`run_drill` (``tests/test_fault_drill.py`` runs a small drill through it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx

__all__ = [
    "DrillOptions",
    "DrillReport",
    "KillRecord",
    "check_results",
    "emulator_fault_args",
    "expected_keys",
    "list_service_batches",
    "main",
    "run_drill",
    "standalone_emulator",
    "write_job",
]

REPO = Path(__file__).resolve().parents[1]
#: Metadata key batchpipe puts on every batch it creates (batchpipe.runtime.runner.META_SHARD).
META_SHARD = "batchpipe_shard"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class DrillOptions:
    """Parameters of one drill. Times in seconds.

    ``items``: manifest items (the first N of the Flipkart catalog). ``kills``: SIGKILLs to deliver before
    letting the run finish (fewer if the run finishes first). ``shard_size``: ``max_requests_per_shard``.
    ``kill_delay_s``: (low, high) of the uniform delay between a run's ``run`` log line and its kill;
    ``early_kill_share`` of the kills use ``early_kill_delay_s`` instead (build, upload, create) and
    ``startup_kill_share`` kill the process 0.1-0.8 s after it starts (imports, opening the ledger).
    ``finish_attempts``: runs allowed to finish after the kills (each bounded by ``run_timeout_s``).
    ``workdir``: where everything goes (a fresh temporary directory when None; kept afterwards).
    ``share_429`` / ``share_5xx``: emulator fault shares on every route. ``catalog``: the CSV manifest.
    ``ambiguous_creates`` (the first N) and ``ambiguous_create_share`` (a share of the rest): batch creates the
    emulator performs but answers 500 (``ambiguous_create_mode``: ``500``, ``504`` or ``drop``);
    ``list_lag_s``: seconds a new batch stays absent from ``GET /v1/batches``. ``bad_downloads``: the first N
    downloads of result files serve something that is not the file (every kind in turn,
    ``batchpipe/emulator/README.md``); 0 turns that off.
    """

    items: int = 600
    kills: int = 15
    seed: int = 7
    shard_size: int = 50
    kill_delay_s: tuple[float, float] = (0.3, 2.5)
    early_kill_delay_s: tuple[float, float] = (0.0, 0.3)
    early_kill_share: float = 0.25
    startup_kill_share: float = 0.1
    finish_attempts: int = 12
    run_timeout_s: float = 150.0
    workdir: Path | None = None
    share_429: float = 0.03
    share_5xx: float = 0.03
    ambiguous_creates: int = 1
    ambiguous_create_share: float = 0.15
    ambiguous_create_mode: str = "500"
    list_lag_s: float = 2.0
    bad_downloads: int = 3
    catalog: Path = REPO / "jobs" / "data" / "flipkart-products-20k.csv"
    job_template: Path = REPO / "jobs" / "catalog-nightly.toml"


@dataclass
class KillRecord:
    """One start of ``batchpipe run``: ``delay_s`` before the kill, ``phase`` where it landed (or how it ended),
    ``exit_code`` (``-9`` when killed)."""

    delay_s: float
    phase: str
    exit_code: int


@dataclass
class DrillReport:
    """What the drill measured. ``figures``: name → number, printed as the summary line. ``problems``: every
    broken invariant, one human sentence each (empty when the drill passed). ``final_status``: counts of the
    items' final states (``succeeded``, ``failed:<error_code>``...)."""

    figures: dict[str, float | int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    kills: list[KillRecord] = field(default_factory=list)
    final_status: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no invariant was broken."""
        return not self.problems

    def summary_line(self) -> str:
        """``drill_items=600 kills=15 shards=12 ... wall_s=84.2 ok=1``."""
        parts = [f"{k}={v}" for k, v in self.figures.items()]
        return " ".join([*parts, f"ok={int(self.ok)}"])


# -- processes ---------------------------------------------------------------------------------------------


def _file_of(uri: str) -> Path:
    """The local file a ledger's ``output_uri`` names (``file://`` URI, or a plain path in older ledgers)."""
    return Path(uri) if uri.startswith("/") else Path(url2pathname(urlsplit(uri).path))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batchpipe_cmd() -> list[str]:
    """How children run batchpipe: ``python -m batchpipe`` with this interpreter (the project venv); with
    :func:`_child_env`, the package imported is the one in this checkout, whichever checkout the venv was
    installed from (a git worktree shares its main checkout's venv)."""
    return [sys.executable, "-m", "batchpipe"]


def _child_env() -> dict[str, str]:
    """The environment for children: no OpenAI credentials or base URL (the drill never talks to OpenAI), and
    this checkout first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def emulator_fault_args(options: DrillOptions) -> list[str]:
    """The ``batchpipe emulator serve`` fault flags of the drill (see ``batchpipe/emulator/README.md``)."""
    return [
        "--seed", str(options.seed),
        "--fault-429", f"*={options.share_429}",
        "--fault-5xx", f"*={options.share_5xx}",
        "--cut-download-after-bytes", "100000",
        "--cut-download-share", "0.3",
        "--expire-after-lines", str(max(1, options.shard_size * 2 // 5)),
        "--expire-first-n", "1",
        "--drop-rows", "2",
        "--drop-rows-first-n", "3",
        "--null-output-s", "2",
        "--shuffle-output",
        "--ambiguous-create-first-n", str(options.ambiguous_creates),
        "--ambiguous-create-share", str(options.ambiguous_create_share),
        "--ambiguous-create-mode", options.ambiguous_create_mode,
        "--list-lag-s", str(options.list_lag_s),
        "--bad-download-first-n", str(options.bad_downloads),
    ]  # fmt: skip


@contextlib.contextmanager
def standalone_emulator(
    state_dir: Path, fault_args: Sequence[str], log_path: Path, *, log_level: str = "warning"
) -> Iterator[str]:
    """Run ``batchpipe emulator serve`` with ``fault_args`` on a free loopback port, output to ``log_path``;
    yields its API root ``http://127.0.0.1:PORT/v1`` once it answers; stops it (by pid) on exit.
    Raises ``RuntimeError`` if it does not start within 30 s."""
    port = _free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            *_batchpipe_cmd(), "--log-level", log_level, "emulator", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state_dir),
            *fault_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_child_env(),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the emulator exited with {proc.returncode}; see {log_path}")
            try:
                httpx.get(f"{base}/batches?limit=1", headers={"Authorization": "Bearer drill"}, timeout=2)
                break  # any HTTP answer (even an injected 429/5xx) means it is up
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not start; see {log_path}") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def write_job(directory: Path, options: DrillOptions) -> tuple[Path, str]:
    """A copy of the nightly job spec with the catalog's absolute path and small shards; returns (path, job)."""
    text = options.job_template.read_text(encoding="utf-8")
    text, n_path = re.subn(r'(?m)^path = "[^"]*"', f'path = "{options.catalog.resolve().as_posix()}"', text)
    text, n_size = re.subn(r"(?m)^max_requests_per_shard = \d+", f"max_requests_per_shard = {options.shard_size}", text)
    name = re.search(r'(?m)^name = "([^"]+)"', text)
    if n_path != 1 or n_size != 1 or name is None:
        raise RuntimeError(f"{options.job_template} no longer has the manifest path / shard size / name lines")
    path = directory / "drill-job.toml"
    path.write_text(text, encoding="utf-8")
    return path, name.group(1)


# -- where a kill landed --------------------------------------------------------------------------------
def _connect(ledger_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(ledger_path, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _phase(ledger_path: Path, log_text: str) -> str:
    """Where a killed run was, from its log and the ledger it left: startup, build, upload, create, submit,
    poll, collect, follow-up or done."""
    if '"event":"run"' not in log_text:
        return "startup"
    if '"event":"built"' not in log_text and "progress: built" not in log_text and not ledger_path.exists():
        return "build"
    with contextlib.closing(_connect(ledger_path)) as conn:
        if not conn.execute("SELECT 1 FROM items LIMIT 1").fetchone():
            return "build"
        shard_states = {r[0] for r in conn.execute("SELECT DISTINCT status FROM shards")}
        batches = conn.execute("SELECT status, reconciled, output_done, error_done FROM batches").fetchall()
    if "uploading" in shard_states:
        return "upload"
    if "creating" in shard_states or "indeterminate" in shard_states:
        return "create"
    if any(b["status"] in TERMINAL and not b["reconciled"] for b in batches):
        return "collect"
    if any(b["status"] not in TERMINAL for b in batches):
        return "poll"
    if shard_states & {"built", "uploaded"}:
        return "submit"
    return "follow-up" if "follow-up attempts" in log_text else "done"


#: Log lines a kill can be timed from (``batchpipe --log-json``): the run opened; a batch was created; a batch's
#: status was polled (the run got past submitting and reconciling, which a lagging list can make take seconds).
ANCHORS: dict[str, bytes] = {
    "run": b'"event":"run"',
    "created": b'"event":"batch created"',
    "polled": b'"event":"batch status"',
}
#: Seconds after the ``run`` line an anchor that has not appeared stops being waited for (the kill then counts
#: from that moment): ``polled`` waits out a reconciliation (up to ``list_lag_s``, 10 s for a local API).
ANCHOR_WAIT_S: dict[str, float] = {"polled": 15.0}


def _creating(ledger_path: Path) -> bool:
    """True while a shard's batch create is in flight (ledger intent ``creating``); read-only, never blocks."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=0)) as conn:
            return conn.execute("SELECT 1 FROM shards WHERE status = 'creating' LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False


def _run_once(
    cmd: Sequence[str],
    *,
    kill: tuple[str, float] | None,
    timeout_s: float,
    log_path: Path,
    ledger_path: Path,
) -> KillRecord:
    """Start ``batchpipe run`` and SIGKILL it per ``kill`` = ``(anchor, delay_s)``: ``delay_s`` after the start
    (anchor ``"start"``), after the first log line of an :data:`ANCHORS` event (so import time does not
    matter), or after the ledger shows a batch create in flight (anchor ``"creating"``); an anchor that has
    not appeared 2 s (:data:`ANCHOR_WAIT_S` for some) after the ``run`` line counts from then. ``kill`` None lets
    the run end by itself (SIGKILL after ``timeout_s``: phase ``hung``)."""
    started = time.monotonic()
    deadline: float | None = started + kill[1] if kill and kill[0] == "start" else None
    run_seen: float | None = None
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        while proc.poll() is None:
            now = time.monotonic()
            if kill and deadline is None:
                text = log_path.read_bytes()
                if run_seen is None and ANCHORS["run"] in text:
                    run_seen = now
                hit = _creating(ledger_path) if kill[0] == "creating" else ANCHORS[kill[0]] in text
                if hit or (run_seen is not None and now - run_seen > ANCHOR_WAIT_S.get(kill[0], 2.0)):
                    deadline = now + kill[1]
            if (deadline is not None and now >= deadline) or now - started > timeout_s:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                text_s = log_path.read_text(encoding="utf-8", errors="replace")
                phase = _phase(ledger_path, text_s) if kill else "hung"
                return KillRecord(round(now - started, 2), phase, -9)
            time.sleep(0.003 if kill and kill[0] != "start" else 0.02)
    return KillRecord(round(time.monotonic() - started, 2), f"exited {proc.returncode}", int(proc.returncode))


def _kill_plan(index: int, rng: random.Random, options: DrillOptions) -> tuple[str, float]:
    """Kill number ``index``: the first lands in the build (just after ``run``), the second just after a
    batch create (the next shard's upload), the third while a create is in flight; then at random:
    start-up (``startup_kill_share``), early (``early_kill_share``: after ``run`` or a create within
    ``early_kill_delay_s``, or in a create) or late (poll, collect: ``kill_delay_s`` after ``run``, or after the
    first poll, since after a kill a run may spend seconds reconciling creates against a lagging list)."""
    if index == 0:
        return "run", round(rng.uniform(0.0, 0.04), 3)
    if index == 1:
        return "created", round(rng.uniform(0.0, 0.015), 3)
    if index == 2:
        return "creating", round(rng.uniform(0.0, 0.004), 4)
    draw = rng.random()
    if draw < options.startup_kill_share:
        return "start", round(rng.uniform(0.1, 0.8), 3)
    if draw < options.startup_kill_share + options.early_kill_share:
        anchor = rng.choice(["run", "created", "creating"])
        return anchor, round(
            rng.uniform(0.0, 0.004) if anchor == "creating" else rng.uniform(*options.early_kill_delay_s), 4
        )
    return rng.choice(["run", "polled"]), round(rng.uniform(*options.kill_delay_s), 3)


# -- the service's view ------------------------------------------------------------------------------------
def list_service_batches(base_url: str, *, tries: int = 60, route: str = "/batches") -> list[dict[str, Any]]:
    """Every batch the service holds, walking ``GET /v1/batches`` pages (SPEC ``listBatches``: ``after``,
    ``limit`` <= 100, ``has_more``); injected 429/5xx answers are retried (``tries`` per page).
    ``route="/files"`` lists files the same way (SPEC ``listFiles``)."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer drill"}, timeout=30) as http:
        while True:
            params: dict[str, str | int] = {"limit": 100, **({"after": after} if after else {})}
            for _ in range(tries):
                response = http.get(route, params=params)
                if response.status_code < 400:
                    break
                time.sleep(0.2)
            response.raise_for_status()
            page = response.json()
            data = page.get("data") or []
            out.extend(data)
            if not page.get("has_more") or not data:
                return out
            after = page.get("last_id") or data[-1]["id"]


# -- the checks ------------------------------------------------------------------------------------------
def expected_keys(job_spec: Path, workdir: Path, items: int) -> list[str]:
    """The keys of the first ``items`` manifest items, as batchpipe derives them (duplicates suffixed)."""
    from batchpipe.domain.items import Item
    from batchpipe.runtime.wiring import request_from_spec

    request = request_from_spec(
        job_spec=job_spec, manifest=None, job_name=None, workdir=workdir, limit=items, skip_invalid=False
    )
    keys: list[str] = []
    for entry in request.items():
        if isinstance(entry, Item):
            if len(keys) >= items:
                break
            keys.append(entry.key)
    return keys


def check_results(
    *,
    ledger_path: Path,
    job: str,
    keys: Sequence[str],
    service_batches: Sequence[dict[str, Any]],
    max_attempts: int,
    report: DrillReport,
) -> None:
    """Check the invariants and put figures and problems into ``report`` (see the module docstring)."""
    problems = report.problems
    with contextlib.closing(_connect(ledger_path)) as conn:
        rows = [dict(r) for r in conn.execute("SELECT * FROM items WHERE job = ?", (job,))]
        shards = [dict(r) for r in conn.execute("SELECT * FROM shards WHERE job = ?", (job,))]
        runs = [dict(r) for r in conn.execute("SELECT * FROM runs WHERE job = ? ORDER BY started_at", (job,))]
        succeeded_events = [
            r[0] for r in conn.execute("SELECT entity_id FROM events WHERE entity = 'item' AND to_status = 'succeeded'")
        ]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault(row["item_key"], []).append(row)
    wanted = set(keys)
    if len(wanted) != len(keys):
        problems.append(f"the manifest's keys are not unique ({len(keys) - len(wanted)} repeats)")

    # one live attempt per key, attempts numbered 1..k, custom_ids unique
    duplicates = 0
    lost = 0
    final: Counter[str] = Counter()
    live_rows: list[dict[str, Any]] = []
    for key in keys:
        attempts = sorted(by_key.get(key, []), key=lambda r: int(r["attempt"]))
        if not attempts:
            lost += 1
            problems.append(f"item {key!r} is not in the ledger")
            continue
        numbers = [int(r["attempt"]) for r in attempts]
        live = [r for r in attempts if r["status"] != "superseded"]
        if numbers != list(range(1, len(numbers) + 1)) or len(live) != 1 or live[0] is not attempts[-1]:
            duplicates += 1
            problems.append(f"item {key!r}: attempts {numbers}, {len(live)} live (want exactly the last one)")
            if not live:
                lost += 1
                continue
        row = live[-1]
        live_rows.append(row)
        status, code = row["status"], row["error_code"]
        if status == "succeeded":
            final["succeeded"] += 1
        elif status in ("failed", "expired", "missing", "cancelled", "invalid") and code and row["error_message"]:
            if row["retryable"] and int(row["attempt"]) < max_attempts:
                lost += 1
                problems.append(
                    f"item {key!r} ended {status} ({code}), retryable, after only {row['attempt']} attempt(s)"
                )
            final[f"{status}:{code}"] += 1
        else:
            lost += 1
            final[f"unsettled:{status}"] += 1
            problems.append(f"item {key!r} ended {status!r} without a final reason")
    extra_keys = set(by_key) - wanted
    if extra_keys:
        problems.append(f"{len(extra_keys)} ledger key(s) not in the manifest, e.g. {sorted(extra_keys)[:3]}")
    custom_ids = [r["custom_id"] for r in rows]
    if len(custom_ids) != len(set(custom_ids)):
        duplicates += len(custom_ids) - len(set(custom_ids))
        problems.append("custom_ids repeat in the ledger")

    # never paid twice: no key succeeded in two attempts
    key_of = {r["custom_id"]: r["item_key"] for r in rows}
    wins = Counter(key_of[c] for c in succeeded_events if c in key_of)
    paid_twice = sum(1 for n in wins.values() if n > 1)
    if paid_twice:
        problems.append(f"{paid_twice} item(s) were rendered successfully more than once")

    # one batch per shard, and no batch the ledger does not know
    per_shard: dict[str, list[str]] = {}
    orphans = 0
    shard_names = {s["name"] for s in shards}
    for batch in service_batches:
        name = (batch.get("metadata") or {}).get(META_SHARD)
        if name in shard_names:
            per_shard.setdefault(str(name), []).append(str(batch["id"]))
        else:
            orphans += 1
            problems.append(f"service batch {batch['id']} (shard {name!r}) is not in the ledger")
    for shard in shards:
        ids = per_shard.get(shard["name"], [])
        if len(ids) != 1:
            problems.append(f"shard {shard['name']} has {len(ids)} batches at the service: {ids}")
        elif shard["batch_id"] != ids[0]:
            problems.append(f"shard {shard['name']} records batch {shard['batch_id']}, the service has {ids[0]}")
        if shard["status"] != "done":
            problems.append(f"shard {shard['name']} ended {shard['status']!r}, not done")
    shard_dupes = sum(1 for ids in per_shard.values() if len(ids) > 1)
    # requests the service was asked to run == attempts in the ledger == lines in the shards
    requests_sent = sum(int((b.get("request_counts") or {}).get("total") or 0) for b in service_batches)
    shard_lines = sum(int(s["requests"]) for s in shards)
    if not requests_sent == shard_lines == len(rows):
        problems.append(
            f"the service ran {requests_sent} requests, the shards hold {shard_lines} lines, the ledger "
            f"{len(rows)} attempts (all three must agree)"
        )

    # files: exactly one per succeeded item, bytes matching the ledger; nothing else, no temporaries
    out_dirs = {Path(str(r["output_dir"])) for r in runs if r.get("output_dir")}
    files = [p for d in out_dirs if d.exists() for p in d.rglob("*") if p.is_file()]
    tmp_files = [p for p in files if ".tmp" in p.name]
    expected = {_file_of(str(r["output_uri"])).resolve(): r for r in live_rows if r["status"] == "succeeded"}
    files_ok = 0
    for path, row in expected.items():
        if not path.is_file():
            problems.append(f"item {row['item_key']!r}: {path} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
            problems.append(f"item {row['item_key']!r}: {path} does not match the ledger's sha256")
        else:
            files_ok += 1
    extra_files = [p for p in files if p.resolve() not in expected and p not in tmp_files]
    for path in tmp_files:
        problems.append(f"temporary file left behind: {path}")
    for path in extra_files[:20]:
        problems.append(f"file not accounted for by the ledger: {path}")
    if not runs or runs[-1]["status"] != "finished":
        problems.append(f"the last run is {runs[-1]['status'] if runs else 'absent'!r}, not finished")

    report.final_status = dict(sorted(final.items()))
    report.figures.update(
        shards=len(shards),
        batches_created=len(service_batches),
        requests_sent=requests_sent,
        orphan_batches=orphans,
        shards_with_2_batches=shard_dupes,
        duplicates=duplicates,
        paid_twice=paid_twice,
        lost=lost,
        succeeded=final["succeeded"],
        failed_final=sum(n for k, n in final.items() if k != "succeeded" and not k.startswith("unsettled")),
        retried=sum(1 for key in keys if len(by_key.get(key, [])) > 1),
        files_ok=files_ok,
        extra_files=len(extra_files),
        tmp_files=len(tmp_files),
    )


# -- the drill -------------------------------------------------------------------------------------------
def run_drill(options: DrillOptions, *, echo: Any = print) -> DrillReport:
    """Run the drill; returns a :class:`DrillReport` (never raises for a broken invariant, only for a drill
    that cannot run: the emulator does not start, the job template changed shape)."""
    began = time.monotonic()
    root = options.workdir or Path(tempfile.mkdtemp(prefix="batchpipe-drill-"))
    root.mkdir(parents=True, exist_ok=True)
    workdir = root / "work"
    ledger_path = workdir / "ledger.sqlite"
    job_spec, job = write_job(root, options)
    rng = random.Random(options.seed)
    report = DrillReport()
    fault_args = emulator_fault_args(options)
    with standalone_emulator(root / "emulator-state", fault_args, root / "emulator.log") as base_url:
        cmd = [
            *_batchpipe_cmd(), "--log-json", "--log-level", "info", "run", str(job_spec),
            "--api", base_url, "--workdir", str(workdir), "--poll-interval", "0.1", "--limit", str(options.items),
        ]  # fmt: skip
        finished = False
        starts = 0
        while sum(1 for k in report.kills if k.exit_code == -9) < options.kills:
            plan = _kill_plan(len(report.kills), rng, options)
            record = _run_once(
                cmd,
                kill=plan,
                timeout_s=options.run_timeout_s,
                log_path=root / f"run-{starts:02d}.log",
                ledger_path=ledger_path,
            )
            starts += 1
            report.kills.append(record)
            how = f"SIGKILL {plan[1]} s after {plan[0]} ({record.delay_s} s) in {record.phase}"
            echo(f"start {starts:2d}: {how if record.exit_code == -9 else record.phase}")
            if record.exit_code in (0, 1):
                finished = True
                break
        for _ in range(options.finish_attempts):
            if finished:
                break
            record = _run_once(
                cmd,
                kill=None,
                timeout_s=options.run_timeout_s,
                log_path=root / f"run-{starts:02d}.log",
                ledger_path=ledger_path,
            )
            starts += 1
            report.kills.append(record)
            echo(f"start {starts:2d}: to the end: {record.phase}")
            finished = record.exit_code in (0, 1)
        if not finished:
            report.problems.append(f"the run did not finish in {options.finish_attempts} attempt(s) after the kills")
        time.sleep(options.list_lag_s + 0.5)  # the list is eventually consistent: read it once the lag passed
        service_batches = list_service_batches(base_url)
        service_files = list_service_batches(base_url, route="/files")
    keys = expected_keys(job_spec, workdir, options.items)
    if len(keys) != options.items:
        report.problems.append(f"the catalog gave {len(keys)} items, not {options.items}")
    kills = [k for k in report.kills if k.exit_code == -9]
    phases = Counter(k.phase for k in kills)
    report.figures.update(
        drill_items=len(keys),
        kills=len(kills),
        starts=len(report.kills),
        stopped_exit3=sum(1 for k in report.kills if k.exit_code == 3),
    )
    try:
        check_results(
            ledger_path=ledger_path,
            job=job,
            keys=keys,
            service_batches=service_batches,
            max_attempts=_max_attempts(job_spec),
            report=report,
        )
    except sqlite3.Error as exc:
        report.problems.append(f"cannot read the ledger at {ledger_path}: {exc}")
    # not an invariant (files expire), but gotchas #6: inputs and results are deleted once collected
    report.figures["service_files_left"] = len(service_files)
    # the faults of issue 11, as the emulator logged them (warning level) and as the ledger settled them
    emulator_log = (root / "emulator.log").read_text(encoding="utf-8", errors="replace")
    report.figures["ambiguous_creates"] = emulator_log.count("emulator.fault.ambiguous_create")
    report.figures["bad_downloads"] = emulator_log.count("emulator.fault.bad_download")
    report.figures["adopted_batches"] = _adopted_batches(ledger_path)
    # an unreadable download is not missing rows: the ledger may declare missing only rows the service dropped
    dropped = sum(
        int(json.loads(line).get("count", 0))
        for line in emulator_log.splitlines()
        if "emulator.fault.rows_dropped" in line and line.startswith("{")
    )
    declared = _declared_missing(ledger_path)
    report.figures["rows_dropped"], report.figures["declared_missing"] = dropped, declared
    if declared > dropped:
        report.problems.append(
            f"the ledger declared {declared} row(s) missing, the service dropped only {dropped}: an unreadable "
            "download was taken for missing rows"
        )
    report.figures["wall_s"] = round(time.monotonic() - began, 1)
    report.figures = {"drill_items": report.figures.pop("drill_items"), **report.figures}
    echo("kills by phase: " + ", ".join(f"{p} {n}" for p, n in sorted(phases.items())))
    echo("final states: " + ", ".join(f"{s} {n}" for s, n in report.final_status.items()))
    echo(f"work directory: {root}")
    return report


def _adopted_batches(ledger_path: Path) -> int:
    """How many times a run adopted a batch it had not seen created (ledger events of shards noted
    ``adopted existing batch``: after an ambiguous create or a kill during one); 0 without a ledger."""
    if not ledger_path.exists():
        return 0
    with contextlib.closing(_connect(ledger_path)) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM events WHERE entity = 'shard' AND detail LIKE '%adopted existing batch%'"
        ).fetchone()
    return int(row[0])


def _declared_missing(ledger_path: Path) -> int:
    """How many item attempts the ledger ever moved to ``missing`` (in neither result file); 0 without a ledger."""
    if not ledger_path.exists():
        return 0
    with contextlib.closing(_connect(ledger_path)) as conn:
        row = conn.execute(
            "SELECT COUNT(DISTINCT entity_id) FROM events WHERE entity = 'item' AND to_status = 'missing'"
        ).fetchone()
    return int(row[0])


def _max_attempts(job_spec: Path) -> int:
    match = re.search(r"(?m)^max_attempts = (\d+)", job_spec.read_text(encoding="utf-8"))
    return int(match.group(1)) if match else 3


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the drill, print problems and the summary line; 0 when every check held."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=600, help="manifest items (first N of the catalog)")
    parser.add_argument("--kills", type=int, default=15, help="SIGKILLs before letting the run finish")
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill delays and the emulator's faults")
    parser.add_argument("--shard-size", type=int, default=50, help="max_requests_per_shard")
    parser.add_argument("--max-delay", type=float, default=2.5, help="longest delay before a late kill (s)")
    parser.add_argument("--share-429", type=float, default=0.03)
    parser.add_argument("--share-5xx", type=float, default=0.03)
    parser.add_argument(
        "--ambiguous-creates", type=int, default=1, help="the first N batch creates succeed but answer 500"
    )
    parser.add_argument(
        "--ambiguous-create-share", type=float, default=0.15, help="...and this share of the other creates"
    )
    parser.add_argument("--ambiguous-create-mode", choices=("500", "504", "drop"), default="500")
    parser.add_argument("--list-lag-s", type=float, default=2.0, help="GET /v1/batches lags creates by this (s)")
    parser.add_argument(
        "--bad-downloads", type=int, default=3, help="the first N result downloads are unreadable (0: off)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    options = DrillOptions(
        items=args.items,
        kills=args.kills,
        seed=args.seed,
        shard_size=args.shard_size,
        kill_delay_s=(min(0.3, args.max_delay), args.max_delay),
        share_429=args.share_429,
        share_5xx=args.share_5xx,
        ambiguous_creates=args.ambiguous_creates,
        ambiguous_create_share=args.ambiguous_create_share,
        ambiguous_create_mode=args.ambiguous_create_mode,
        list_lag_s=args.list_lag_s,
        bad_downloads=args.bad_downloads,
        workdir=args.workdir,
    )
    report = run_drill(options)
    for problem in report.problems[:50]:
        print(f"PROBLEM: {problem}")
    if len(report.problems) > 50:
        print(f"... and {len(report.problems) - 50} more problems")
    print(report.summary_line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
