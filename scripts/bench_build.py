"""Benchmark: building Batch API input shards for a big catalog (issue "Catalog-scale speed and flat memory").

Input: the 20k Flipkart catalog repeated to N rows (default 1,000,000) with distinct keys (``pid`` becomes
``<pid>-<row number>``), written to a temporary CSV, and a job spec copied from ``jobs/catalog-nightly.toml``
pointing at it (``--shard-requests`` lines per shard, default 50,000, the Batch API limit).

Contenders, each in a fresh child process (its own peak RSS), on the same CSV, in ``--rounds`` interleaved
rounds (default 3; ``bench_common.run_interleaved``: orjson, run, build, then build, run, orjson, ...):

- ``run``: the build phase of ``batchpipe run`` as users run it, **ledger writes included**:
  ``wiring.run_job(..., api_label="emulator", stop_after="build")`` (the run's stop-after-build hook,
  ``RunOptions.stop_after``): validation, shards, ledger rows in chunks, ``finish_build``; stops before any
  upload. Its time includes the embedded emulator's start (under a second: it matters only at quick sizes);
- ``build``: the shard path alone, no ledger: ``JobSpec.load`` → ``validate.make_items`` (every row checked)
  → ``build.ShardBuilder.add(make_custom_id(job, key, 1), item)`` → ``close()`` (fsync + rename per shard);
  kept because another issue cites its figure;
- ``orjson``: a bare loop: ``csv.DictReader``, the same prompt and body, ``orjson.dumps`` of the same
  ``{custom_id, method, url, body}`` lines, written to files of the same size, no validation, no fsync;
- ``floor`` (with ``--floor``, not by default: 40-50 s a round at 1M, and as much again for ``floor_seq``): the bare
  loop plus each request's ledger row as plain ``sqlite3`` inserts into a ledger made by ``SqliteLedger``'s schema
  (:func:`ledger_floor_child`).
  ``ledger_floor_vs_orjson`` (no target) is the most the build phase of ``run`` could reach while it keeps a row
  per request in this schema: when it is below 0.35, that target needs another schema, not faster code. It moves
  only with the schema or the commit grouping, so ``make bench`` leaves it out; run it after changing either.
  ``--floor`` also runs ``floor_seq``: the same inserts with sequential custom_ids in the ledger rows
  (``ledger_floor_seq_vs_orjson``): how much of the floor is the random inserts into the ``custom_id`` index.

Then the nightly re-run with nothing changed (unless ``--skip-run``): the last ``run`` round's ledger is made to
look collected (every item ``succeeded``, the run finished), and in ``--rounds`` interleaved rounds:

- ``read``: the manifest alone (``manifest.iter_manifest`` over every row: what any run must at least do);
- ``rerun``: ``wiring.run_job`` again to the end, as users run it nightly: every row read and validated, every
  item found already succeeded with the same request, nothing sent (the script fails unless all N are skipped).

Every output is hashed; the script fails if any differs from the bare loop's (same lines, same bytes).
Ratios are per round (items/s of the contender / items/s of the bare loop of that round), printed as
min / median / max with the 1-minute load. Targets (medians; peak RSS on the max): ``run`` >= 0.35x the bare
loop at 1,000,000 items and <= 300 MB; ``build`` >= 0.5x and <= 300 MB; the no-change re-run within 2x the
time of reading the manifest alone (``rerun_vs_read`` <= 2) and <= 300 MB. FINAL line::

    FINAL bench=build run_build_vs_orjson=<min/median/max> run_build_vs_orjson_met=met|missed ...
    build_vs_orjson=<min/median/max> ... load1=<min/median/max> cores=<n>

``--stages`` also times the first two stages of the build alone, each in its own child on the same CSV:
``read`` is ``manifest.iter_manifest`` over every row; ``validate`` is ``validate.make_items`` over every row
(reading included), no shards. Their wall and CPU seconds join the FINAL line (``read_s``, ``read_cpu_s``,
``validate_s``, ``validate_cpu_s``; CPU seconds are steadier on a busy machine). A speed trick in the
reader or the validator is kept only if it saves
10% or more of its stage's seconds (compare runs as interleaved pairs A, B, B, A).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    CATALOG_CSV,
    NIGHTLY_SPEC,
    Report,
    Target,
    catalog_rows,
    nightly_prompt,
    run_child,
    run_interleaved,
)

ENDPOINT = "/v1/images/generations"


def write_catalog(n: int, path: Path) -> int:
    """The catalog cycled to ``n`` rows with unique pids (``<pid>-<row>``); returns the rows written."""
    rows = list(catalog_rows(CATALOG_CSV))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["pid"] = f"{row['pid']}-{i}"
            writer.writerow(row)
    return n


def write_spec(csv_path: Path, spec_path: Path, shard_requests: int) -> None:
    """``jobs/catalog-nightly.toml`` with the manifest path and ``max_requests_per_shard`` replaced."""
    text = NIGHTLY_SPEC.read_text(encoding="utf-8")
    text, n_path = re.subn(r'(?m)^path = "[^"]*"', f'path = "{csv_path.as_posix()}"', text, count=1)
    text, n_max = re.subn(
        r"(?m)^max_requests_per_shard = \d+", f"max_requests_per_shard = {shard_requests}", text, count=1
    )
    if not (n_path and n_max):
        raise SystemExit(f"{NIGHTLY_SPEC} changed shape: cannot set the manifest path / shard size")
    spec_path.write_text(text, encoding="utf-8")


def _hash_dir(folder: Path) -> tuple[str, int, int]:
    """sha256 over the concatenated files (name order), total bytes, file count."""
    digest = hashlib.sha256()
    total = 0
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                total += len(chunk)
    return digest.hexdigest(), total, len(files)


def batchpipe_child(spec_path: str, out_dir: str) -> dict[str, Any]:
    """The shard path without the ledger: JobSpec + make_items + ShardBuilder + make_custom_id; timed from
    spec load to close."""
    import asyncio
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from batchpipe.domain.items import Item, make_custom_id
    from batchpipe.input.jobspec import JobSpec
    from batchpipe.input.validate import make_items
    from batchpipe.stages.shard import ShardBuilder

    async def build() -> tuple[int, int, int]:
        spec = JobSpec.load(Path(spec_path), workdir=Path(out_dir))
        items = problems = 0
        builder = ShardBuilder(
            Path(out_dir) / "shards",
            prefix="bench",
            max_requests=spec.run.max_requests_per_shard,
            max_bytes=spec.run.max_shard_bytes,
        )
        async with builder:
            for entry in make_items(spec):
                if isinstance(entry, Item):
                    await builder.add(make_custom_id(spec.name, entry.key, 1), entry)
                    items += 1
                else:
                    problems += 1
        shards = await builder.close()
        return items, problems, len(shards)

    began = time.perf_counter()
    items, problems, shards = asyncio.run(build())
    elapsed = time.perf_counter() - began
    digest, total, _files = _hash_dir(Path(out_dir) / "shards")
    return {
        "elapsed_s": elapsed,
        "items": items,
        "problems": problems,
        "shards": shards,
        "sha256": digest,
        "bytes": total,
    }


def stage_child(spec_path: str, out_dir: str, stage: str) -> dict[str, Any]:
    """One stage alone, timed from spec load to the last row: ``read`` (iter_manifest) or ``validate``
    (make_items, reading included); returns ``elapsed_s`` (wall seconds), ``cpu_s`` (this process's CPU
    seconds: steadier than wall time on a busy machine), ``items`` (rows read or items made) and ``problems``."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from batchpipe.domain.items import Item
    from batchpipe.input.jobspec import JobSpec
    from batchpipe.input.manifest import ManifestRow, iter_manifest
    from batchpipe.input.validate import make_items

    began, began_cpu = time.perf_counter(), time.process_time()
    spec = JobSpec.load(Path(spec_path), workdir=Path(out_dir))
    items = problems = 0
    if stage == "read":
        for row in iter_manifest(spec.manifest_path, fmt=spec.manifest_format, max_line_bytes=spec.max_line_bytes):
            if isinstance(row, ManifestRow):
                items += 1
            else:
                problems += 1
    else:
        for entry in make_items(spec):
            if isinstance(entry, Item):
                items += 1
            else:
                problems += 1
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    return {"elapsed_s": elapsed, "cpu_s": cpu, "items": items, "problems": problems}


def _timed_run_job(spec_path: str, work: Path, echo: Any, stop_after: str | None) -> tuple[float, int]:
    """``wiring.run_job`` of the job spec on the embedded emulator in ``work`` (logging at warning level):
    ``(seconds from the call to its return, exit code)``."""
    import logging
    import os

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from batchpipe.runtime.wiring import run_job

    began = time.perf_counter()
    code = run_job(
        job_spec=Path(spec_path),
        manifest=None,
        job_name=None,
        api_label="emulator",
        base_url=None,
        environ=dict(os.environ),
        workdir=work,
        echo=echo,
        stop_after=stop_after,
    )
    return time.perf_counter() - began, code


def run_build_child(spec_path: str, out_dir: str) -> dict[str, Any]:
    """The build phase of ``batchpipe run`` as users run it, ledger writes included: ``wiring.run_job`` on the
    embedded emulator with the run's ``stop_after="build"`` hook (``RunOptions.stop_after``), so it validates,
    writes the shards and the ledger rows, finishes the build and stops before any upload. Timed from the
    call to its return (the embedded emulator's start, well under a second, is included)."""
    work = Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    elapsed, code = _timed_run_job(spec_path, work, lambda _line: None, "build")
    shards = work / "shards"
    digest, total, files = _hash_dir(shards)
    lines = 0
    for path in sorted(shards.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            with open(path, "rb") as fh:
                lines += sum(chunk.count(b"\n") for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""))
    return {"elapsed_s": elapsed, "items": lines, "exit": code, "shards": files, "sha256": digest, "bytes": total}


def mark_collected(work: Path) -> int:
    """Make the ledger in ``work`` look as the nightly run leaves it once every image is collected: its items
    ``succeeded`` and its runs finished (a build-only run collects nothing; what a re-run checks is the status
    and the request hash). Returns the items marked."""
    import sqlite3

    db = sqlite3.connect(work / "ledger.sqlite")
    try:
        with db:
            marked = db.execute("UPDATE items SET status = 'succeeded' WHERE status = 'pending'").rowcount
            db.execute("UPDATE runs SET status = 'finished', finished_at = started_at WHERE status = 'running'")
    finally:
        db.close()
    return marked


def rerun_child(spec_path: str, work_dir: str) -> dict[str, Any]:
    """The nightly re-run with nothing changed, as users run it: ``wiring.run_job`` on the embedded emulator over
    a ledger whose items all succeeded (:func:`mark_collected`), to the end of the run. It reads the manifest,
    validates every row, finds every item already succeeded with the same request, sends nothing and finishes.
    Returns ``elapsed_s``, ``skipped`` (from the cost guard's line) and ``exit``."""
    lines: list[str] = []
    elapsed, code = _timed_run_job(spec_path, Path(work_dir), lines.append, None)
    found = [re.search(r"\((\d+) already succeeded", line) for line in lines]
    skipped = next((int(m.group(1)) for m in found if m), 0)
    return {"elapsed_s": elapsed, "skipped": skipped, "exit": code}


def orjson_child(csv_path: str, job: str, shard_requests: int, out_dir: str) -> dict[str, Any]:
    """The bare loop: csv + the same body + orjson.dumps + buffered writes; no validation, no fsync."""
    import orjson

    from batchpipe.domain.items import make_custom_id

    shards = Path(out_dir) / "shards"
    shards.mkdir(parents=True)
    began = time.perf_counter()
    items = 0
    index = 0
    out: BinaryIO | None = None
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if out is None or items % shard_requests == 0:
                if out is not None:
                    out.close()
                out = open(shards / f"bench-{index:05d}-gen.jsonl", "wb")  # noqa: SIM115 - closed on rollover
                index += 1
            body = {
                "model": "gpt-image-2",
                "prompt": " ".join(nightly_prompt(row).split()),
                "size": "1024x1024",
                "quality": "low",
                "output_format": "png",
                "n": 1,
            }
            custom_id = make_custom_id(job, row["pid"].strip(), 1)
            out.write(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}))
            out.write(b"\n")
            items += 1
    if out is not None:
        out.close()
    elapsed = time.perf_counter() - began
    digest, total, files = _hash_dir(shards)
    return {"elapsed_s": elapsed, "items": items, "shards": files, "sha256": digest, "bytes": total}


def ledger_floor_child(
    csv_path: str, job: str, shard_requests: int, out_dir: str, ids: str = "hashed"
) -> dict[str, Any]:
    """The bare loop plus each request's ledger row as plain ``sqlite3`` inserts: the same lines as
    :func:`orjson_child`, and per item the row a build writes (the 16 columns it gives, ``request_hash`` and the
    body and metadata JSON included) into a fresh ledger made by ``SqliteLedger``'s own schema and page cache, in
    1,000-row ``executemany`` calls (a build's chunks) committed every ``_GROUP_ROWS`` (50,000) rows at
    ``synchronous=NORMAL``, as ``insert_items`` groups a build's chunks; no validation, no ledger code around the
    inserts. What a build that keeps a row per request in this schema cannot go below.

    ``ids="sequential"`` gives each ledger row the custom_id ``bp-<row number as 20 hex digits>-a1`` instead of the
    hashed one the shard line carries (:func:`~batchpipe.domain.items.make_custom_id`): the same row, but the
    ``custom_id`` primary-key index then grows at its end instead of at a random page. The difference between the
    two floors is what that index's random inserts cost a build. The real build cannot use these ids: a custom_id is
    derived from the job and item key alone (deterministic across runs and free of user text,
    :func:`~batchpipe.domain.items.make_custom_id`), so it lands at a random place in that index."""
    import sqlite3

    import orjson

    from batchpipe.adapters.sqlite_ledger import _CACHE_KIB, _GROUP_ROWS, _SCHEMA
    from batchpipe.domain.items import make_custom_id, request_hash
    from batchpipe.domain.spec import estimate_input_tokens

    work = Path(out_dir)
    shards = work / "shards"
    shards.mkdir(parents=True)
    began = time.perf_counter()
    db = sqlite3.connect(work / "ledger.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    db.executescript(_SCHEMA)
    columns = (
        "custom_id, job, item_key, attempt, run_id, endpoint, model, request_hash, body_json, metadata_json, "
        "source, input_tokens_est, shard, status, created_at, updated_at"
    )
    sql = f"INSERT INTO items ({columns}) VALUES ({', '.join('?' * 16)})"
    run_id = f"{job}-floor"
    rows: list[tuple[object, ...]] = []
    grouped = 0  # rows inserted since the last commit

    def commit(last: bool = False) -> None:
        nonlocal grouped
        if not grouped:
            db.execute("BEGIN")
        db.executemany(sql, rows)
        grouped += len(rows)
        rows.clear()
        if last or grouped >= _GROUP_ROWS:
            db.execute("COMMIT")
            grouped = 0

    items = 0
    index = 0
    out: BinaryIO | None = None
    name = ""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            if out is None or items % shard_requests == 0:
                if out is not None:
                    out.close()
                name = f"bench-{index:05d}-gen.jsonl"
                out = open(shards / name, "wb")  # noqa: SIM115 - closed on rollover
                index += 1
            prompt = " ".join(nightly_prompt(row).split())
            body = {
                "model": "gpt-image-2",
                "prompt": prompt,
                "size": "1024x1024",
                "quality": "low",
                "output_format": "png",
                "n": 1,
            }
            key = row["pid"].strip()
            custom_id = make_custom_id(job, key, 1)
            out.write(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}))
            out.write(b"\n")
            metadata = {column: row.get(column) for column in ("uniq_id", "pid", "product_name", "brand")}
            now = time.time()
            row_id = custom_id if ids == "hashed" else f"bp-{items:020x}-a1"
            rows.append(
                (row_id, job, key, 1, run_id, ENDPOINT, "gpt-image-2", request_hash(ENDPOINT, body),
                 orjson.dumps(body).decode(), orjson.dumps(metadata).decode(), f"{csv_path}:{line}",
                 estimate_input_tokens(body), name, "pending", now, now)
            )  # fmt: skip
            if len(rows) >= 1_000:  # runtime.runner._ROWS_PER_CHUNK
                commit()
            items += 1
    if out is not None:
        out.close()
    if rows or grouped:
        commit(last=True)
    db.close()
    elapsed = time.perf_counter() - began
    digest, total, files = _hash_dir(shards)
    return {"elapsed_s": elapsed, "items": items, "shards": files, "sha256": digest, "bytes": total}


def ledger_floor_sequential_child(csv_path: str, job: str, shard_requests: int, out_dir: str) -> dict[str, Any]:
    """:func:`ledger_floor_child` with sequential custom_ids in the ledger rows (``floor_seq``)."""
    return ledger_floor_child(csv_path, job, shard_requests, out_dir, ids="sequential")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="Catalog rows (default 1,000,000).")
    parser.add_argument("--shard-requests", type=int, default=50_000, help="Lines per shard (default 50,000).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds, each contender once (3).")
    parser.add_argument("--quick", action="store_true", help="Small size (25,000 items).")
    parser.add_argument("--tmp", type=Path, default=None, help="Parent of the temporary work directory.")
    parser.add_argument("--stages", action="store_true", help="Also time the read and validate stages alone.")
    parser.add_argument(
        "--skip-run", action="store_true", help="Leave out the run contender (its ledger writes take minutes at 1M)."
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="Also the ledger floors (bare loop + plain inserts, hashed and sequential ids; 80 s a round at 1M).",
    )
    args = parser.parse_args()
    n = 25_000 if args.quick else args.items

    base = Path(tempfile.mkdtemp(prefix="bench-build-", dir=args.tmp))
    report = Report("build")
    try:
        csv_path = base / "catalog.csv"
        spec_path = base / "job.toml"
        began = time.perf_counter()
        write_catalog(n, csv_path)
        write_spec(csv_path, spec_path, args.shard_requests)
        print(f"input: {n:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB CSV ({time.perf_counter() - began:.1f} s)")
        job = re.search(r'(?m)^name = "([^"]+)"', spec_path.read_text()).group(1)  # type: ignore[union-attr]

        nightly = base / "nightly"  # the last build-phase run's workdir, kept for the re-run figure

        def contender(name: str, fn: Any, *fn_args: Any) -> Any:
            def run(r: int) -> dict[str, Any]:
                work = base / f"{name}-{r}"
                result = run_child(fn, *fn_args, str(work))
                result["items_per_s"] = result["items"] / result["elapsed_s"]
                result["ledger_mb"] = sum(p.stat().st_size for p in work.glob("ledger.sqlite*")) / 1e6
                shutil.rmtree(nightly if name == "run" else work, ignore_errors=True)
                if name == "run":
                    work.rename(nightly)
                return result

            return run

        def show(r: int, name: str, result: dict[str, Any]) -> None:
            ledger = f"  ledger {result['ledger_mb']:.0f} MB" if name in ("run", "floor", "floor_seq") else ""
            print(
                f"  round {r} {name:10s} {result['items_per_s']:10,.0f} items/s  {result['elapsed_s']:7.2f} s  "
                f"peak RSS {result['peak_rss_mb']:7.1f} MB  shards={result['shards']}  "
                f"{result['bytes'] / 1e6:.0f} MB  sha256={result['sha256'][:12]}{ledger}  load {result['load1']:.2f}",
                flush=True,
            )

        contenders = {
            "orjson": contender("orjson", orjson_child, str(csv_path), job, args.shard_requests),
            "run": contender("run", run_build_child, str(spec_path)),
            "build": contender("build", batchpipe_child, str(spec_path)),
            "floor": contender("floor", ledger_floor_child, str(csv_path), job, args.shard_requests),
            "floor_seq": contender("floor_seq", ledger_floor_sequential_child, str(csv_path), job, args.shard_requests),
        }
        if args.skip_run:
            del contenders["run"]
        if args.skip_run or not args.floor:
            del contenders["floor"], contenders["floor_seq"]
        described = {
            "orjson": "orjson (bare loop)",
            "run": "run (build phase of run, ledger on)",
            "build": "build (shards only, no ledger)",
            "floor": "floor (bare loop + plain ledger inserts)",
            "floor_seq": "floor_seq (the same with sequential custom_ids)",
        }
        names = ", ".join(described[name] for name in contenders)
        print(f"{args.rounds} interleaved rounds of: {names}; each run in a fresh process")
        paired = run_interleaved(contenders, args.rounds, show=show)
        report.add_loads(paired.loads)
        stage_results: dict[str, dict[str, Any]] = {}
        for stage in ("read", "validate") if args.stages else ():
            result = run_child(stage_child, str(spec_path), str(base / stage), stage)
            if result["items"] != n or result["problems"]:
                raise SystemExit(f"{stage}: {result['items']} rows/items with {result['problems']} problems, not {n}")
            stage_results[stage] = result
            print(
                f"  {stage:10s} {result['elapsed_s']:7.2f} s  cpu {result['cpu_s']:7.2f} s  "
                f"peak RSS {result['peak_rss_mb']:7.1f} MB",
                flush=True,
            )
        rerun: Any = None
        if not args.skip_run:
            marked = mark_collected(nightly)
            if marked != n:
                raise SystemExit(f"the nightly ledger holds {marked} pending items, not {n}")
            print(f"{args.rounds} interleaved rounds of: read (the manifest alone), rerun (nightly re-run, nothing "
                  "changed)")  # fmt: skip

            def read(r: int) -> dict[str, Any]:
                return run_child(stage_child, str(spec_path), str(base / f"read-{r}"), "read")

            def again(r: int) -> dict[str, Any]:
                return run_child(rerun_child, str(spec_path), str(nightly))

            def show_rerun(r: int, name: str, result: dict[str, Any]) -> None:
                print(
                    f"  round {r} {name:10s} {result['elapsed_s']:7.2f} s  peak RSS {result['peak_rss_mb']:7.1f} MB"
                    f"  load {result['load1']:.2f}",
                    flush=True,
                )

            rerun = run_interleaved({"read": read, "rerun": again}, args.rounds, show=show_rerun)
            report.add_loads(rerun.loads)
            for result in rerun.runs["rerun"]:
                if result["skipped"] != n or result["exit"] != 0:
                    raise SystemExit(f"the re-run skipped {result['skipped']} of {n} (exit {result['exit']})")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    bare_hashes = {run["sha256"] for run in paired.runs["orjson"]}
    for name in ("build",) if args.skip_run else ("run", "build"):
        for run in paired.runs[name]:
            if run["items"] != n or run.get("problems"):
                raise SystemExit(f"{name} built {run['items']} items with {run.get('problems')} problems, not {n}")
            if run["sha256"] not in bare_hashes or len(bare_hashes) != 1:
                raise SystemExit(f"{name} and the bare loop wrote different bytes: the comparison would be unfair")

    if not args.skip_run:
        report.figure("run_build_vs_orjson", paired.ratio("run", "orjson", "items_per_s"), Target(">=", 0.35))
        report.figure("run_build_peak_rss_mb", paired.spread("run", "peak_rss_mb"), Target("<=", 300, "max"), unit="MB")
        # the bare loop plus plain inserts of the same ledger rows: above it, the 0.35 target needs another schema
        if "floor" in paired.runs:
            report.figure("ledger_floor_vs_orjson", paired.ratio("floor", "orjson", "items_per_s"))
            report.figure("ledger_floor_seq_vs_orjson", paired.ratio("floor_seq", "orjson", "items_per_s"))
    report.figure("build_vs_orjson", paired.ratio("build", "orjson", "items_per_s"), Target(">=", 0.5))
    report.figure("build_peak_rss_mb", paired.spread("build", "peak_rss_mb"), Target("<=", 300, "max"), unit="MB")
    report.figure("build_items_per_s", paired.spread("build", "items_per_s"), unit="items/s")
    report.figure("orjson_items_per_s", paired.spread("orjson", "items_per_s"), unit="items/s")
    if rerun is not None:
        report.figure("rerun_vs_read", rerun.ratio("rerun", "read", "elapsed_s"), Target("<=", 2.0))
        report.figure("rerun_peak_rss_mb", rerun.spread("rerun", "peak_rss_mb"), Target("<=", 300, "max"), unit="MB")
        report.figure("rerun_s", rerun.spread("rerun", "elapsed_s"), unit="s")
        report.figure("read_s", rerun.spread("read", "elapsed_s"), unit="s")
    if not args.skip_run:
        report.figure("run_build_items_per_s", paired.spread("run", "items_per_s"), unit="items/s")
        report.figure("run_build_s", paired.spread("run", "elapsed_s"), unit="s")
        report.value("ledger_mb", round(paired.spread("run", "ledger_mb").max))
    report.value("items", n)
    report.value("shards", paired.runs["build"][0]["shards"])
    report.value("same_bytes", "true")
    report.value("rounds", paired.rounds)
    for stage, result in stage_results.items():
        report.value(f"{stage}_s", result["elapsed_s"])
        report.value(f"{stage}_cpu_s", result["cpu_s"])
    report.final()


if __name__ == "__main__":
    main()
