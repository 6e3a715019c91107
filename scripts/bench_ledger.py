"""Benchmark: the ledger's reads at catalog scale (issue 12, "A ledger that stays linear").

Builds a ledger of N items fast (``executemany`` into the ledger's own schema: one run of N items, all submitted
in batches of 50,000 and succeeded, with an event per move, then a second run that retries 1,000 of them; each
run closed with ``finish_build`` as ``batchpipe run`` does), then runs, in 3 interleaved rounds (``bench_common``:
the order reversed every other round), each in a fresh child process (its own peak RSS, ``os.wait4``):

- ``status``: ``batchpipe status --json``;
- ``export_run``: ``batchpipe ledger export --run <the big run> --output /dev/null`` (each item's latest attempt);
- ``export_all``: ``batchpipe ledger export --output /dev/null``;
- the floors of the two exports on the same rows: ``sqlite3 ledger.sqlite 'SELECT * FROM items [WHERE run_id =
  ...]' > /dev/null`` (the sqlite3 command-line shell, when installed: the fairest floor, C all the way); without it,
  ``python -c`` reading the same rows with the ``sqlite3`` module and writing them with ``csv.writer`` (a higher
  floor: the output says which one ran);
- ``rerun_check``: the no-change re-run's "already succeeded" check for N (key, request_hash) pairs in chunks of
  500 as ``Runner._build`` does it (``Ledger.succeeded_with`` per chunk).

Figures (min / median / max over the rounds; a ratio is taken per round, from that round's two runs):
``status_s`` (target <= 3 s), ``export_run_vs_sqlite3`` and ``export_all_vs_sqlite3`` (export time / floor time,
target <= 1.5), ``rerun_check_s`` and ``rerun_check_peak_rss_mb`` (target <= 300 MB, every round). The time
targets are for the full size (1,000,000 items); ``--quick`` (50,000 items, well under a minute) only reports them
(a child's ~1 s of start-up weighs more there). The RSS ceiling holds at any size. Last line: ``FINAL bench=ledger
...``. Children run this checkout's code (``bench_common`` puts it first on ``PYTHONPATH``; for "before", run
the script of the other checkout)::

    PYTHONPATH=$PWD python scripts/bench_ledger.py --quick
    PYTHONPATH=$PWD python scripts/bench_ledger.py --items 1000000 --workdir /tmp/ledger-1m  # keeps the ledger
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Report, Target, machine_load, run_interleaved, run_subprocess

JOB = "bench"
BATCH_ITEMS = 50_000
RETRIED = 1_000
CHUNK = 1000  # runtime.runner._ROWS_PER_CHUNK: the pairs a build checks per call (not imported: it is timed)


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
    """One measurement (or the build), in this (child) process."""
    from batchpipe.adapters.sqlite_ledger import open_ledger

    if what == "build":
        build(workdir, n)
        return

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


FULL_ITEMS = 1_000_000
QUICK_ITEMS = 50_000


def _floor_command(db: Path, where: str) -> tuple[list[str], str]:
    """The export's floor on the rows ``SELECT * FROM items {where}`` selects, and which floor it is."""
    sql = f"SELECT * FROM items {where}".strip()
    if shutil.which("sqlite3"):
        return ["sqlite3", str(db), sql], "sqlite3_cli"
    script = (
        "import csv, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); out = csv.writer(open('/dev/null', 'w'));"
        " [out.writerow(row) for row in db.execute(sys.argv[2])]"
    )
    return [sys.executable, "-c", script, str(db), sql], "python_sqlite3_csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=FULL_ITEMS, help=f"Items in the ledger ({FULL_ITEMS:,}).")
    parser.add_argument("--quick", action="store_true", help=f"Small size ({QUICK_ITEMS:,} items), targets not judged.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds, each contender once (3).")
    parser.add_argument("--workdir", type=Path, help="keep the ledger here (default: a temporary directory)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = QUICK_ITEMS if args.quick else args.items
    if args.measure:
        measure(args.measure, args.workdir, n)
        return
    import batchpipe

    full = n >= FULL_ITEMS
    print(f"batchpipe from {Path(batchpipe.__file__).parent}, {n:,} items, load {machine_load():.2f}", flush=True)
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-ledger-"))).resolve()
    report = Report("ledger")
    try:
        db = root / "ledger.sqlite"
        me = [sys.executable, str(Path(__file__).resolve()), "--items", str(n), "--workdir", str(root), "--measure"]
        if not db.exists():  # in a child: this process stays small, so its children's peak RSS is their own
            built = run_subprocess([*me, "build"])
            if built.returncode != 0:
                raise SystemExit(f"the build failed ({built.returncode})")
            print(f"built in {built.wall_s:.1f} s: {db.stat().st_size / 1e6:.0f} MB", flush=True)
        run1 = (root / "run1").read_text()
        cli = [sys.executable, "-c", "from batchpipe.cli.main import main; main()"]
        floor_run, floor = _floor_command(db, f"WHERE run_id = '{run1}'")
        floor_all, _ = _floor_command(db, "")
        print(f"export floor: {floor}" + ("" if floor == "sqlite3_cli" else " (no sqlite3 shell on PATH)"))
        commands = {
            "status": [*cli, "status", "--json", "--workdir", str(root)],
            "export_run": [*cli, "ledger", "export", "--workdir", str(root), "--run", run1, "--output", "/dev/null"],
            "floor_run": floor_run,
            "export_all": [*cli, "ledger", "export", "--workdir", str(root), "--output", "/dev/null"],
            "floor_all": floor_all,
            "rerun_check": [*me, "rerun_check"],
        }

        def contender(name: str) -> Callable[[int], dict[str, Any]]:
            def run(_round: int) -> dict[str, Any]:
                done = run_subprocess(commands[name], cwd=root)  # not a checkout: children import PYTHONPATH's code
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed ({done.returncode}): {commands[name]}")
                return {"wall_s": done.wall_s, "peak_rss_mb": done.peak_rss_mb}

            return run

        def show(r: int, name: str, result: dict[str, Any]) -> None:
            print(
                f"  round {r} {name:12s} {result['wall_s']:7.2f} s  peak RSS {result['peak_rss_mb']:6.0f} MB"
                f"  load {result['load1']:.2f}",
                flush=True,
            )

        print(f"{args.rounds} interleaved rounds (each contender in a fresh process):", flush=True)
        paired = run_interleaved({name: contender(name) for name in commands}, args.rounds, show=show)
        report.add_loads(paired.loads)
        report.value("items", n)
        report.value("floor", floor)
        ratio = Target("<=", 1.5) if full else None
        report.figure("status_s", paired.spread("status", "wall_s"), Target("<=", 3.0) if full else None, unit="s")
        report.figure("export_run_vs_sqlite3", paired.ratio("export_run", "floor_run", "wall_s"), ratio)
        report.figure("export_all_vs_sqlite3", paired.ratio("export_all", "floor_all", "wall_s"), ratio)
        report.figure("export_all_s", paired.spread("export_all", "wall_s"), unit="s")
        report.figure("sqlite3_all_s", paired.spread("floor_all", "wall_s"), unit="s")
        report.figure("rerun_check_s", paired.spread("rerun_check", "wall_s"), unit="s")
        rss = Target("<=", 300.0, on="max")
        report.figure("rerun_check_peak_rss_mb", paired.spread("rerun_check", "peak_rss_mb"), rss, unit="MB")
        report.figure("export_all_peak_rss_mb", paired.spread("export_all", "peak_rss_mb"), unit="MB")
        report.final()
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
