"""Benchmark: polling many in-flight batches (issue "Catalog-scale speed and flat memory").

N batches (default 1,000) are created on a standalone ``batchpipe emulator serve`` in realistic speed mode
with a long per-request time (``--per-request-s 3600``), so every one stays ``validating``/``in_progress``
for the whole benchmark. Tiny one-line input files, uploaded and created 8 at a time.

1. Calls per poll cycle (generous rate limit): ``batchpipe.stages.poll.Poller.poll`` (list pages of 100, counted
   by the ``OpenAIClient``'s ``stats.requests``) vs the naive loop, one ``GET /v1/batches/{id}`` per batch.
2. Pacing (the client makes more calls than the limit allows): the emulator is restarted on the same state
   with ``--rpm-limit L --rate-window-s W`` (a fresh window; full: 20 per 20 s; ``--quick``: 10 per 5 s. The
   service counts per minute; the pacer reads only the remaining count and the reset time of each answer's
   ``x-ratelimit-*`` headers, so a shorter window tests the same waits in a third of the time) and Poller cycles
   run until ``L x --windows + 1`` calls were made (default 2 windows' worth), so the client must wait for the
   window to reset ``--windows`` times. Shown: calls, pacing waits
   (``stats.rate_limit_waits``), 429s (``stats.rate_limited``: target 0) and the achieved rate against the
   limit. Then it is restarted again (fresh window) and the naive loop runs with the official ``openai`` SDK
   as users write it (``client.batches.retrieve`` per batch, ``max_retries=0`` so each 429 is counted once).

FINAL line::

    FINAL bench=poll calls_per_cycle=<n> ... paced_calls=<n> pacing_waits=<n> http_429=<n>
    achieved_vs_limit=<x> ... load1=<min/median/max> cores=<n>

(single values are printed as value/value/value: one run, no pairs; these are counts, not timings.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
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
    Report,
    Spread,
    StandaloneEmulator,
    Target,
    machine_load,
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
            statuses = Counter(str(b.status) for b in result.batches.values())
        return {
            "calls": per_cycle,
            "poller_reported_calls": result.calls,
            "http_429": client.stats.rate_limited,
            "waits": client.stats.rate_limit_waits,
            "routes": {f"{m} {r}": c for (m, r), c in client.stats.requests.items()},
            "statuses": dict(statuses),
        }


async def paced_cycles(base_url: str, tracked: dict[str, float], min_calls: int) -> dict[str, Any]:
    """Poller cycles until at least ``min_calls`` API calls were made (more than the window allows): the
    client paces on ``x-ratelimit-*`` (waits counted in ``stats.rate_limit_waits``); returns calls, waits,
    429s and the wall seconds from the first call to the last answer."""
    from batchpipe.stages.poll import Poller

    async with _client(base_url) as client:
        poller = Poller(client)
        cycles = 0
        began = time.perf_counter()
        while _route_calls(client.stats) < min_calls:
            result = await poller.poll(tracked)
            if set(result.batches) != set(tracked):
                raise SystemExit(f"the poller returned {len(result.batches)} of {len(tracked)} batches")
            cycles += 1
        elapsed = time.perf_counter() - began
        return {
            "calls": _route_calls(client.stats),
            "cycles": cycles,
            "elapsed_s": elapsed,
            "http_429": client.stats.rate_limited,
            "waits": client.stats.rate_limit_waits,
        }


async def wait_in_progress(base_url: str, tracked: dict[str, float], timeout_s: float = 20.0) -> None:
    """Poll (list pages) until no batch is ``validating`` any more (the emulator's 2 s validation)."""
    from batchpipe.stages.poll import Poller

    deadline = time.monotonic() + timeout_s
    async with _client(base_url) as client:
        while time.monotonic() < deadline:
            result = await Poller(client).poll(tracked)
            if all(b.status != "validating" for b in result.batches.values()):
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
    parser.add_argument("--limit", type=int, default=20, help="Phase 2: requests per window (20).")
    parser.add_argument(
        "--window-s", type=float, default=20.0, help="Phase 2: window, seconds (20; the service's is 60)."
    )
    parser.add_argument("--windows", type=int, default=2, help="Phase 2: make limit x this + 1 calls (2).")
    parser.add_argument("--quick", action="store_true", help="200 batches; 10 requests per 5 s window.")
    parser.add_argument("--tmp", type=Path, default=None, help="Parent of the temporary work directory.")
    args = parser.parse_args()
    n = 200 if args.quick else args.batches
    limit, window_s = (10, 5.0) if args.quick else (args.limit, args.window_s)
    min_calls = limit * args.windows + 1  # more than the windows allow: the pacer must wait ``windows`` times
    report = Report("poll")
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

            window = ["--rpm-limit", str(limit), "--rate-window-s", str(window_s)]
            emu.restart([*SLOW_FLAGS, *window])
            load = machine_load()
            paced = asyncio.run(paced_cycles(emu.base_url, tracked, min_calls))
            report.add_loads([load, machine_load()])
            print(
                f"phase 2 ({limit} requests per {window_s:g} s window): batchpipe Poller, {paced['cycles']} cycles, "
                f"{paced['calls']} calls in {paced['elapsed_s']:.1f} s, pacing waits {paced['waits']}, "
                f"429s {paced['http_429']}",
                flush=True,
            )
            emu.restart([*SLOW_FLAGS, *window])
            sdk = naive_sdk(emu.base_url, tracked)
            print(
                f"  naive SDK loop (fresh window, max_retries=0): {sdk['calls']} calls, {sdk['ok']} answered, "
                f"{sdk['http_429']} x 429 in {sdk['elapsed_s']:.1f} s"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    one = Spread.of
    report.figure("calls_per_cycle", one([free["calls"][0]]), Target("<=", math.ceil(n / 100) + 1))
    report.value("naive_calls_per_cycle", naive["calls"])
    report.figure("paced_calls", one([paced["calls"]]), Target(">=", min_calls))
    report.figure("pacing_waits", one([paced["waits"]]), Target(">=", args.windows))
    report.figure("http_429", one([paced["http_429"]]), Target("<=", 0))
    limit_per_s = limit / window_s
    achieved_per_s = paced["calls"] / paced["elapsed_s"]
    report.value("limit_per_min", limit_per_s * 60)
    report.value("achieved_per_min", achieved_per_s * 60)
    # fixed windows: the first window starts before the first call, so a tight pacer lands a little above 1
    report.figure("achieved_vs_limit", one([achieved_per_s / limit_per_s]), Target(">=", 0.8))
    report.value("naive_http_429", sdk["http_429"])
    report.value("rate_limit", limit)
    report.value("window_s", window_s)
    report.value("batches", n)
    report.final()


if __name__ == "__main__":
    main()
