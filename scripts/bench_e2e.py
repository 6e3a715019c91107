"""Benchmark: the catalog end to end, batchpipe against the plain SDK script, with fast and realistic images.

For each image size, one standalone ``batchpipe emulator serve`` (instant processing) serves both
contenders in ``--rounds`` interleaved rounds (default 3: batchpipe, sdk, sdk, batchpipe, ...), each run
with the same items (the first N rows of ``jobs/data/flipkart-products-20k.csv``) and the same shard size
(``max_requests_per_shard`` of ``jobs/catalog-nightly.toml``, 1,000):

- ``fast``: the emulator's flat images (~70 KB PNGs), ``--items`` (default 2,000);
- ``realistic``: ``--image-detail realistic`` (noise, ~1.5 MB PNGs, the size the project exists for),
  ``--realistic-items`` (default 150: the emulator renders only about 6 such images a second on 2 cores,
  so 2,000 items six times would take over half an hour; ``--realistic-items 2000`` for the target's size).

Contenders, each in a fresh process:

- ``batchpipe``: ``batchpipe run <copy of jobs/catalog-nightly.toml> --api <emulator URL> --workdir <tmp>
  --limit N --poll-interval P --trust emulator`` in a subprocess (validation, ledger, C2PA check of every
  image included); wall time and peak RSS from ``os.wait4``;
- ``sdk``: a plain script with the official ``openai`` SDK in a fresh child process: read the CSV, write
  JSONL shards, upload each, create the batches, poll each batch with ``retrieve`` every P seconds,
  download each output file (``files.content(...).content``), decode and write every image.

``e2e_vs_sdk`` is the SDK script's wall time over batchpipe's, per round (above 1: batchpipe is faster).
``*_tail_s`` is what each contender took after it saw the last batch end (batchpipe: its last ``batch status`` log
line reporting an ended batch; the SDK script: the ``retrieve`` that found its last batch ended) to its exit: the
part a client controls once the service is done. ``e2e_vs_sdk_zero_tail`` is the ratio batchpipe would reach with no
tail at all (the SDK script's wall time over batchpipe's wall time minus its tail): a target above it cannot be met
by collecting faster, only by the service finishing sooner.
Targets (medians; RSS on the max): >= 1.05 with fast images, >= 1.2 with realistic ones, batchpipe's peak RSS
<= 300 MB. FINAL line::

    FINAL bench=e2e e2e_vs_sdk=<min/median/max> e2e_vs_sdk_met=met|missed ... e2e_vs_sdk_realistic=...
    batchpipe_peak_rss_mb=... load1=<min/median/max> cores=<n>
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    BENCH_API_KEY,
    CATALOG_CSV,
    NIGHTLY_SPEC,
    Paired,
    Report,
    Spread,
    StandaloneEmulator,
    Target,
    catalog_rows,
    run_child,
    run_interleaved,
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
    last_seen = began  # when the last batch was seen ended (perf_counter)
    while pending:
        time.sleep(poll_s)
        for batch_id in list(pending):
            batch = client.batches.retrieve(batch_id)
            polls += 1
            if batch.status not in ("completed", "failed", "expired", "cancelled"):
                continue
            del pending[batch_id]
            last_seen = time.perf_counter()
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
    ended = time.perf_counter()
    return {
        "elapsed_s": ended - began,
        "tail_s": ended - last_seen,
        "images": images,
        "failed": failed,
        "polls": polls,
    }


def _count_files(folder: Path, suffix: str) -> int:
    return sum(1 for p in folder.rglob(f"*{suffix}") if p.is_file()) if folder.exists() else 0


def _batchpipe_contender(base: Path, spec: Path, emu: StandaloneEmulator, n: int, poll_s: float) -> Any:
    def run(r: int) -> dict[str, Any]:
        work = base / f"batchpipe-{r}"
        exe = Path(sys.executable).with_name("batchpipe")
        cmd = [str(exe if exe.exists() else "batchpipe"), "run", str(spec), "--api", emu.base_url]
        cmd += ["--workdir", str(work), "--limit", str(n), "--poll-interval", str(poll_s), "--trust", "emulator"]
        cmd += ["--no-report"]  # the contact sheet (thumbnails) has no counterpart in the SDK script
        log = base / f"batchpipe-run-{r}.log"
        bp = run_subprocess(cmd, cwd=base, log=log)
        ended = time.time()
        images = _count_files(work / "out", ".png")
        image_mb = sum(p.stat().st_size for p in (work / "out").rglob("*.png")) / 1e6 if images else 0.0
        if bp.returncode != 0:
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            raise SystemExit(f"batchpipe run exited {bp.returncode}")
        shutil.rmtree(work, ignore_errors=True)
        return {
            "tail_s": ended - _last_batch_seen_ended(log),
            "wall_s": bp.wall_s,
            "peak_rss_mb": bp.peak_rss_mb,
            "cpu_s": bp.cpu_s,
            "images": images,
            "mean_image_mb": image_mb / max(images, 1),
        }

    return run


def _last_batch_seen_ended(log: Path) -> float:
    """Unix time of the last ``batch status`` log line (JSON, as batchpipe logs when not on a terminal) that
    reports an ended batch (``batch_status_is_terminal``): the moment batchpipe saw the last batch end. Raises
    ``SystemExit`` if there is none."""
    from batchpipe.domain.records import batch_status_is_terminal

    seen: list[float] = []
    for line in log.read_text(errors="replace").splitlines():
        if '"batch status"' not in line:
            continue
        record = json.loads(line)
        if record.get("event") == "batch status" and batch_status_is_terminal(str(record.get("status"))):
            seen.append(datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp())
    if not seen:
        raise SystemExit(f"{log}: no 'batch status' line reports an ended batch")
    return max(seen)


def _sdk_contender(base: Path, emu: StandaloneEmulator, n: int, shard_size: int, poll_s: float) -> Any:
    def run(r: int) -> dict[str, Any]:
        began = time.perf_counter()
        sdk = run_child(sdk_child, emu.base_url, n, shard_size, str(base / f"sdk-{r}"), poll_s)
        sdk["wall_s"] = time.perf_counter() - began
        shutil.rmtree(base / f"sdk-{r}", ignore_errors=True)
        return sdk

    return run


def _show(r: int, name: str, result: dict[str, Any]) -> None:
    extra = f"  cpu {result['cpu_s']:6.1f} s  mean image {result['mean_image_mb']:.2f} MB" if "cpu_s" in result else ""
    extra += f"  polls {result['polls']}" if "polls" in result else ""
    extra += f"  tail {result['tail_s']:.1f} s"
    print(
        f"  round {r} {name:10s} {result['wall_s']:8.1f} s  peak RSS {result['peak_rss_mb']:7.1f} MB  "
        f"images {result['images']}{extra}  load {result['load1']:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000, help="Items with fast images (default 2,000).")
    parser.add_argument(
        "--realistic-items", type=int, default=150, help="Items with realistic ~1.5 MB images (default 150)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per image size (3).")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="Seconds between polls, both (1.0).")
    parser.add_argument("--quick", action="store_true", help="Small sizes (150 fast items, 10 realistic).")
    parser.add_argument("--tmp", type=Path, default=None, help="Parent of the temporary work directory.")
    args = parser.parse_args()
    sizes = {"fast": 150, "realistic": 10} if args.quick else {"fast": args.items, "realistic": args.realistic_items}

    base = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=args.tmp))
    report = Report("e2e")
    paired: dict[str, Paired] = {}
    try:
        spec = base / "catalog-nightly.toml"
        shard_size = write_spec(spec)
        for detail, n in sizes.items():
            folder = base / detail
            folder.mkdir()
            with StandaloneEmulator(folder / "emulator", image_detail=detail, log=folder / "emulator.log") as emu:
                print(
                    f"{detail} images: emulator {emu.launcher} at {emu.base_url}; {n:,} items, {shard_size:,} per "
                    f"shard; {args.rounds} interleaved rounds of batchpipe run and the SDK script",
                    flush=True,
                )
                paired[detail] = run_interleaved(
                    {
                        "batchpipe": _batchpipe_contender(folder, spec, emu, n, args.poll_interval),
                        "sdk": _sdk_contender(folder, emu, n, shard_size, args.poll_interval),
                    },
                    args.rounds,
                    show=_show,
                )
            report.add_loads(paired[detail].loads)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    for detail, n in sizes.items():
        for name, runs in paired[detail].runs.items():
            if any(run["images"] != n for run in runs):
                raise SystemExit(f"{detail}: {name} wrote {[run['images'] for run in runs]} images, expected {n}")
    targets = {"fast": 1.05, "realistic": 1.2}
    for detail, suffix in (("fast", ""), ("realistic", "_realistic")):
        runs = paired[detail]
        # sdk wall / batchpipe wall per round: above 1 means batchpipe is faster
        report.figure(f"e2e_vs_sdk{suffix}", runs.ratio("sdk", "batchpipe", "wall_s"), Target(">=", targets[detail]))
        report.figure(
            f"batchpipe_peak_rss_mb{suffix}",
            runs.spread("batchpipe", "peak_rss_mb"),
            Target("<=", 300, "max"),
            unit="MB",
        )
        report.figure(f"sdk_peak_rss_mb{suffix}", runs.spread("sdk", "peak_rss_mb"), unit="MB")
        report.figure(f"batchpipe_wall_s{suffix}", runs.spread("batchpipe", "wall_s"), unit="s")
        report.figure(f"batchpipe_tail_s{suffix}", runs.spread("batchpipe", "tail_s"), unit="s")
        report.figure(f"sdk_tail_s{suffix}", runs.spread("sdk", "tail_s"), unit="s")
        # the ratio batchpipe would reach if it finished the moment it saw the last batch end (no collection at all):
        # what is left of a target above it is the emulator's processing time, which no client controls
        zero_tail = [
            sdk["wall_s"] / (bp["wall_s"] - bp["tail_s"])
            for sdk, bp in zip(runs.runs["sdk"], runs.runs["batchpipe"], strict=True)
        ]
        report.figure(f"e2e_vs_sdk_zero_tail{suffix}", Spread.of(zero_tail))
        report.figure(f"sdk_wall_s{suffix}", runs.spread("sdk", "wall_s"), unit="s")
        report.value(f"items{suffix}", sizes[detail])
        report.value(f"mean_image_mb{suffix}", runs.spread("batchpipe", "mean_image_mb").median)
    report.value("shard_requests", shard_size)
    report.value("rounds", args.rounds)
    report.final()


if __name__ == "__main__":
    main()
