"""Benchmark: polling many in-flight batches (issue "Catalog-scale speed and flat memory").

N batches (default 1,000) are created on a standalone ``batchpipe emulator serve`` in realistic speed mode
with a long per-request time (``--per-request-s 3600``), so every one stays ``validating``/``in_progress``
for the whole benchmark. Tiny one-line input files, uploaded and created 8 at a time.

1. Calls per poll cycle (generous rate limit): ``batchpipe.stages.poll.Poller.poll`` (list pages of 100, counted
   by the ``OpenAIClient``'s ``stats.requests``) vs the naive loop, one ``GET /v1/batches/{id}`` per batch.
2. 429s under 60 requests per minute: the emulator is restarted on the same state with ``--rpm-limit 60``
   (a fresh 60 s window); ``--cycles`` Poller cycles run (client 429 count: ``stats.rate_limited``). Then
   it is restarted again (fresh window) and the naive loop runs with the official ``openai`` SDK as users
   write it (``client.batches.retrieve`` per batch, ``max_retries=0`` so each 429 is counted once and the
   loop does not sleep through minutes of windows).

FINAL line::

    calls_per_cycle=<n> naive_calls_per_cycle=<n> http_429=<n> naive_http_429=<n> ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (
    BENCH_API_KEY,
    StandaloneEmulator,
    final_line,
)

ENDPOINT = "/v1/images/generations"
SLOW_FLAGS = ["--speed", "realistic", "--per-request-s", "3600"]


def _client(base_url: str) -> Any:
    from pydantic import SecretStr

    from batchpipe.adapters.openai import ApiSettings, OpenAIClient

    return OpenAIClient(ApiSettings(base_url=base_url, api_key=SecretStr(BENCH_API_KEY)))


async def create_batches(base_url: str, n: int, folder: Path) -> dict[str, float]:
    """Create ``n`` one-line batches (8 at a time); returns batch id → created_at (unix seconds)."""
    tracked: dict[str, float] = {}
    sem = asyncio.Semaphore(8)
    async with _client(base_url) as client:

        async def one(i: int) -> None:
            path = folder / f"in-{i:05d}.jsonl"
            body = {"model": "gpt-image-2", "prompt": f"A product photo number {i}", "size": "1024x1024"}
            line = {"custom_id": f"poll-{i}", "method": "POST", "url": ENDPOINT, "body": body}
            path.write_text(json.dumps(line) + "\n")
            async with sem:
                uploaded = await client.upload_file(path, purpose="batch")
                batch = await client.create_batch(input_file_id=uploaded.id, endpoint=ENDPOINT)
            tracked[batch.id] = float(batch.created_at or 0)

        await asyncio.gather(*(one(i) for i in range(n)))
    return tracked


def _route_calls(stats: Any) -> int:
    return int(sum(stats.requests.values()))


async def poller_cycles(base_url: str, tracked: dict[str, float], cycles: int) -> dict[str, Any]:
    """``cycles`` Poller cycles; API calls per cycle (client stats), 429s, statuses seen."""
    from batchpipe.stages.poll import Poller

    async with _client(base_url) as client:
        poller = Poller(client)
        per_cycle: list[int] = []
        statuses: Counter[str] = Counter()
        for _ in range(cycles):
            before = _route_calls(client.stats)
            result = await poller.poll(tracked)
            per_cycle.append(_route_calls(client.stats) - before)
            if set(result.batches) != set(tracked):
                raise SystemExit(f"the poller returned {len(result.batches)} of {len(tracked)} batches")
            statuses = Counter(str(b.get("status")) for b in result.batches.values())
        return {
            "calls": per_cycle,
            "poller_reported_calls": result.calls,
            "http_429": client.stats.rate_limited,
            "waits": client.stats.rate_limit_waits,
            "routes": {f"{m} {r}": c for (m, r), c in client.stats.requests.items()},
            "statuses": dict(statuses),
        }


async def wait_in_progress(base_url: str, tracked: dict[str, float], timeout_s: float = 20.0) -> None:
    """Poll (list pages) until no batch is ``validating`` any more (the emulator's 2 s validation)."""
    from batchpipe.stages.poll import Poller

    deadline = time.monotonic() + timeout_s
    async with _client(base_url) as client:
        while time.monotonic() < deadline:
            result = await Poller(client).poll(tracked)
            if all(b.get("status") != "validating" for b in result.batches.values()):
                return
            await asyncio.sleep(0.5)


async def naive_batchpipe_client(base_url: str, tracked: dict[str, float]) -> dict[str, Any]:
    """One retrieve per batch with batchpipe's own client (generous limit): the calls a cycle costs."""
    async with _client(base_url) as client:
        before = _route_calls(client.stats)
        for batch_id in tracked:
            await client.retrieve_batch(batch_id)
        return {"calls": _route_calls(client.stats) - before, "http_429": client.stats.rate_limited}


def naive_sdk(base_url: str, tracked: dict[str, float]) -> dict[str, Any]:
    """The user's loop with the openai SDK (``max_retries=0``): retrieve each batch; count 429 answers."""
    import openai

    client = openai.OpenAI(api_key=BENCH_API_KEY, base_url=base_url, max_retries=0)
    calls = limited = ok = 0
    began = time.perf_counter()
    for batch_id in tracked:
        calls += 1
        try:
            client.batches.retrieve(batch_id)
            ok += 1
        except openai.RateLimitError:
            limited += 1
    return {"calls": calls, "http_429": limited, "ok": ok, "elapsed_s": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=1000, help="In-flight batches (default 1,000).")
    parser.add_argument("--rpm", type=int, default=60, help="Rate limit of phase 2, requests/minute (60).")
    parser.add_argument("--cycles", type=int, default=3, help="Poller cycles under the rate limit (3).")
    parser.add_argument("--quick", action="store_true", help="Small size (200 batches).")
    parser.add_argument("--tmp", type=Path, default=None, help="Parent of the temporary work directory.")
    args = parser.parse_args()
    n = 200 if args.quick else args.batches
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    base = Path(tempfile.mkdtemp(prefix="bench-poll-", dir=args.tmp))
    try:
        with StandaloneEmulator(base / "emulator", flags=list(SLOW_FLAGS), log=base / "emulator.log") as emu:
            began = time.perf_counter()
            (base / "inputs").mkdir()
            tracked = asyncio.run(create_batches(emu.base_url, n, base / "inputs"))
            print(f"created {len(tracked)} batches in {time.perf_counter() - began:.1f} s on {emu.base_url}")

            asyncio.run(wait_in_progress(emu.base_url, tracked))
            free = asyncio.run(poller_cycles(emu.base_url, tracked, 1))
            naive = asyncio.run(naive_batchpipe_client(emu.base_url, tracked))
            print(f"phase 1 (rpm 10,000): statuses {free['statuses']}")
            print(f"  batchpipe Poller: {free['calls'][0]} calls per cycle  {free['routes']}")
            print(f"  naive retrieve each: {naive['calls']} calls per cycle")

            emu.restart([*SLOW_FLAGS, "--rpm-limit", str(args.rpm)])
            limited = asyncio.run(poller_cycles(emu.base_url, tracked, args.cycles))
            print(
                f"phase 2 (rpm {args.rpm}): batchpipe Poller, {args.cycles} cycles: calls {limited['calls']}, "
                f"429s {limited['http_429']}, pacing waits {limited['waits']}, statuses {limited['statuses']}"
            )
            emu.restart()
            sdk = naive_sdk(emu.base_url, tracked)
            print(
                f"  naive SDK loop (fresh window): {sdk['calls']} calls, {sdk['ok']} answered, "
                f"{sdk['http_429']} x 429 in {sdk['elapsed_s']:.1f} s"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(
        final_line(
            {
                "calls_per_cycle": free["calls"][0],
                "naive_calls_per_cycle": naive["calls"],
                "http_429": limited["http_429"],
                "naive_http_429": sdk["http_429"],
                "limited_calls_per_cycle": max(limited["calls"]),
                "limited_cycles": args.cycles,
                "rpm_limit": args.rpm,
                "batches": n,
            }
        )
    )


if __name__ == "__main__":
    main()
