"""Benchmark: the ledger's reads at catalog scale (issue 12, "A ledger that stays linear").

Builds a ledger of N items fast (``executemany`` into the ledger's own schema: one run of N items, all submitted
in batches of 50,000 and succeeded, with an event per move, then a second run that retries 1,000 of them; each
run closed with ``finish_build`` as ``batchpipe run`` does), then times, each in a fresh child process (its own
peak RSS):

- ``status``: ``batchpipe status --json``;
- ``export_run``: ``batchpipe ledger export --run <the big run> --output /dev/null``;
- ``export_all``: ``batchpipe ledger export --output /dev/null``;
- ``sqlite3_dump``: ``sqlite3 ledger.sqlite 'SELECT * FROM items'`` (the floor for the two exports);
- ``batch_rows``: one 50,000-item batch's rows (``list(ledger.items(batch_id=...))``, what the collector reads);
- ``rerun_check``: the no-change re-run's "already succeeded" check for N (key, request_hash) pairs in chunks of
  500 as ``Runner._build`` does it (``Ledger.succeeded_with`` per chunk where the ledger has it, else the old
  ``dict(ledger.succeeded_hashes(job))``).

Run it against the code on ``PYTHONPATH`` (so "before" is another checkout on ``PYTHONPATH``)::

    PYTHONPATH=$PWD python scripts/bench_ledger.py --items 200000
    PYTHONPATH=../before python scripts/bench_ledger.py --items 200000   # ../before: a checkout of the old commit

Prints one line per measurement (seconds, peak RSS in MB) and a FINAL line.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = "bench"
BATCH_ITEMS = 50_000
RETRIED = 1_000
CHUNK = 500  # Runner._build's _ROWS_PER_COMMIT


def _key(i: int) -> str:
    return f"sku-{i:08d}"


def _hash(i: int) -> str:
    return f"{i:064x}"


def _retried(n: int) -> range:
    """The items the second run retries (their first attempt is superseded, so no longer succeeded)."""
    return range(0, n, max(1, n // RETRIED))


def build(workdir: Path, n: int) -> None:
    """A ledger of ``n`` items in ``workdir`` (see the module docstring)."""
    from batchpipe.adapters.sqlite_ledger import open_ledger
    from batchpipe.domain.items import make_custom_id
    from batchpipe.domain.locations import file_uri
    from batchpipe.domain.records import ITEM_COLUMNS

    ledger = open_ledger(workdir)
    db = ledger._db
    now = 1_700_000_000.0
    body = '{"model":"gpt-image-2","prompt":"' + "a studio photo of a lamp on a white table, soft light " * 4 + '"}'
    c2pa = '{"state":"Trusted","issuer":"Example CA","failure_codes":[],"manifest":"' + "x" * 200 + '"}'
    usage = '{"input_tokens":60,"output_tokens":4160,"total_tokens":4220}'
    run1, _ = ledger.open_run(JOB, "spec", "bench")
    out_dir = file_uri(workdir.resolve() / "out")  # where the (never written) images would be
    sql = f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) VALUES ({', '.join('?' for _ in ITEM_COLUMNS)})"
    events = "INSERT INTO events (at, entity, entity_id, from_status, to_status, detail) VALUES (?, 'item', ?, ?, ?, ?)"

    def row(i: int, attempt: int, run_id: str, status: str, previous: str | None) -> list[object]:
        batch = i // BATCH_ITEMS
        values: dict[str, object] = {
            "custom_id": make_custom_id(JOB, _key(i), attempt),
            "job": JOB,
            "item_key": _key(i),
            "attempt": attempt,
            "run_id": run_id,
            "previous_custom_id": previous,
            "endpoint": "/v1/images/generations",
            "model": "gpt-image-2",
            "request_hash": _hash(i),
            "body_json": body,
            "metadata_json": '{"sku":"' + _key(i) + '"}',
            "source": f"catalog.csv:{i + 2}",
            "product_key": _key(i),
            "input_tokens_est": 60,
            "shard": f"{run_id}-{batch:05d}",
            "batch_id": f"batch_{run_id}_{batch:05d}" if status != "pending" else None,
            "status": status,
            "output_uri": f"{out_dir}/{_key(i)}/0.png" if status == "succeeded" else None,
            "sha256": _hash(i) if status == "succeeded" else None,
            "bytes": 1_500_000 if status == "succeeded" else None,
            "format": "png" if status == "succeeded" else None,
            "width": 1024 if status == "succeeded" else None,
            "height": 1024 if status == "succeeded" else None,
            "c2pa_state": "Trusted" if status == "succeeded" else None,
            "c2pa_json": c2pa if status == "succeeded" else None,
            "usage_json": usage if status == "succeeded" else None,
            "cost_usd": 0.04 if status == "succeeded" else None,
            "created_at": now,
            "updated_at": now,
        }
        return [values.get(c) for c in ITEM_COLUMNS]

    db.execute("BEGIN")
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        db.executemany(sql, [row(i, 1, run1, "succeeded", None) for i in range(start, stop)])
        ids = [make_custom_id(JOB, _key(i), 1) for i in range(start, stop)]
        db.executemany(events, [(now, c, "pending", "submitted", "bench") for c in ids])
        db.executemany(events, [(now, c, "submitted", "succeeded", "bench") for c in ids])
    db.execute("COMMIT")
    ledger.finish_build(run1, [])
    for b in range((n + BATCH_ITEMS - 1) // BATCH_ITEMS):
        batch = {"id": f"batch_{run1}_{b:05d}", "status": "completed", "input_file_id": f"file-{b}", "created_at": now}
        ledger.record_batch(batch, shard=f"{run1}-{b:05d}", run_id=run1, model="gpt-image-2")
    ledger.finish_run(run1, "finished")
    run2 = ledger.open_run(JOB, "spec", "bench")[0]
    retried = _retried(n)
    db.execute("BEGIN")
    db.executemany(sql, [row(i, 2, run2, "pending", make_custom_id(JOB, _key(i), 1)) for i in retried])
    db.execute("COMMIT")
    ledger.finish_build(run2, [])
    ledger.close()
    (workdir / "run1").write_text(run1)


def measure(what: str, workdir: Path, n: int) -> None:
    """One measurement, in this (child) process."""
    from batchpipe.adapters.sqlite_ledger import open_ledger

    ledger = open_ledger(workdir)
    if what == "batch_rows":
        run1 = (workdir / "run1").read_text()
        rows = list(ledger.items(batch_id=f"batch_{run1}_00000"))
        assert len(rows) == min(n, BATCH_ITEMS), len(rows)
    elif what == "rerun_check":
        skipped = 0
        if hasattr(ledger, "succeeded_with"):
            for start in range(0, n, CHUNK):
                pairs = [(_key(i), _hash(i)) for i in range(start, min(n, start + CHUNK))]
                skipped += len(ledger.succeeded_with(JOB, pairs))
        else:
            done = dict(ledger.succeeded_hashes(JOB))
            for start in range(0, n, CHUNK):
                skipped += sum(1 for i in range(start, min(n, start + CHUNK)) if done.get(_key(i)) == _hash(i))
        assert skipped == n - len(_retried(n)), skipped
    ledger.close()


def _child(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one child process, run in ``cwd`` (not a checkout: ``python -c`` children import
    batchpipe from ``PYTHONPATH``, not from the current directory)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {argv}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, help="keep the ledger here (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=1, help="times each measurement (min is printed)")
    parser.add_argument("--only", action="append", help="only these measurements (repeatable)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.workdir, args.items)
        return
    import batchpipe

    print(f"batchpipe from {Path(batchpipe.__file__).parent}, {args.items:,} items, load {os.getloadavg()[0]:.2f}")
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-ledger-"))).resolve()
    try:
        if not (root / "ledger.sqlite").exists():
            start = time.perf_counter()
            build(root, args.items)
            size = (root / "ledger.sqlite").stat().st_size / 1e6
            print(f"built in {time.perf_counter() - start:.1f} s: {size:.0f} MB")
        run1 = (root / "run1").read_text()
        cli = [sys.executable, "-c", "from batchpipe.cli.main import main; main()"]
        me = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--items",
            str(args.items),
            "--workdir",
            str(root),
            "--measure",
        ]
        contenders = {
            "status": [*cli, "status", "--json", "--workdir", str(root)],
            "export_run": [*cli, "ledger", "export", "--workdir", str(root), "--run", run1, "--output", "/dev/null"],
            "export_all": [*cli, "ledger", "export", "--workdir", str(root), "--output", "/dev/null"],
            "sqlite3_dump": ["sqlite3", str(root / "ledger.sqlite"), "SELECT * FROM items"],
            "batch_rows": [*me, "batch_rows"],
            "rerun_check": [*me, "rerun_check"],
            "idle": [sys.executable, "-c", "import batchpipe.adapters.sqlite_ledger, batchpipe.cli.main"],
        }
        final = []
        for name, argv in contenders.items():
            if args.only and name not in args.only and name != "idle":
                continue
            if name == "sqlite3_dump" and not shutil.which("sqlite3"):
                continue
            runs = [_child(argv, root) for _ in range(args.repeat)]
            seconds, rss = min(r[0] for r in runs), max(r[1] for r in runs)
            print(f"{name:14s} {seconds:8.2f} s  peak RSS {rss:6.0f} MB", flush=True)
            final.append(f"{name}_s={seconds:.2f} {name}_rss_mb={rss:.0f}")
        print("FINAL " + " ".join(final))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
