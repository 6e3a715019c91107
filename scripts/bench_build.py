"""Benchmark: building Batch API input shards for a big catalog (issue "Catalog-scale speed and flat memory").

Input: the 20k Flipkart catalog repeated to N rows (default 1,000,000) with distinct keys (``pid`` becomes
``<pid>-<row number>``), written to a temporary CSV, and a job spec copied from ``jobs/catalog-nightly.toml``
pointing at it (``--shard-requests`` lines per shard, default 50,000, the Batch API limit).

Contenders, each in a fresh child process (its own peak RSS), on the same CSV:

- ``batchpipe``: the real path: ``JobSpec.load`` → ``validate.make_items`` (every row checked) →
  ``build.ShardBuilder.add(make_custom_id(job, key, 1), item)`` → ``close()`` (fsync + rename per shard);
- ``orjson``: a bare loop: ``csv.DictReader``, the same prompt and body, ``orjson.dumps`` of the same
  ``{custom_id, method, url, body}`` lines, written to files of the same size, no validation, no fsync.

Both outputs are hashed; the script fails if they differ (same lines, same bytes). FINAL line::

    build_items_per_s=<n> build_vs_orjson=<ratio> build_peak_rss_mb=<n> ...

Targets: >= 0.5x the bare loop, <= 300 MB peak RSS.

``--stages`` also times the first two stages of the build alone, each in its own child on the same CSV:
``read`` is ``manifest.iter_manifest`` over every row; ``validate`` is ``validate.make_items`` over every row
(reading included), no shards. Their wall and CPU seconds join the FINAL line (``read_s``, ``read_cpu_s``,
``validate_s``, ``validate_cpu_s``; CPU seconds are steadier on a busy machine), with ``build_s`` (the
``batchpipe`` contender's wall seconds). A speed trick in the reader or the validator is kept only if it saves
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
    catalog_rows,
    final_line,
    nightly_prompt,
    run_child,
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
    """The real path: JobSpec + make_items + ShardBuilder + make_custom_id; timed from spec load to close."""
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


def orjson_child(csv_path: str, out_dir: str, job: str, shard_requests: int) -> dict[str, Any]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="Catalog rows (default 1,000,000).")
    parser.add_argument("--shard-requests", type=int, default=50_000, help="Lines per shard (default 50,000).")
    parser.add_argument("--quick", action="store_true", help="Small size (50,000 items).")
    parser.add_argument("--tmp", type=Path, default=None, help="Parent of the temporary work directory.")
    parser.add_argument("--stages", action="store_true", help="Also time the read and validate stages alone.")
    args = parser.parse_args()
    n = 50_000 if args.quick else args.items

    base = Path(tempfile.mkdtemp(prefix="bench-build-", dir=args.tmp))
    try:
        csv_path = base / "catalog.csv"
        spec_path = base / "job.toml"
        began = time.perf_counter()
        write_catalog(n, csv_path)
        write_spec(csv_path, spec_path, args.shard_requests)
        print(f"input: {n:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB CSV ({time.perf_counter() - began:.1f} s)")
        job = re.search(r'(?m)^name = "([^"]+)"', spec_path.read_text()).group(1)  # type: ignore[union-attr]

        results: dict[str, dict[str, Any]] = {}
        for name, fn, fn_args in (
            ("orjson", orjson_child, (str(csv_path), str(base / "orjson"), job, args.shard_requests)),
            ("batchpipe", batchpipe_child, (str(spec_path), str(base / "batchpipe"))),
        ):
            result = run_child(fn, *fn_args)
            result["items_per_s"] = result["items"] / result["elapsed_s"]
            results[name] = result
            shutil.rmtree(base / name, ignore_errors=True)
            print(
                f"  {name:10s} {result['items_per_s']:10,.0f} items/s  {result['elapsed_s']:7.2f} s  "
                f"peak RSS {result['peak_rss_mb']:7.1f} MB  shards={result['shards']}  "
                f"{result['bytes'] / 1e6:.0f} MB  sha256={result['sha256'][:12]}",
                flush=True,
            )
        for stage in ("read", "validate") if args.stages else ():
            result = run_child(stage_child, str(spec_path), str(base / stage), stage)
            if result["items"] != n or result["problems"]:
                raise SystemExit(f"{stage}: {result['items']} rows/items with {result['problems']} problems, not {n}")
            results[stage] = result
            print(
                f"  {stage:10s} {result['elapsed_s']:7.2f} s  cpu {result['cpu_s']:7.2f} s  "
                f"peak RSS {result['peak_rss_mb']:7.1f} MB",
                flush=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    real, bare = results["batchpipe"], results["orjson"]
    if real["items"] != n or real.get("problems"):
        raise SystemExit(f"batchpipe built {real['items']} items with {real.get('problems')} problems, not {n}")
    same = real["sha256"] == bare["sha256"]
    if not same:
        raise SystemExit("the two contenders wrote different bytes: the comparison would be unfair")
    stages = {
        f"{stage}_{kind}": results[stage][field]
        for stage in ("read", "validate")
        if stage in results
        for kind, field in (("s", "elapsed_s"), ("cpu_s", "cpu_s"))
    }
    print(
        final_line(
            {
                "build_items_per_s": round(real["items_per_s"]),
                "build_vs_orjson": real["items_per_s"] / bare["items_per_s"],
                "build_peak_rss_mb": real["peak_rss_mb"],
                "orjson_items_per_s": round(bare["items_per_s"]),
                "orjson_peak_rss_mb": bare["peak_rss_mb"],
                "items": n,
                "shards": real["shards"],
                "same_bytes": str(same).lower(),
                "build_s": real["elapsed_s"],
                **stages,
            }
        )
    )


if __name__ == "__main__":
    main()
