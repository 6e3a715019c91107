"""Wiring for ``batchpipe run``: job spec → API (embedded emulator or OpenAI) → runner → summary.

Kept apart from the CLI so tests and benchmarks run a whole job in-process with the same code path.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from batchpipe.ledger import open_ledger
from batchpipe.runner import Runner, RunOptions, RunSummary

__all__ = ["EMULATOR_API_KEY", "ProgressReporter", "run_job", "run_job_async", "summary_lines"]

#: What batchpipe sends as the bearer token to the embedded emulator (it accepts any token).
EMULATOR_API_KEY = "emulator-local-no-key"


def _spec_hash(spec: Any) -> str:
    digest = hashlib.sha256()
    for path in (spec.spec_path, spec.manifest_path):
        if path is not None:
            digest.update(str(path).encode())
            digest.update(Path(path).read_bytes() if Path(path).stat().st_size < 64 << 20 else b"")
    return digest.hexdigest()


class ProgressReporter:
    """Turns runner progress events into at most one line every ``every_s`` seconds (stderr via ``echo``).

    Lines read ``progress: built 20000 items in 20 shards`` and ``progress: batches in_progress 3, completed
    5; images collected 4210``.
    """

    def __init__(self, echo: Callable[[str], None], *, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._echo = echo
        self._every_s = every_s
        self._clock = clock
        self._last = -1e9

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        """Receive one event (``built``, ``poll``, ``collected``) from the runner."""
        if event == "built":
            self._echo(f"progress: built {data.get('items', 0)} items in {data.get('shards', 0)} shard(s)")
            return
        now = self._clock()
        if now - self._last < self._every_s and not data.get("force"):
            return
        self._last = now
        states = ", ".join(f"{k} {v}" for k, v in sorted(data.get("batch_states", {}).items()))
        self._echo(f"progress: batches {states or 'none'}; items {data.get('items_done', 0)}/{data.get('items_total', 0)} done")


def summary_lines(summary: RunSummary, *, output_dir: Path) -> list[str]:
    """Human-readable end-of-run lines: counts by status, batches, cost, where the images are."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.items.items())) or "no items"
    lines = [
        f"run {summary.run_id}: {counts}",
        f"batches: {summary.batches}; cost ${summary.cost_usd:.4f} (batch prices)",
        f"images in {output_dir}",
    ]
    if summary.skipped_unchanged:
        lines.append(f"skipped {summary.skipped_unchanged} item(s) already succeeded with the same request")
    if summary.duplicates:
        lines.append(f"{summary.duplicates} duplicate key(s) were renamed (see the warnings above)")
    if not summary.finished:
        lines.append("the run is not finished: run the same command again to resume it")
    return lines


def run_job(
    *,
    job_spec: Path | None,
    manifest: Path | None,
    job_name: str | None,
    api_label: str,
    base_url: str | None,
    environ: Mapping[str, str],
    workdir: Path,
    limit: int | None = None,
    skip_invalid: bool = False,
    poll_interval_s: float | None = None,
    echo: Callable[[str], None] = print,
    emulator_config: Any = None,
    stop_after: str | None = None,
) -> int:
    """Run a job to the end (or to a stop) and return the CLI exit code (0 all succeeded, 1 not all).

    ``base_url`` None with ``api_label == "emulator"`` starts the embedded emulator (state in
    ``<workdir>/emulator``), configured by ``emulator_config`` (an ``EmulatorConfig``) when given.
    Raises :class:`~batchpipe.errors.InputError` for bad input (nothing submitted) and
    :class:`~batchpipe.errors.ApiError` / ``IndeterminateSubmissionError`` when the run must stop.
    """
    summary, output_dir = asyncio.run(
        run_job_async(
            job_spec=job_spec,
            manifest=manifest,
            job_name=job_name,
            api_label=api_label,
            base_url=base_url,
            environ=environ,
            workdir=workdir,
            limit=limit,
            skip_invalid=skip_invalid,
            poll_interval_s=poll_interval_s,
            echo=echo,
            emulator_config=emulator_config,
            stop_after=stop_after,
        )
    )
    for line in summary_lines(summary, output_dir=output_dir):
        echo(line)
    return 0 if summary.all_succeeded else 1


async def run_job_async(
    *,
    job_spec: Path | None,
    manifest: Path | None,
    job_name: str | None,
    api_label: str,
    base_url: str | None,
    environ: Mapping[str, str],
    workdir: Path,
    limit: int | None = None,
    skip_invalid: bool = False,
    poll_interval_s: float | None = None,
    echo: Callable[[str], None] = print,
    emulator_config: Any = None,
    stop_after: str | None = None,
) -> tuple[RunSummary, Path]:
    """The async body of :func:`run_job`: returns the summary and the output directory."""
    from batchpipe.client import ApiSettings, OpenAIClient
    from batchpipe.jobspec import JobSpec
    from batchpipe.provenance.trust import TrustConfig
    from batchpipe.provenance.verify import C2paVerifier
    from batchpipe.validate import make_items

    workdir = workdir.resolve()  # noqa: ASYNC240 - once, before any I/O starts
    if job_spec is not None:
        spec = JobSpec.load(job_spec, workdir=workdir)
    else:
        assert manifest is not None and job_name is not None
        spec = JobSpec.for_manifest(manifest, job_name, workdir=workdir)
    emulated = api_label == "emulator"
    options = RunOptions(
        workdir=workdir,
        limit=limit,
        skip_invalid=skip_invalid or spec.run.skip_invalid,
        max_attempts=spec.run.max_attempts,
        enqueued_token_budget=dict(spec.run.enqueued_token_budget),
        max_shard_requests=spec.run.max_requests_per_shard,
        max_shard_bytes=spec.run.max_shard_bytes,
        poll_interval_s=poll_interval_s or (0.2 if emulated else 30.0),
        max_poll_interval_s=2.0 if emulated else 300.0,
        output_grace_s=30.0 if emulated else 600.0,
        stop_after=stop_after,
    )
    trust = spec.c2pa_trust
    if emulated and trust == "default":
        trust = "emulator"  # the emulator root is added to the default lists
    verifier = C2paVerifier(TrustConfig.from_setting(trust))
    ledger = open_ledger(workdir)
    with ExitStack() as stack:
        stack.callback(ledger.close)
        if emulated and base_url is None:
            from batchpipe.emulator.config import EmulatorConfig
            from batchpipe.emulator.server import EmbeddedEmulator

            config = emulator_config or EmulatorConfig(state_dir=workdir / "emulator")
            emulator = stack.enter_context(EmbeddedEmulator(config))
            base_url = emulator.base_url
            echo(
                f"No API key: using the embedded emulator at {base_url} (nothing is sent to OpenAI, nothing is billed)."
            )
        if emulated:
            settings = ApiSettings(base_url=base_url or "", api_key=EMULATOR_API_KEY)
        else:
            settings = ApiSettings.from_env(environ)
            if base_url:
                settings = settings.model_copy(update={"base_url": base_url})
        async with OpenAIClient(settings) as client:
            runner = Runner(
                ledger,
                client,
                options=options,
                output_dir=spec.output_dir,
                verifier=verifier,
                api_label=api_label,
                progress=ProgressReporter(echo),
            )

            def items() -> Iterator[Any]:
                return iter(make_items(spec))

            summary = await runner.run(spec.name, _spec_hash(spec), items, source_name=spec.source_name)
    return summary, spec.output_dir
