"""Wiring for ``batchpipe run``: job spec → API (embedded emulator or OpenAI) → runner → summary.

Kept apart from the CLI so tests and benchmarks run a whole job in-process with the same code path.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from batchpipe.adapters.openai import ApiSettings, OpenAIClient
from batchpipe.domain.lifecycle import clock_from_env
from batchpipe.domain.redact import redact, remember_secret
from batchpipe.errors import BatchpipeError, InputError
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.validate import ManifestItems
from batchpipe.ports import BatchApi, ImageStore, Ledger
from batchpipe.provenance.trust import TrustConfig
from batchpipe.provenance.verify import C2paVerifier
from batchpipe.runtime import costguard
from batchpipe.runtime.costguard import SpendEstimate
from batchpipe.runtime.images import ImageReader
from batchpipe.runtime.locations import (
    describe_store,
    is_shared_ledger,
    ledger_exists,
    open_ledger_url,
    open_store_url,
)
from batchpipe.runtime.matrix_run import MatrixRun
from batchpipe.runtime.progress import (
    CountingVerifier,
    ErrorCount,
    PlainDisplay,
    RunDisplay,
    error_counts,
    retry_command,
    retry_hint,
    summary_record,
)
from batchpipe.runtime.runner import Runner, RunSummary
from batchpipe.runtime.settings import ApiTiming, RunOptions, api_timing, options_from_spec

log = structlog.get_logger(__name__)

__all__ = [
    "EMULATOR_API_KEY",
    "ProgressReporter",
    "RunRequest",
    "api_settings",
    "execute",
    "execute_async",
    "guard_cost",
    "is_loopback",
    "request_from_spec",
    "run_job",
    "summary_lines",
    "worker_runner_factory",
]

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

    Lines read ``progress: built 20000 items in 20 shard(s)`` (event ``built``, always shown) and
    ``progress: batches completed 5, in_progress 3; requests answered 6210; items collected 4210/20000``
    (event ``poll``, throttled).
    """

    def __init__(
        self, echo: Callable[[str], None], *, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._echo = echo
        self._every_s = every_s
        self._clock = clock
        self._last = -1e9

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        """Receive one event (``built`` or ``poll``) from the runner."""
        if event == "built":
            self._echo(f"progress: built {data.get('items', 0)} items in {data.get('shards', 0)} shard(s)")
            return
        now = self._clock()
        if now - self._last < self._every_s:
            return
        self._last = now
        states = ", ".join(f"{k} {v}" for k, v in sorted(data.get("batch_states", {}).items()))
        self._echo(
            f"progress: batches {states or 'none'}; requests answered {data.get('rendered', 0)}; "
            f"items collected {data.get('items_done', 0)}/{data.get('items_total', 0)}"
        )


def is_loopback(base_url: str | None) -> bool:
    """True for an API on this machine (``127.0.0.0/8``, ``localhost``, ``[::1]``)."""
    if not base_url:
        return False
    host = httpx.URL(base_url).host
    return host in ("localhost", "::1") or host.startswith("127.")


#: Error codes named in the end-of-run summary (the rest are counted in one line).
TOP_ERROR_CODES = 5


def summary_lines(
    summary: RunSummary,
    *,
    output_dir: Path,
    images_at: str | None = None,
    errors: Sequence[ErrorCount] = (),
    workdir: Path | None = None,
) -> list[str]:
    """Human-readable end-of-run lines: counts by status, batches, cost, where the images are (``images_at``, a
    store URL, else ``output_dir``), and the :data:`TOP_ERROR_CODES` most frequent error codes of ``errors`` with
    their counts, an example and the ``batchpipe retry`` command that runs them again (``workdir``: the run's, named
    in the command unless it is the default)."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.items.items())) or "no items"
    lines = [
        f"run {summary.run_id}: {counts}",
        f"batches: {summary.batches}; cost ${summary.cost_usd:.4f} (batch prices)",
        f"images in {images_at or output_dir}",
    ]
    if errors:
        total = sum(e.count for e in errors)
        lines.append(f"not succeeded: {total} item(s), by error code (most frequent first):")
        for error in errors[:TOP_ERROR_CODES]:
            kind = "retryable" if error.retryable else "final"
            example = f"; e.g. {error.example_key}: {error.example_message}" if error.example_message else ""
            lines.append(f"  {error.code} × {error.count} ({', '.join(sorted(error.statuses))}, {kind}){example}")
            lines.append(f"    retry: {retry_command(error, job=summary.job, workdir=workdir)}")
            hint = retry_hint(error)
            if hint:
                lines.append(f"    ({hint})")
        rest = errors[TOP_ERROR_CODES:]
        if rest:
            lines.append(f"  ... and {sum(e.count for e in rest)} item(s) under {len(rest)} other code(s)")
    if summary.skipped_unchanged:
        lines.append(f"skipped {summary.skipped_unchanged} item(s) already succeeded with the same request")
    if summary.duplicates:
        lines.append(f"{summary.duplicates} duplicate key(s) were renamed (see the warnings above)")
    if summary.unknown_batches:
        ids = ", ".join(str(u["batch_id"]) for u in summary.unknown_batches[:10])
        lines.append(
            f"WARNING: the service holds {len(summary.unknown_batches)} batch(es) with this run's metadata that the "
            f"ledger does not know ({ids}); estimated cost exposure ${summary.unknown_cost_usd:.4f}. They are not "
            "collected; cancel them with the service if they are still running"
        )
    if not summary.finished:
        lines.append("the run is not finished: run the same command again to resume it")
    return lines


@dataclass
class RunRequest:
    """Everything one run needs besides the API: what to run and where results go.

    ``items``: a callable that streams :class:`~batchpipe.domain.items.Item` or problem objects (called once per
    build). ``spec_hash``: identifies the input (recorded on the run). ``source_name``: the file problems are
    reported against. ``trust``: the C2PA trust setting (``default`` becomes ``emulator`` on the emulator).
    ``prepare(client, ledger)``: async work before a new run's build (see ``Runner.run``). ``session()``: an
    async context around the whole run, new or resumed (a matrix job's loopback mirror of reference photos).
    ``spec_path``: the job spec, remembered on the run so ``batchpipe retry`` can find the job's session.
    ``policy``: the model lifecycle policy (:class:`~batchpipe.domain.lifecycle.ModelPolicy`) the items were checked
    with; the runner asks the service about each model with it before any upload. ``known_models``: the models
    the job names in its spec (``[defaults]``, variants), asked about before anything else; ``model_line``: the
    spec line of ``[defaults] model``, for the refusal. ``ledger_url`` / ``store_url``: where the ledger and the
    images live (:mod:`batchpipe.runtime.locations`; None: the workdir's SQLite file and ``output_dir``).
    """

    job: str
    spec_hash: str
    items: Callable[[], Iterator[Any]]
    source_name: str
    output_dir: Path
    trust: str
    options: RunOptions
    prepare: Callable[[Any, Any], Awaitable[None]] | None = None
    session: Callable[[], AbstractAsyncContextManager[None]] | None = None
    spec_path: Path | None = None
    policy: Any = None
    known_models: frozenset[str] = frozenset()
    model_line: int | None = None
    max_cost_usd: float | None = None
    estimate_items: Callable[[], Iterator[Any]] | None = None
    ledger_url: str | None = None
    store_url: str | None = None
    #: what the cost guard estimated (USD) and the cap it applied (None: no cap), shown against the cost so far
    estimate_usd: float | None = None
    cap_usd: float | None = None
    #: no cap: the runner sums a new run's estimate while it builds and prints it then (:func:`guard_cost`)
    estimate_in_build: bool = False


def request_from_spec(
    *,
    job_spec: Path | None,
    manifest: Path | None,
    job_name: str | None,
    workdir: Path,
    limit: int | None,
    skip_invalid: bool,
    models_file: Path | None = None,
    clock: Any = None,
    on_warning: Callable[[str], None] | None = None,
    timing: ApiTiming | None = None,
    stop_after: str | None = None,
    trust: str | None = None,
    collect_workers: int | None = None,
) -> RunRequest:
    """A :class:`RunRequest` for a TOML job spec or a plain JSONL manifest (raises ``InputError`` subclasses).

    ``models_file`` (``--models FILE``), ``clock`` and ``on_warning`` configure the model lifecycle policy
    (:meth:`batchpipe.input.jobspec.JobSpec.load`). ``timing`` (:func:`~batchpipe.runtime.settings.api_timing`),
    ``stop_after``, ``trust`` (``--trust``, over the spec's ``[c2pa] trust``) and ``collect_workers``
    (``--collect-workers``, over the spec's ``[run] collect_workers``) go into the run's settings, built here once.
    """
    model_args: dict[str, Any] = {
        "models_file": models_file,
        "clock": clock,
        "on_warning": on_warning,
        "defer_lifecycle": True,  # the service is asked first (execute_async); its shutdown_date wins
    }
    if job_spec is not None:
        spec = JobSpec.load(job_spec, workdir=workdir, **model_args)
    else:
        assert manifest is not None and job_name is not None
        spec = JobSpec.for_manifest(manifest, job_name, workdir=workdir, **model_args)
    options = options_from_spec(
        spec.run,
        workdir=workdir,
        limit=limit,
        skip_invalid=skip_invalid,
        models=spec.models,
        stop_after=stop_after,
        timing=timing,
        **({"collect_workers": collect_workers} if collect_workers is not None else {}),
    )
    known = {str(spec.defaults["model"])} if isinstance(spec.defaults.get("model"), str) else set()
    if spec.matrix is not None:
        known |= {str(v.request["model"]) for v in spec.matrix.variants if isinstance(v.request.get("model"), str)}
    items: Callable[[], Iterator[Any]] = ManifestItems(spec)  # a re-run skips unchanged rows unrendered
    prepare: Callable[[Any, Any], Awaitable[None]] | None = None
    session: Callable[[], AbstractAsyncContextManager[None]] | None = None
    if spec.matrix is not None:  # products x variants: references uploaded/mirrored before the build
        matrix_run = MatrixRun(spec, workdir=workdir, limit=limit, skip_invalid=options.skip_invalid)
        items, prepare, session = matrix_run.items, matrix_run.prepare, matrix_run.session
    return RunRequest(
        job=spec.name,
        spec_hash=_spec_hash(spec),
        items=items,
        source_name=spec.source_name,
        output_dir=spec.output_dir,
        trust=trust if trust is not None else spec.c2pa_trust,
        options=options,
        prepare=prepare,
        session=session,
        spec_path=spec.spec_path.resolve() if spec.spec_path is not None else None,
        policy=spec.policy,
        known_models=frozenset(known),
        model_line=spec.model_line,
        max_cost_usd=spec.run.max_cost_usd,
        # plain items (no reference uploads to estimate); rows already succeeded from the same source unrendered
        estimate_items=ManifestItems(spec, limit=limit),
    )


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
    trust: str | None = None,
    models_file: Path | None = None,
    clock: Any = None,
    collect_workers: int | None = None,
    max_cost_usd: float | None = None,
    ledger_url: str | None = None,
    store_url: str | None = None,
    display: RunDisplay | None = None,
    write_report: bool = False,
    plan_only: bool = False,
) -> int:
    """Run a job to the end (or to a stop) and return the CLI exit code (0 all succeeded, 1 not all).

    ``base_url`` None with ``api_label == "emulator"`` starts the embedded emulator (state in
    ``<workdir>/emulator``), configured by ``emulator_config`` (an ``EmulatorConfig``) when given.
    Raises :class:`~batchpipe.errors.InputError` for bad input (nothing submitted) and
    :class:`~batchpipe.errors.ApiError` / ``IndeterminateSubmissionError`` when the run must stop.
    ``models_file`` / ``clock``: the model table overrides and the lifecycle clock (default: ``BATCHPIPE_NOW``
    or the system clock); lifecycle warnings go to ``echo``. ``collect_workers`` (``--collect-workers``) overrides
    the job spec's ``[run] collect_workers``. ``max_cost_usd`` (``--max-cost``) overrides the spec's
    ``[run] max_cost_usd``: the estimate is printed first, and above the cap nothing is submitted
    (:class:`~batchpipe.runtime.costguard.CostCapError`, exit 2).
    ``display`` and ``write_report``: see :func:`execute`.
    ``ledger_url`` / ``store_url``: see :class:`RunRequest`. ``plan_only`` (``--plan-only``, a shared ledger
    only): validate, record the items and build and publish the shards, then return 0 and leave the rest to
    ``batchpipe worker`` processes. Raises :class:`~batchpipe.errors.InputError` for ``plan_only`` without a
    PostgreSQL ledger.
    """
    if plan_only and not is_shared_ledger(ledger_url):
        raise InputError(
            "--plan-only needs a shared ledger (--ledger postgresql://...) for workers to join", file="run"
        )
    workdir = workdir.resolve()
    local = api_label == "emulator" or is_loopback(base_url)
    request = request_from_spec(
        job_spec=job_spec,
        manifest=manifest,
        job_name=job_name,
        workdir=workdir,
        limit=limit,
        skip_invalid=skip_invalid,
        models_file=models_file,
        clock=clock or clock_from_env(environ),
        on_warning=lambda message: echo(f"warning: {message}"),
        timing=api_timing(local=local, poll_interval_s=poll_interval_s),
        stop_after="build" if plan_only else stop_after,
        trust=trust,
        collect_workers=collect_workers,
    )
    request.ledger_url, request.store_url = ledger_url, store_url
    guard_cost(request, cap_usd=max_cost_usd, echo=echo, spec_name=str(job_spec or manifest))
    return execute(
        request,
        api_label=api_label,
        base_url=base_url,
        environ=environ,
        echo=echo,
        emulator_config=emulator_config,
        display=display,
        write_report=write_report,
    )


def guard_cost(request: RunRequest, *, cap_usd: float | None, echo: Callable[[str], None], spec_name: str) -> None:
    """Print what the run is estimated to spend, and raise :class:`~batchpipe.runtime.costguard.CostCapError` when
    it is above ``cap_usd`` (``--max-cost``), else the spec's ``[run] max_cost_usd``.

    With a cap, a new run's estimate is a pass over the manifest before anything is opened or sent, so a run
    above it is refused at once. Without one, a new run's estimate is summed while it is built
    (``request.estimate_in_build``; the runner prints the same line after the build): one pass over the
    manifest instead of two (measured: the separate pass was a fifth of the build phase's CPU at 100,000
    items). A resumed run's estimate (its pending items) is always printed first."""
    cap = cap_usd if cap_usd is not None else request.max_cost_usd
    ledger = (
        open_ledger_url(request.ledger_url, request.options.workdir)
        if ledger_exists(request.ledger_url, request.options.workdir)
        else None
    )
    try:
        if cap is None:
            resumed = None if ledger is None else costguard.estimate_resumed(
                ledger, request.job, models=request.options.models
            )  # fmt: skip
            if resumed is None:
                request.estimate_in_build = True
                return
            estimate = resumed
        else:
            estimate = costguard.estimate_run(
                ledger, request.job, request.estimate_items or request.items, models=request.options.models
            )
    finally:
        if ledger is not None:
            ledger.close()
    echo(estimate.line(cap))
    request.estimate_usd, request.cap_usd = estimate.cost_usd, cap
    costguard.check_cap(
        estimate,
        cap,
        source="command line" if cap_usd is not None else spec_name,
        field="--max-cost" if cap_usd is not None else "run.max_cost_usd",
        raise_hint=f"pass --max-cost {estimate.cost_usd * 1.1 + 0.005:.2f} (or raise [run] max_cost_usd in the job "
        "spec), or narrow the run with --limit N",
    )


def execute(
    request: RunRequest,
    *,
    api_label: str,
    base_url: str | None,
    environ: Mapping[str, str],
    echo: Callable[[str], None] = print,
    emulator_config: Any = None,
    display: RunDisplay | None = None,
    write_report: bool = False,
) -> int:
    """Run ``request`` against the API and print the summary; returns the exit code (0 all succeeded, else 1).

    ``display`` (:mod:`batchpipe.runtime.progress`) shows the run's progress and its summary; default: a
    :class:`~batchpipe.runtime.progress.PlainDisplay` printing through ``echo``. ``write_report``: when the run
    finished, write its HTML contact sheet (:func:`batchpipe.runtime.report.write_report`) to
    ``<workdir>/reports/<run_id>/`` and name it in the summary (a report that fails is a warning, not a failed
    run)."""
    display = display or PlainDisplay(echo)
    if request.estimate_usd is not None:
        display.estimate_usd = request.estimate_usd
    if request.cap_usd is not None:
        display.cap_usd = request.cap_usd
    with display.active():
        summary = asyncio.run(
            execute_async(
                request,
                api_label=api_label,
                base_url=base_url,
                environ=environ,
                echo=display.echo,
                emulator_config=emulator_config,
                display=display,
            )
        )
    images_at = describe_store(request.store_url, request.output_dir)
    if request.options.stop_after == "build" and is_shared_ledger(request.ledger_url):  # --plan-only
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.items.items())) or "no items"
        echo(f"planned run {summary.run_id}: {counts}; images and shard files in {images_at}")
        echo("start `batchpipe worker --ledger ... --store ... --api ...` processes to work on it")
        return 0
    ledger = open_ledger_url(request.ledger_url, request.options.workdir)
    try:
        errors = error_counts(ledger, run_id=summary.run_id)
    finally:
        ledger.close()
    code = 0 if summary.all_succeeded else 1
    workdir = request.options.workdir
    lines = summary_lines(summary, output_dir=request.output_dir, images_at=images_at, errors=errors, workdir=workdir)
    if write_report and summary.finished:
        lines.append(_write_run_report(request, summary.run_id, environ))
    record = summary_record(
        summary,
        errors=errors,
        exit_code=code,
        workdir=workdir,
        images_at=images_at,
        estimate_usd=display.estimate_usd,
        cap_usd=display.cap_usd,
        c2pa=display.snapshot().c2pa,
    )
    display.finish(lines, record)
    return code


def _write_run_report(request: RunRequest, run_id: str, environ: Mapping[str, str]) -> str:
    """Write the contact sheet of ``run_id`` into ``<workdir>/reports/<run_id>/``; the summary line naming it (or
    saying why there is none)."""
    from batchpipe.runtime.report import write_report  # lazy: Pillow is only needed here

    folder = request.options.workdir / "reports" / run_id
    ledger = open_ledger_url(request.ledger_url, request.options.workdir)
    try:
        result = write_report(ledger, folder, run_id=run_id, models=request.options.models, reader=ImageReader(environ))
    except (OSError, BatchpipeError) as exc:
        log.warning("report.failed", run_id=run_id, error=redact(str(exc)))
        return f"report: not written ({redact(str(exc))}); batchpipe report --run {run_id} tries again"
    finally:
        ledger.close()
    return f"report: {result.index} ({result.thumbs_made + result.thumbs_reused} thumbnail(s), {result.seconds:.1f} s)"


def api_settings(api_label: str, base_url: str | None, environ: Mapping[str, str]) -> ApiSettings:
    """The client settings for ``api_label`` / ``base_url``: the key and options from ``environ`` (``OPENAI_*``;
    the key is remembered for redaction wherever a server echoes it), a placeholder key for emulators."""
    settings = ApiSettings.from_env(environ)
    if settings.api_key is not None:  # redacted wherever a server echoes it (ledger, exports, logs)
        remember_secret(settings.api_key.get_secret_value())
    if base_url:
        settings = settings.model_copy(update={"base_url": base_url})
    if api_label == "emulator" or (settings.api_key is None and api_label != "openai"):
        settings = settings.model_copy(update={"api_key": SecretStr(EMULATOR_API_KEY)})
    return settings


async def execute_async(
    request: RunRequest,
    *,
    api_label: str,
    base_url: str | None,
    environ: Mapping[str, str],
    echo: Callable[[str], None] = print,
    emulator_config: Any = None,
    display: RunDisplay | None = None,
) -> RunSummary:
    """The async body of :func:`execute`.

    ``api_label``: ``emulator`` (embedded when ``base_url`` is None), ``openai``, or a URL; the API key comes
    from ``environ`` (``OPENAI_*``), or is a placeholder for emulators, which accept any bearer token.
    ``display``: receives the runner's progress events and every image's C2PA state (default: progress lines
    through ``echo``, :class:`ProgressReporter`).
    """
    emulated = api_label == "emulator"
    options = request.options
    trust = request.trust
    if emulated and trust == "default":
        trust = "emulator"  # the emulator's test root is added to the default lists
    verifier: Any = C2paVerifier(TrustConfig.from_setting(trust))
    if display is not None:
        verifier = CountingVerifier(verifier, display.c2pa)
    store = open_store_url(request.store_url, request.output_dir, environ)
    ledger = open_ledger_url(request.ledger_url, options.workdir)
    async with AsyncExitStack() as stack:
        stack.callback(ledger.close)
        if emulated and base_url is None:
            from batchpipe.emulator.config import EmulatorConfig
            from batchpipe.emulator.server import EmbeddedEmulator

            if emulator_config is not None:
                config = emulator_config
            elif request.policy is not None:  # the job's model table and lifecycle clock ([models], --models)
                config = EmulatorConfig(
                    state_dir=options.workdir / "emulator", models=request.policy.table, now=request.policy.now
                )
            else:
                config = EmulatorConfig(state_dir=options.workdir / "emulator")
            emulator = stack.enter_context(EmbeddedEmulator(config))
            base_url = emulator.base_url
            echo(
                f"No API key: using the embedded emulator at {base_url} (nothing is sent to OpenAI, nothing is billed)."
            )
        settings = api_settings(api_label, base_url, environ)
        if request.session is not None:
            await stack.enter_async_context(request.session())
        async with OpenAIClient(settings) as client:
            if request.policy is not None and request.known_models:
                # once per model per run, before any upload or build: the service's shutdown_date wins
                await request.policy.ask_service(client, request.known_models)
                field = "defaults.model" if request.model_line is not None else "model"
                request.policy.refuse(
                    request.known_models, file=request.source_name, line=request.model_line, field=field
                )
            runner = Runner(
                ledger,
                client,
                options=options,
                output_dir=request.output_dir,
                verifier=verifier,
                api_label=api_label,
                progress=display.progress if display is not None else ProgressReporter(echo),
                model_policy=request.policy,
                store=store,
                publish_shards=is_shared_ledger(request.ledger_url),
                cost_cap_usd=request.cap_usd,
                on_estimate=_estimate_shown(echo, display) if request.estimate_in_build else None,
            )
            return await runner.run(
                request.job,
                request.spec_hash,
                request.items,
                source_name=request.source_name,
                trust=trust,  # the setting the images were verified with (emulator runs: "emulator")
                prepare=request.prepare,
                spec_path=str(request.spec_path) if request.spec_path else None,
            )


def _estimate_shown(echo: Callable[[str], None], display: RunDisplay | None) -> Callable[[SpendEstimate], None]:
    """What the runner calls with the estimate it summed during the build: print the cost guard's line (no cap)
    and show the estimate against the cost so far."""

    def shown(estimate: SpendEstimate) -> None:
        echo(estimate.line(None))
        if display is not None:
            display.estimate_usd = estimate.cost_usd

    return shown


# -- batchpipe worker ------------------------------------------------------------------------------------------
def worker_runner_factory(
    ledger: Ledger,
    client: BatchApi,
    store: ImageStore,
    *,
    workdir: Path,
    api_label: str,
    local: bool,
    poll_interval_s: float | None,
    trust: str | None,
    owner: str,
    lease_s: float,
    echo: Callable[[str], None] = print,
) -> Callable[[dict[str, object]], Awaitable[Runner]]:
    """How ``batchpipe worker`` makes the :class:`Runner` of a run it joins, from the run's ledger row: the
    options of the job spec the run recorded (``spec_path``; the defaults, with a warning, when this machine cannot
    read it), the run's C2PA trust (``trust``, ``--trust``, wins; ``default`` on the emulator means ``emulator``),
    its output folder, this worker's ``owner`` name and ``lease_s``, and shard files read from ``store``."""
    timing = api_timing(local=local, poll_interval_s=poll_interval_s)

    async def make(info: dict[str, object]) -> Runner:
        options: RunOptions | None = None
        spec_path = info.get("spec_path")
        if spec_path:
            try:
                spec = JobSpec.load(Path(str(spec_path)), workdir=workdir, defer_lifecycle=True)
                options = options_from_spec(spec.run, workdir=workdir, models=spec.models, timing=timing)
            except InputError as exc:
                echo(f"warning: run {info.get('run_id')}: cannot read its job spec here ({exc}); default settings")
        if options is None:
            options = RunOptions(workdir=workdir, **timing)
        run_trust = trust or str(info.get("trust") or "default")
        if run_trust == "default" and (api_label == "emulator" or str(info.get("api")) == "emulator"):
            run_trust = "emulator"
        return Runner(
            ledger,
            client,
            options=options,
            output_dir=Path(str(info.get("output_dir") or workdir / "out")),
            verifier=C2paVerifier(TrustConfig.from_setting(run_trust)),
            api_label=api_label,
            store=store,
            owner=owner,
            lease_s=lease_s,
            publish_shards=True,
        )

    return make
