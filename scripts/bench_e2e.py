"""Benchmark: the 20k catalog end to end (issue "Catalog-scale speed and flat memory").

One standalone ``batchpipe emulator serve`` (instant processing, ``fast`` image detail) serves both
contenders, one after the other, with the same items (the first ``--items`` rows of
``jobs/data/flipkart-products-20k.csv``, default all 20,000) and the same shard size
(``max_requests_per_shard`` of ``jobs/catalog-nightly.toml``, 1,000):

- ``batchpipe``: ``batchpipe run <copy of jobs/catalog-nightly.toml> --api <emulator URL> --workdir <tmp>
  --limit N --poll-interval P --trust emulator`` in a subprocess (validation, ledger, C2PA check of every
  image included); wall time and peak RSS from ``os.wait4``;
- ``sdk``: a plain script with the official ``openai`` SDK in a fresh child process: read the CSV, write
  JSONL shards, upload each, create the batches, poll each batch with ``retrieve`` every P seconds,
  download each output file (``files.content(...).content``), decode and write every image.

FINAL line::

    e2e_vs_sdk=<sdk wall / batchpipe wall> batchpipe_wall_s=<n> sdk_wall_s=<n> batchpipe_peak_rss_mb=<n>
    sdk_peak_rss_mb=<n> ...
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    BENCH_API_KEY,
    CATALOG_CSV,
    NIGHTLY_SPEC,
    StandaloneEmulator,
    catalog_rows,
    final_line,
    run_child,
    run_subprocess,
)

ENDPOINT: Literal["/v1/images/generations"] = "/v1/images/generations"


def write_spec(path: Path) -> int:
    """``jobs/catalog-nightly.toml`` with an absolute manifest path; returns its ``max_requests_per_shard``."""
    text = NIGHTLY_SPEC.read_text(encoding="utf-8")
    text, replaced = re.subn(r'(?m)^path = "[^"]*"', f'path = "{CATALOG_CSV.as_posix()}"', text, count=1)
    match = re.search(r"(?m)^max_requests_per_shard = (\d+)", text)
    if not replaced or match is None:
        raise SystemExit(f"{NIGHTLY_SPEC} changed shape: cannot find the manifest path / shard size")
    path.write_text(text, encoding="utf-8")
    return int(match.group(1))


def sdk_child(base_url: str, n: int, shard_size: int, workdir: str, poll_s: float) -> dict[str, Any]:
    """The plain openai-SDK script: shards, upload, create, poll (retrieve each), download, decode, write."""
    import base64
    import json

    import openai
    from bench_common import nightly_prompt

    work = Path(workdir)
    out = work / "images"
    out.mkdir(parents=True)
    client = openai.OpenAI(api_key=BENCH_API_KEY, base_url=base_url)
    began = time.perf_counter()
    shards: list[Path] = []
    fh: TextIO | None = None
    for i, row in enumerate(catalog_rows(CATALOG_CSV)):
        if i >= n:
            break
        if fh is None or i % shard_size == 0:
            if fh is not None:
                fh.close()
            shards.append(work / f"shard-{len(shards):04d}.jsonl")
            fh = open(shards[-1], "w", encoding="utf-8")  # noqa: SIM115 - closed on rollover
        body = {
            "model": "gpt-image-2",
            "prompt": nightly_prompt(row),
            "size": "1024x1024",
            "quality": "low",
            "output_format": "png",
            "n": 1,
        }
        fh.write(json.dumps({"custom_id": f"item-{i}", "method": "POST", "url": ENDPOINT, "body": body}) + "\n")
    if fh is not None:
        fh.close()
    pending: dict[str, str] = {}
    for shard in shards:
        with open(shard, "rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
        pending[batch.id] = batch.status
    images = failed = polls = 0
    while pending:
        time.sleep(poll_s)
        for batch_id in list(pending):
            batch = client.batches.retrieve(batch_id)
            polls += 1
            if batch.status not in ("completed", "failed", "expired", "cancelled"):
                continue
            del pending[batch_id]
            if batch.output_file_id:
                content = client.files.content(batch.output_file_id).content
                for line in content.splitlines():
                    record = json.loads(line)
                    response = record.get("response") or {}
                    if response.get("status_code") != 200:
                        failed += 1
                        continue
                    for index, entry in enumerate(response["body"]["data"]):
                        data = base64.b64decode(entry["b64_json"])
                        (out / f"{record['custom_id']}-{index}.png").write_bytes(data)
                        images += 1
    return {"elapsed_s": time.perf_counter() - began, "images": images, "failed": failed, "polls": polls}


def _count_files(folder: Path, suffix: str) -> int:
    return sum(1 for p in folder.rglob(f"*{suffix}") if p.is_file()) if folder.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000, help="Catalog rows (default all 20,000).")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="Seconds between polls, both (1.0).")
    parser.add_argument("--quick", action="store_true", help="Small size (2,000 items).")
    parser.add_argument("--tmp", type=Path, default=None, help="Parent of the temporary work directory.")
    args = parser.parse_args()
    n = 2000 if args.quick else args.items

    base = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=args.tmp))
    try:
        spec = base / "catalog-nightly.toml"
        shard_size = write_spec(spec)
        with StandaloneEmulator(base / "emulator", log=base / "emulator.log") as emu:
            print(f"emulator: {emu.launcher} at {emu.base_url}; {n:,} items, {shard_size:,} per shard")
            bp_work = base / "batchpipe"
            exe = Path(sys.executable).with_name("batchpipe")
            cmd = [str(exe if exe.exists() else "batchpipe"), "run", str(spec), "--api", emu.base_url]
            cmd += ["--workdir", str(bp_work), "--limit", str(n), "--poll-interval", str(args.poll_interval)]
            cmd += ["--trust", "emulator"]
            bp = run_subprocess(cmd, cwd=base, log=base / "batchpipe-run.log")
            bp_images = _count_files(bp_work / "out", ".png")
            print(
                f"  batchpipe run  {bp.wall_s:8.1f} s  peak RSS {bp.peak_rss_mb:7.1f} MB  cpu {bp.cpu_s:6.1f} s  "
                f"exit {bp.returncode}  images {bp_images}",
                flush=True,
            )
            if bp.returncode != 0:
                tail = (base / "batchpipe-run.log").read_text(errors="replace").splitlines()[-15:]
                print("\n".join(tail))
                raise SystemExit(f"batchpipe run exited {bp.returncode}")
            shutil.rmtree(bp_work, ignore_errors=True)

            began = time.perf_counter()
            sdk = run_child(sdk_child, emu.base_url, n, shard_size, str(base / "sdk"), args.poll_interval)
            sdk_wall = time.perf_counter() - began
            print(
                f"  sdk script     {sdk_wall:8.1f} s  peak RSS {sdk['peak_rss_mb']:7.1f} MB  "
                f"images {sdk['images']}  polls {sdk['polls']}",
                flush=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    if bp_images != n or sdk["images"] != n:
        raise SystemExit(f"images: batchpipe {bp_images}, sdk {sdk['images']}, expected {n}")
    print(
        final_line(
            {
                "e2e_vs_sdk": sdk_wall / bp.wall_s,
                "batchpipe_wall_s": bp.wall_s,
                "sdk_wall_s": sdk_wall,
                "batchpipe_peak_rss_mb": bp.peak_rss_mb,
                "sdk_peak_rss_mb": sdk["peak_rss_mb"],
                "batchpipe_cpu_s": bp.cpu_s,
                "items": n,
                "shard_requests": shard_size,
            }
        )
    )


if __name__ == "__main__":
    main()
