"""The ``batchpipe`` command line.

Exit codes: 0 every item succeeded; 1 the run finished but some items did not succeed (failed, invalid,
expired, ...); 2 bad input or usage (nothing was submitted); 3 the run stopped before finishing (API
unusable, an indeterminate submission): run the same command again to resume.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import click
import orjson
from rich.console import Console
from rich.table import Table

from batchpipe import __version__
from batchpipe.adapters.openai.settings import check_base_url
from batchpipe.cli.exits import EXIT_INCOMPLETE, EXIT_INPUT, EXIT_OK, exit_code, guarded, messages
from batchpipe.cli.validate import validate_command
from batchpipe.domain.items import Item, ItemStatus
from batchpipe.domain.lifecycle import ModelPolicy, clock_from_env
from batchpipe.domain.modeltable import shipped_table
from batchpipe.errors import BatchpipeError, InputError
from batchpipe.input.jobspec import MAX_COLLECT_WORKERS
from batchpipe.logs import configure_logging, json_only, write_json
from batchpipe.ports import Ledger
from batchpipe.provenance.cli import verify_command
from batchpipe.provenance.verify import C2PA_STATES
from batchpipe.runtime import costguard, reprocess
from batchpipe.runtime.locations import (
    LEDGER_ENV,
    STORE_ENV,
    describe_ledger,
    is_shared_ledger,
    ledger_exists,
    open_ledger_url,
)
from batchpipe.runtime.progress import (
    FAILURE_STATUSES,
    JsonDisplay,
    LiveDisplay,
    PlainDisplay,
    RunDisplay,
    error_counts_of,
    message_level,
    retry_command,
    retry_hint,
)
from batchpipe.runtime.settings import RunOptions, api_timing
from batchpipe.runtime.wiring import RunRequest, execute, is_loopback, run_job

__all__ = ["main"]

#: The documented default work directory (ledger, shards, images, emulator state), under the current directory.
DEFAULT_WORKDIR: Final = Path(".batchpipe")

_models_option = click.option(
    "--models",
    "models_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='A TOML file of [models."NAME"] rows added to or overriding the shipped model table.',
)

_max_cost_option = click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="USD",
    help="Submit nothing if the estimated cost (USD, batch prices) is above this (run: overrides [run] max_cost_usd).",
)

_workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORKDIR,
    show_default=True,
    help="Ledger, shards, images and emulator state live here.",
)

_ledger_option = click.option(
    "--ledger",
    "ledger_url",
    envvar=LEDGER_ENV,
    show_envvar=True,
    default=None,
    help="The ledger: postgresql://... (shared by workers), sqlite:///FILE; default <workdir>/ledger.sqlite.",
)

_store_option = click.option(
    "--store",
    "store_url",
    envvar=STORE_ENV,
    show_envvar=True,
    default=None,
    help="Where images go: s3://bucket/prefix (endpoint, keys: AWS_* variables) or a folder; default the job's.",
)


#: Commands whose ``--log-json`` output ends with one JSON summary object on stdout, even when they fail.
_SUMMARIZED_COMMANDS: Final = frozenset({"run", "retry"})


class _Batchpipe(click.Group):
    """The ``batchpipe`` group: with ``--log-json`` before the command, click's own errors (a usage error, a bad
    option value) are JSON too: an ``error`` event on stderr, and for ``run`` / ``retry`` the JSON summary on
    stdout, so not one plain line is printed."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """As :meth:`click.Group.main`; see the class doc for ``--log-json``."""
        argv = list(sys.argv[1:] if args is None else args)
        command = next((a for a in argv if a in self.commands), None)
        head = argv[: argv.index(command)] if command is not None else argv
        wants_json = "--log-json" in head and head[::-1].index("--log-json") < (
            head[::-1].index("--log-text") if "--log-text" in head else len(head)
        )
        if not wants_json or not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode=standalone_mode, **extra)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            text = exc.format_message()
            write_json("error", level="error", message=text, exit_code=exc.exit_code, command=command)
            if command in _SUMMARIZED_COMMANDS:
                write_json("summary", stream=sys.stdout, exit_code=exc.exit_code, finished=False, messages=[text])
            sys.exit(exc.exit_code)
        except click.Abort:
            write_json("error", level="error", message="aborted", exit_code=1, command=command)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_Batchpipe)
@click.version_option(__version__, prog_name="batchpipe")
@click.option("--log-level", default="info", show_default=True, help="debug, info, warning or error.")
@click.option("--log-json/--log-text", default=None, help="Force JSON or text logs (default: text on a terminal).")
def main(log_level: str, log_json: bool | None) -> None:
    """Turn product catalogs into OpenAI Batch API image jobs, and account for every image."""
    configure_logging(level=log_level, json=log_json)
    previous = os.umask(file_mode_mask(os.environ))  # the ledger, images, shards, exports: owner-only
    click.get_current_context().call_on_close(lambda: os.umask(previous))  # in-process callers get theirs back


#: The umask of every command: new files 0600, new folders 0700 (``BATCHPIPE_UMASK`` changes it).
DEFAULT_UMASK: Final = 0o077


def file_mode_mask(environ: Mapping[str, str]) -> int:
    """The umask batchpipe creates files under: ``BATCHPIPE_UMASK`` (octal, e.g. ``022`` for files others may
    read) when set, else :data:`DEFAULT_UMASK` (owner-only: the ledger, images, shards, exports and reports
    hold a catalog's data). Raises ``click.UsageError`` (exit 2) for a value that is not an octal umask."""
    text = (environ.get("BATCHPIPE_UMASK") or "").strip()
    if not text:
        return DEFAULT_UMASK
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise click.UsageError(f"BATCHPIPE_UMASK must be an octal umask such as 077 or 022, not {text!r}")
    return value


def _echo_err(message: str) -> None:
    """Print a message for the user on stderr: plain, or one JSON ``message`` event with ``--log-json``."""
    if json_only():
        write_json("message", message=message, level=message_level(message))
    else:
        click.echo(message, err=True)


def _run_display() -> RunDisplay:
    """How ``run`` and ``retry`` show progress: JSON with ``--log-json``, a live block when stderr is a terminal,
    plain lines otherwise (cron, a pipe)."""
    if json_only():
        return JsonDisplay()
    if sys.stderr.isatty():
        return LiveDisplay()
    return PlainDisplay(_echo_err)


def resolve_api(api: str | None, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """``(label, base_url)`` for ``--api``: ``emulator`` (base_url None: start the embedded one), ``openai``
    (needs OPENAI_API_KEY), or a URL. Default: ``openai`` when OPENAI_API_KEY is set, else ``emulator``.

    Raises ``click.UsageError`` (exit 2) for anything else, and for a URL (``--api`` or ``OPENAI_BASE_URL``) that
    carries credentials (:func:`~batchpipe.adapters.openai.settings.check_base_url`); the message never
    repeats the secret."""
    if api is None:
        api = "openai" if environ.get("OPENAI_API_KEY") else "emulator"
    if api == "emulator":
        return "emulator", None
    try:
        if api == "openai":
            if not environ.get("OPENAI_API_KEY"):
                raise click.UsageError("--api openai needs OPENAI_API_KEY in the environment")
            base_url = (environ.get("OPENAI_BASE_URL") or "").strip() or "https://api.openai.com/v1"
            return "openai", check_base_url(base_url, source="OPENAI_BASE_URL")
        if api.startswith(("http://", "https://")):
            check_base_url(api, source="--api")
            return api, api.rstrip("/")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    raise click.UsageError("--api must be emulator, openai or an http(s) URL")


@main.command()
@click.argument("job_spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), help="A plain JSONL item manifest.")
@click.option(
    "--job-name",
    help="Job name for --manifest runs (default for a `retry --export` manifest: the job its lines name).",
)
@click.option("--api", default=None, help="emulator | openai | URL (default: openai if OPENAI_API_KEY is set).")
@_workdir_option
@click.option("--limit", type=click.IntRange(min=1), help="Take only the first N items of the manifest.")
@click.option("--skip-invalid", is_flag=True, help="Record invalid items as 'invalid' and submit the rest.")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=None, help="Seconds between polls.")
@click.option("--trust", default=None, help="C2PA trust: default|emulator|none|FILE.pem (overrides the job spec).")
@click.option(
    "--collect-workers",
    type=click.IntRange(min=1, max=MAX_COLLECT_WORKERS),
    default=None,
    help="Worker threads per output file for decode/write/C2PA (default: the job spec's [run] collect_workers, 4).",
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="At the end, write the run's HTML contact sheet to WORKDIR/reports/<run>/ and print its path.",
)
@_models_option
@_max_cost_option
@_ledger_option
@_store_option
@click.option(
    "--plan-only",
    is_flag=True,
    help="With --ledger postgresql://...: validate, record the items, build the shards, then exit "
    "(batchpipe worker processes do the rest).",
)
def run(
    job_spec: Path | None,
    manifest: Path | None,
    job_name: str | None,
    api: str | None,
    workdir: Path,
    limit: int | None,
    skip_invalid: bool,
    poll_interval: float | None,
    trust: str | None,
    collect_workers: int | None,
    models_file: Path | None,
    max_cost: float | None = None,
    ledger_url: str | None = None,
    store_url: str | None = None,
    report: bool = True,
    plan_only: bool = False,
) -> None:
    """Run JOB_SPEC (or --manifest FILE --job-name NAME); the same command again resumes the same run."""
    if (job_spec is None) == (manifest is None):
        raise click.UsageError("give a JOB_SPEC or --manifest FILE.jsonl --job-name NAME")
    if manifest is not None:
        job_name = _manifest_job(manifest, job_name)
    label, base_url = resolve_api(api, os.environ)
    display = _run_display()
    if isinstance(display, LiveDisplay):
        display.title = job_name or (job_spec.stem if job_spec else "")
    _run_guarded(
        lambda: run_job(
            job_spec=job_spec,
            manifest=manifest,
            job_name=job_name,
            api_label=label,
            base_url=base_url,
            environ=os.environ,
            workdir=workdir,
            limit=limit,
            skip_invalid=skip_invalid,
            poll_interval_s=poll_interval,
            echo=display.echo,
            trust=trust,
            models_file=models_file,
            collect_workers=collect_workers,
            max_cost_usd=max_cost,
            ledger_url=ledger_url,
            store_url=store_url,
            display=display,
            write_report=report,
            plan_only=plan_only,
        ),
        display=display,
    )


def _manifest_job(manifest: Path, job_name: str | None) -> str:
    """The job a ``--manifest`` run belongs to: ``--job-name``, else the one job the lines of a ``batchpipe retry
    --export`` manifest name (``metadata.retry_job``), so its items become new attempts that supersede the
    originals. Warns when ``--job-name`` differs from the job the lines were exported from (they become new items
    of another job; the originals keep their status). Raises ``click.UsageError`` (exit 2) when no job can be
    told: no ``--job-name`` and the lines name none, or several."""
    exported = reprocess.manifest_retry_jobs(manifest)
    if job_name:
        others = {job: n for job, n in exported.items() if job != job_name}
        for job, n in sorted(others.items()):
            _echo_err(
                f"warning: {n} line(s) of {manifest} were exported from job {job!r} (metadata.retry_job); as job "
                f"{job_name!r} they are new items and the originals keep their status. Run the manifest with "
                f"--job-name {shlex.quote(job)} (or without --job-name) to make them new attempts that supersede "
                "the originals"
            )
        return job_name
    if len(exported) == 1:
        (job,) = exported
        _echo_err(f"job {job}: named by the manifest's lines (metadata.retry_job, written by batchpipe retry --export)")
        return job
    if exported:
        listed = ", ".join(f"{job} ({n} line(s))" for job, n in sorted(exported.items()))
        raise click.UsageError(
            f"{manifest} holds retries of several jobs: {listed}; pass --job-name, or export one job at a time "
            "(batchpipe retry --job JOB --export FILE)"
        )
    raise click.UsageError("--manifest needs --job-name")


@main.command()
@click.option("--api", default=None, help="openai | URL of a shared API (a standalone emulator: emulator serve).")
@_workdir_option
@_ledger_option
@_store_option
@click.option("--name", envvar="BATCHPIPE_WORKER", default=None, help="This worker's name in the ledger's claims.")
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=4, show_default=True, help="Jobs at once.")
@click.option("--until-idle", is_flag=True, help="Exit once no run is open (every run finished).")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=None, help="Seconds between poll sweeps.")
@click.option("--trust", default=None, help="C2PA trust (default: what each run recorded).")
@click.option("--lease", "lease_s", type=click.FloatRange(min=1), default=None, help="Claim lease (s); default 3600.")
@click.option("--heartbeat", "heartbeat_s", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option(
    "--stalled-after",
    "stalled_after_s",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="Seconds without a heartbeat after which a worker's jobs are taken over.",
)
@click.option("--keeper-interval", "keeper_interval_s", type=click.FloatRange(min=0.05), default=2.0, show_default=True)
def worker(
    api: str | None,
    workdir: Path,
    ledger_url: str | None,
    store_url: str | None,
    name: str | None,
    concurrency: int,
    until_idle: bool,
    poll_interval: float | None,
    trust: str | None,
    lease_s: float | None,
    heartbeat_s: float,
    stalled_after_s: float,
    keeper_interval_s: float,
) -> None:
    """Work on every open run of a shared ledger: submit shards, poll, collect output files, follow up.

    Runs planned with `batchpipe run JOB --ledger postgresql://... --store s3://... [--plan-only]` are joined by
    every worker, on any machine; SIGTERM stops it cleanly (running jobs finish), SIGKILL loses nothing."""
    if not ledger_url or not store_url:
        raise click.UsageError(
            "batchpipe worker needs --ledger postgresql://... and --store (or BATCHPIPE_LEDGER/_STORE)"
        )
    label, base_url = resolve_api(api, os.environ)
    if base_url is None:
        raise click.UsageError(
            "a worker needs an API every worker shares: --api openai, or --api URL of `batchpipe emulator serve`"
        )

    def action() -> int:
        import asyncio

        from batchpipe.runtime.cluster import WorkerSettings, serve_worker
        from batchpipe.runtime.runner import DEFAULT_LEASE_S, default_owner

        settings = WorkerSettings(
            owner=name or default_owner(),
            concurrency=concurrency,
            lease_s=lease_s or DEFAULT_LEASE_S,
            keeper_interval_s=keeper_interval_s,
            heartbeat_s=heartbeat_s,
            stalled_after_s=stalled_after_s,
            fetch_interval_s=min(max(0.2, keeper_interval_s), 5.0),
            until_idle=until_idle,
            poll_interval_s=poll_interval,
        )
        asyncio.run(
            serve_worker(
                ledger_url=ledger_url,
                store_url=store_url,
                api_label=label,
                base_url=base_url,
                environ=os.environ,
                workdir=workdir.resolve(),
                settings=settings,
                local=is_loopback(base_url),
                trust=trust,
                echo=_echo_err,
            )
        )
        return EXIT_OK

    _run_guarded(action)


def _open_existing_ledger(workdir: Path, ledger_url: str | None = None) -> Ledger:
    try:
        if not ledger_exists(ledger_url, workdir):
            where = describe_ledger(ledger_url, workdir)
            _echo_err(f"error: no ledger at {where} (run a job first, or pass --workdir)")
            sys.exit(EXIT_INPUT)
        return open_ledger_url(ledger_url, workdir)
    except BatchpipeError as exc:  # a bad --ledger URL (2), a server that cannot be reached (3)
        for line in messages(exc):
            _echo_err(line)
        sys.exit(exit_code(exc))


@main.command()
@_workdir_option
@_ledger_option
@click.option("--job", help="Only this job: its latest run, its items and batches, its errors.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def status(workdir: Path, ledger_url: str | None, job: str | None, as_json: bool) -> None:
    """Items by status, batches by status, cost so far and errors by code, for the latest run and the whole ledger
    (or one --job). With --log-json before the command, the JSON object on one line."""
    ledger = _open_existing_ledger(workdir, ledger_url)
    try:
        report = _status_report(ledger, workdir, job)
    finally:
        ledger.close()
    if report is None:
        _echo_err(f"error: no job {job!r} in the ledger at {describe_ledger(ledger_url, workdir)}")
        sys.exit(EXIT_INPUT)
    if as_json or json_only():
        option = 0 if json_only() else orjson.OPT_INDENT_2  # --log-json: one line, like every other line
        click.echo(orjson.dumps(report, option=option).decode())
        return
    console = Console()
    latest = report["latest_run"]
    if job:
        console.print(f"job [bold]{job}[/]", highlight=False)
    if latest:
        console.print(f"latest run [bold]{latest['run_id']}[/] ({latest['status']}, api {latest['api']})")
    table = Table("status", "latest run", "all attempts", "items now")
    statuses = sorted(set(report["items"]) | set(report["latest_run_items"]) | set(report["current_items"]))
    for name in statuses:
        table.add_row(
            name,
            str(report["latest_run_items"].get(name, 0)),
            str(report["items"].get(name, 0)),
            str(report["current_items"].get(name, 0)),
        )
    console.print(table)
    batches = report["batches"]
    console.print("batches: " + (", ".join(f"{k} {v}" for k, v in sorted(batches.items())) or "none"))
    scope = f"in job {job}" if job else "in all"
    console.print(
        f"cost: ${report['latest_run_cost_usd']:.4f} latest run, ${report['cost_usd']:.4f} {scope} (batch prices)"
    )
    errors = report["errors"]
    if not errors:
        console.print("errors: none (items now)")
        return
    table = Table("error code", "items", "status", "example", title="errors by code (items now)", title_justify="left")
    for error in errors:
        example = f"{error['example_key']}: {error['example_message']}" if error["example_message"] else "-"
        table.add_row(error["code"], str(error["count"]), ", ".join(error["statuses"]), example)
    console.print(table)
    for error in errors[:5]:
        if error.get("retry_command"):
            console.print(f"retry {error['code']}: {error['retry_command']}", highlight=False, soft_wrap=True)
            if error.get("retry_hint"):
                console.print(f"  ({error['retry_hint']})", highlight=False, soft_wrap=True)


def _status_report(ledger: Ledger, workdir: Path, job: str | None) -> dict[str, Any] | None:
    """What ``batchpipe status`` shows, as a JSON-ready dict; None when ``job`` is given and not in the ledger.

    ``latest_run`` (of ``job``, or of the ledger), ``latest_run_items`` / ``items`` (every attempt) /
    ``current_items`` (each item's latest attempt) counts by status, ``batches`` by status, ``cost_usd`` (all
    attempts, of ``job`` or of the ledger) and ``latest_run_cost_usd`` in USD, and ``errors``: the current items
    that did not succeed by error code, most frequent first (``code``, ``count``, ``statuses``, ``retryable``, an
    example key and message, and, with a job, the ``retry_command`` that runs them again)."""
    latest = ledger.latest_run(job)
    if job is not None and latest is None:
        return None
    if job is None:
        batch_rows = ledger.batches()
    else:
        shards = {shard.name for shard in ledger.shards() if shard.job == job}
        batch_rows = [batch for batch in ledger.batches() if batch.shard in shards]
    summary = ledger.item_summary(FAILURE_STATUSES, job=job)  # one pass over the items: counts, cost, errors
    batches: dict[str, int] = {}
    for batch in batch_rows:
        batches[batch.status] = batches.get(batch.status, 0) + 1
    errors = []
    for error in error_counts_of(ledger, summary.errors):
        entry = error.to_dict()
        if job is not None:
            entry["retry_command"] = retry_command(error, job=job, workdir=workdir)
            entry["retry_hint"] = retry_hint(error)
        errors.append(entry)
    report: dict[str, Any] = {
        "workdir": str(workdir),
        "job": job,
        "latest_run": latest,
        "latest_run_items": ledger.count_items(run_id=str(latest["run_id"])) if latest else {},
        "items": summary.items,
        "current_items": summary.current,
        "batches": batches,
        "cost_usd": round(summary.cost_usd, 6),
        "latest_run_cost_usd": round(ledger.cost_usd(run_id=str(latest["run_id"])), 6) if latest else 0.0,
        "errors": errors,
    }
    return report


@main.group()
def ledger() -> None:
    """Read the results ledger."""


@ledger.command("init")
@_workdir_option
@_ledger_option
def init(workdir: Path, ledger_url: str | None) -> None:
    """Create the ledger's schema, or bring it up to this version (idempotent; runs also do it on first use)."""

    def action() -> int:
        opened = open_ledger_url(ledger_url, workdir)
        opened.close()
        _echo_err(f"ledger ready at {describe_ledger(ledger_url, workdir)}")
        if is_shared_ledger(ledger_url):
            try:
                from batchpipe.runtime.cluster import apply_queue_schema
            except ImportError:
                _echo_err(
                    "job queue not set up: batchpipe worker needs procrastinate (pip install 'batchpipe[cluster]')"
                )
                return EXIT_OK
            made = apply_queue_schema(str(ledger_url))
            _echo_err("job queue (procrastinate) " + ("created" if made else "ready"))
        return EXIT_OK

    _run_guarded(action)


@ledger.command("verify")
@_workdir_option
@_ledger_option
@click.option("--run", "run_id", help="Only this run's images (default: the latest attempt of every item).")
@click.option("--job", help="Only this job's images.")
@click.option(
    "--trust", default=None, help="C2PA trust setting: default, emulator, none or a PEM (default: the run's)."
)
@click.option("--no-c2pa", is_flag=True, help="Check sha256 and size only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary on stdout.")
def verify_ledger(
    workdir: Path,
    ledger_url: str | None,
    run_id: str | None,
    job: str | None,
    trust: str | None,
    no_c2pa: bool,
    as_json: bool,
) -> None:
    """Read back every image the ledger records (local files or s3:// objects, AWS_* variables) and check it:
    the sha256 and size recorded, and its C2PA manifest again. Exit 1 if any is missing, other or changed."""
    from batchpipe.provenance.trust import TrustConfig
    from batchpipe.provenance.verify import C2paVerifier
    from batchpipe.runtime.images import ImageReader, check_rows

    store = _open_existing_ledger(workdir, ledger_url)

    def action() -> int:
        run = store.run_info(run_id) if run_id else store.latest_run(job)
        if run_id and run is None:
            raise InputError(f"no run {run_id!r} in the ledger", file="ledger", field="--run")
        setting = trust or str((run or {}).get("trust") or "default")
        verifier = None if no_c2pa else C2paVerifier(TrustConfig.from_setting(setting))
        rows = store.items(run_id=run_id, job=job, latest_only=run_id is None, statuses=["succeeded"])
        summary = check_rows(rows, ImageReader(os.environ).read, verifier)
        if as_json:
            report = {
                "checked": summary.checked,
                "matched": summary.matched,
                "problems": [{"custom_id": c.custom_id, "key": c.key, "uri": c.uri, "problem": c.problem}
                             for c in summary.problems],
                "c2pa": dict(summary.c2pa),
                "c2pa_changed": [{"custom_id": c.custom_id, "key": c.key, "now": c.c2pa_state,
                                  "recorded": c.recorded_state} for c in summary.changed_state],
                "trust": setting,
                "ok": summary.ok,
            }  # fmt: skip
            click.echo(orjson.dumps(report).decode())
        else:
            states = ", ".join(f"{k} {v}" for k, v in summary.c2pa.most_common()) or "not checked"
            click.echo(f"checked {summary.checked} image(s): {summary.matched} match the ledger's sha256 and size")
            click.echo(f"C2PA ({setting}): {states}")
            for check in summary.problems[:20]:
                click.echo(f"  {check.key} ({check.custom_id}) {check.uri}: {check.problem}")
            for check in summary.changed_state[:20]:
                click.echo(f"  {check.key}: C2PA {check.c2pa_state} now, {check.recorded_state} in the ledger")
            hidden = len(summary.problems) - 20 + max(0, len(summary.changed_state) - 20)
            if hidden > 0:
                click.echo(f"  ... and {hidden} more (--json lists them all)")
        return EXIT_OK if summary.ok else EXIT_INCOMPLETE

    try:
        _run_guarded(action)
    finally:
        store.close()


_EXPORT_FIELDS: Final = [
    "custom_id",
    "key",
    "job",
    "attempt",
    "run_id",
    "status",
    "output_uri",
    "output_path",
    "sha256",
    "bytes",
    "format",
    "width",
    "height",
    "c2pa_state",
    "error_code",
    "error_message",
    "retryable",
    "model",
    "endpoint",
    "request_hash",
    "batch_id",
    "shard",
    "cost_usd",
    "source",
    "product_key",
    "variant",
    "previous_custom_id",
    "prompt",
    "created_at",
    "updated_at",
]


@ledger.command("export")
@_workdir_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default stdout).")
@click.option("--all-attempts", is_flag=True, help="Every attempt, not only each item's latest.")
@click.option("--run", "run_id", help="Only this run's rows.")
@_ledger_option
def export(
    workdir: Path, fmt: str, output: Path | None, all_attempts: bool, run_id: str | None, ledger_url: str | None
) -> None:
    """One record per item (its latest attempt): custom_id, key, status, prompt, output_path, sha256, c2pa_state...
    Times (created_at, updated_at) are ISO 8601 UTC, e.g. 2026-11-30T10:15:02Z."""
    store = _open_existing_ledger(workdir, ledger_url)
    with ExitStack() as stack:
        stack.callback(store.close)
        out: TextIO = stack.enter_context(output.open("w", encoding="utf-8", newline="")) if output else sys.stdout
        if fmt == "jsonl":  # the ledger builds each line (in SQL), a page at a time
            for chunk in store.export_jsonl(run_id=run_id, latest_only=not all_attempts):
                out.write(chunk)
        else:
            rows = store.items(run_id=run_id, latest_only=not all_attempts)
            writer = csv.DictWriter(out, fieldnames=[*_EXPORT_FIELDS, "c2pa_issuer", "c2pa_failure_codes"])
            writer.writeheader()
            for row in rows:
                record = row.export_record()
                raw = record.get("c2pa")
                c2pa: dict[str, Any] = raw if isinstance(raw, dict) else {}
                flat = {k: record.get(k) for k in _EXPORT_FIELDS}
                flat["c2pa_issuer"] = c2pa.get("issuer")
                codes = c2pa.get("failure_codes")
                flat["c2pa_failure_codes"] = " ".join(codes) if codes else ""
                writer.writerow(flat)


def _iso_utc(ts: object) -> str:
    """Unix seconds as ISO 8601 UTC (``2026-11-30T08:42:22.123Z``); ``-`` when absent."""
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@main.command("item")
@_workdir_option
@_ledger_option
@click.argument("key")
@click.option("--job", help="The item's job (needed when several jobs have an item with this key).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def item_command(workdir: Path, key: str, job: str | None, as_json: bool, ledger_url: str | None) -> None:
    """Every attempt of item KEY with its status changes, errors, image, C2PA state and cost (times in UTC)."""
    from batchpipe.runtime.report import c2pa_badge

    store = _open_existing_ledger(workdir, ledger_url)
    try:
        rows = sorted(store.items(job=job, key=key), key=lambda r: (r.job, r.attempt))
        jobs = sorted({row.job for row in rows})
        if not rows:
            _echo_err(f"error: no item {key!r}" + (f" in job {job!r}" if job else "") + f" in {workdir}")
            sys.exit(EXIT_INPUT)
        if len(jobs) > 1:
            _echo_err(f"error: item {key!r} is in several jobs ({', '.join(jobs)}); pick one with --job")
            sys.exit(EXIT_INPUT)
        attempts: list[dict[str, Any]] = []
        for row in rows:
            issuer, generator = c2pa_badge(row.c2pa_json)
            path = row.output_path
            attempts.append(
                {
                    "custom_id": row.custom_id,
                    "attempt": row.attempt,
                    "previous_custom_id": row.previous_custom_id,
                    "run_id": row.run_id,
                    "batch_id": row.batch_id,
                    "shard": row.shard,
                    "status": row.status,
                    "error_code": row.error_code,
                    "error_message": row.error_message,
                    "retryable": None if row.retryable is None else bool(row.retryable),
                    "c2pa_state": row.c2pa_state,
                    "c2pa_issuer": issuer,
                    "c2pa_claim_generator": generator,
                    "output_uri": row.output_uri,
                    "output_path": str(path) if path else None,
                    "sha256": row.sha256,
                    "cost_usd": row.cost_usd,
                    "model": row.model,
                    "prompt": row.body.get("prompt"),
                    "source": row.source,
                    "created_at": _iso_utc(row.created_at),
                    "updated_at": _iso_utc(row.updated_at),
                    "events": [
                        {
                            "at": _iso_utc(event.get("created_at")),
                            "from_status": event.get("from_status"),
                            "to_status": event.get("to_status"),
                            "detail": event.get("detail"),
                        }
                        for event in store.item_history(row.custom_id)
                    ],
                }
            )
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps({"job": jobs[0], "key": key, "attempts": attempts}, option=orjson.OPT_INDENT_2))
        return
    click.echo(f"item {key} of job {jobs[0]}: {len(attempts)} attempt(s)")
    for entry in attempts:
        click.echo(f"\nattempt {entry['attempt']}  {entry['custom_id']}  {entry['status']}")
        for name in (
            "previous_custom_id", "run_id", "batch_id", "model", "prompt", "source", "error_code", "error_message",
            "retryable", "c2pa_state", "c2pa_issuer", "c2pa_claim_generator", "output_path", "output_uri", "sha256",
            "cost_usd", "created_at", "updated_at",
        ):  # fmt: skip
            value = entry[name]
            if value is None or (name == "output_uri" and entry["output_path"]):
                continue
            click.echo(f"  {name + ':':<22}{value:.6f}" if name == "cost_usd" else f"  {name + ':':<22}{value}")
        for event in entry["events"]:
            detail = f"  ({event['detail']})" if event["detail"] else ""
            click.echo(f"  {event['at']}  {event['from_status']} -> {event['to_status']}{detail}")


@main.command("report")
@_workdir_option
@_ledger_option
@click.option("--run", "run_id", help="The run to show (default: the latest run).")
@click.option("--job", help="Show this job: the latest attempt of each of its items, across runs.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write (default: WORKDIR/reports/<run or job>).",
)
def report_command(
    workdir: Path, run_id: str | None, job: str | None, output: Path | None, ledger_url: str | None
) -> None:
    """Write a static HTML contact sheet (thumbnails, C2PA badges, filters, errors by code, cost) and a CSV/JSONL."""
    from batchpipe.runtime.images import ImageReader
    from batchpipe.runtime.report import write_report  # lazy: Pillow is only needed here

    if run_id and job:
        raise click.UsageError("give --run or --job, not both")
    store = _open_existing_ledger(workdir, ledger_url)

    def action() -> int:
        name = run_id or job or str((store.latest_run() or {}).get("run_id", "latest"))
        folder = output or workdir / "reports" / name
        result = write_report(
            store, folder, run_id=run_id, job=job, models=shipped_table(), reader=ImageReader(os.environ)
        )
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "no items"
        _echo_err(f"report of {result.title}: {result.items} item(s): {counts}")
        _echo_err(
            f"thumbnails: {result.thumbs_made} made, {result.thumbs_reused} reused, {result.thumbs_failed} unreadable; "
            f"{result.total_bytes / 1e6:.1f} MB in {result.seconds:.1f} s"
        )
        click.echo(str(result.index))
        return EXIT_OK

    try:
        _run_guarded(action)
    finally:
        store.close()


@main.command()
@_workdir_option
@click.option("--job", help="Only this job's items (required when the selection spans several jobs).")
@click.option("--status", "statuses", multiple=True, help="Item status to select (repeatable; default: every failure).")
@click.option("--error-code", "error_codes", multiple=True, help="Only items with this error code (repeatable).")
@click.option("--c2pa-state", "c2pa_states", multiple=True, help="Only items with this C2PA state (repeatable).")
@click.option("--since", help="Only items last updated at or after this date/time (YYYY-MM-DD or ISO, UTC).")
@click.option("--until", help="Only items last updated before this date/time.")
@click.option("--retryable-only", is_flag=True, help="Skip failures the service marked as final.")
@click.option("--set", "sets", multiple=True, help="Change a request field for the new attempt: FIELD=VALUE.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the selection as a JSONL manifest instead of running it.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Also send again, unchanged, items whose failure is final (moderation_blocked, invalid requests).",
)
@click.option(
    "--api",
    default=None,
    help="emulator | openai | URL (default: the API of the run that recorded the selected items).",
)
@click.option("--yes", "-y", "assume_yes", is_flag=True, help="Do not ask before spending (in a terminal).")
@click.option(
    "--confirm-above",
    type=click.FloatRange(min=0),
    default=costguard.CONFIRM_ABOVE_USD,
    show_default=True,
    envvar="BATCHPIPE_CONFIRM_ABOVE_USD",
    metavar="USD",
    help="In a terminal, ask before spending more than this (USD, estimated at batch prices) unless --yes.",
)
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=None)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=None,
    help="Attempts allowed per item, counting earlier ones (default: 2 more than the highest selected).",
)
@click.option(
    "--collect-workers",
    type=click.IntRange(min=1, max=MAX_COLLECT_WORKERS),
    default=None,
    help="Worker threads per output file for decode/write/C2PA (default 4).",
)
@_models_option
@_max_cost_option
@_ledger_option
@_store_option
def retry(
    workdir: Path,
    job: str | None,
    statuses: tuple[str, ...],
    error_codes: tuple[str, ...],
    c2pa_states: tuple[str, ...],
    since: str | None,
    until: str | None,
    retryable_only: bool,
    sets: tuple[str, ...],
    export_path: Path | None,
    force: bool,
    api: str | None,
    assume_yes: bool,
    confirm_above: float,
    poll_interval: float | None,
    max_attempts: int | None,
    collect_workers: int | None,
    models_file: Path | None,
    max_cost: float | None = None,
    ledger_url: str | None = None,
    store_url: str | None = None,
) -> None:
    """Select items from the ledger and run them again as new attempts (or --export them as a manifest)."""
    known = sorted(status.value for status in ItemStatus)
    unknown = [name for name in statuses if name not in known]
    if unknown:
        raise click.UsageError(f"unknown --status {', '.join(map(repr, unknown))}; one of: {', '.join(known)}")
    unknown = [name for name in c2pa_states if name not in C2PA_STATES]
    if unknown:
        raise click.UsageError(
            f"unknown --c2pa-state {', '.join(map(repr, unknown))}; one of: {', '.join(sorted(C2PA_STATES))}"
        )
    store = _open_existing_ledger(workdir, ledger_url)
    display = _run_display()

    def action() -> int:
        selection = reprocess.RetrySelection(
            job=job,
            statuses=statuses or reprocess.DEFAULT_RETRY_STATUSES,
            error_codes=error_codes or None,
            c2pa_states=c2pa_states or None,
            since=reprocess.parse_when(since, option="--since") if since else None,
            until=reprocess.parse_when(until, option="--until") if until else None,
            retryable_only=retryable_only,
        )
        changes = reprocess.parse_set_options(sets)
        policy = _retry_policy(models_file)
        rows = list(reprocess.select_rows(store, selection))
        if error_codes:
            reprocess.check_error_codes(store, job, error_codes, rows)
        jobs = sorted({row.job for row in rows})
        _echo_err(f"selected {len(rows)} item(s) from {len(jobs)} job(s): {', '.join(jobs) or '-'}")
        if export_path is not None:
            with export_path.open("wb") as out:
                count, problems = reprocess.export_manifest(reprocess.retry_items(rows, changes), out)
            for problem in problems:
                _echo_err(f"  {problem}")
            _echo_err(f"wrote {count} manifest line(s) to {export_path}")
            final = [row for row in rows if reprocess.is_final_failure(row)]
            if final and not changes:
                codes = ", ".join(sorted({str(row.error_code) for row in final}))
                _echo_err(
                    f"note: {len(final)} of them failed for good ({codes}): edit their requests before running the "
                    "manifest, or they will fail again"
                )
            if count and len(jobs) == 1:
                _echo_err(
                    f"run it with: batchpipe run --manifest {shlex.quote(str(export_path))} (job {jobs[0]}, taken "
                    "from the file; its items become new attempts and supersede the originals)"
                )
            return EXIT_INPUT if problems else EXIT_OK
        rows, left_out = reprocess.split_final_failures(rows, changes, models=policy.table, force=force)
        if left_out:
            _echo_err(reprocess.left_out_line(left_out))
            jobs = sorted({row.job for row in rows})
        if not rows:
            return EXIT_OK
        if len(jobs) > 1:
            raise InputError("the selection spans several jobs; pick one with --job (or use --export)", file="ledger")
        running = store.latest_run(jobs[0])
        if running and running["status"] == "running":
            raise InputError(
                f"run {running['run_id']} of job {jobs[0]} is not finished; resume it first with the same "
                "batchpipe run command",
                file="ledger",
            )
        if isinstance(display, LiveDisplay):
            display.title = jobs[0]
        output_dir, trust = reprocess.default_output_dir(store, jobs[0], workdir.resolve())
        session = reprocess.job_session(store, jobs[0], workdir.resolve())
        label, base_url = _retry_api(api, store, rows)
        highest = max(row.attempt for row in rows)
        local = label == "emulator" or is_loopback(base_url)
        options = RunOptions(
            workdir=workdir.resolve(),
            max_attempts=max_attempts or highest + 2,
            models=policy.table,
            collect_workers=collect_workers or RunOptions.collect_workers,
            **api_timing(local=local, poll_interval_s=poll_interval),
        )
        # every check before the run is opened: a refused retry leaves the ledger exactly as it was
        checked = list(reprocess.retry_items(rows, changes, advice=policy))
        if policy.refused:
            model_problems = [str(p) for p in checked if getattr(p, "field", None) == "model"]
            raise InputError(
                f"refused model(s) {', '.join(sorted(policy.refused))}; nothing was submitted",
                file="ledger",
                field="model",
                problems=model_problems,
            )
        problems = [entry for entry in checked if not isinstance(entry, Item)]
        if problems:
            raise InputError(
                f"{len(problems)} problem(s) in the changed requests; nothing was submitted",
                file="ledger",
                field="--set" if changes else None,
                problems=problems,
            )
        estimate = costguard.estimate_items(checked, models=policy.table)
        display.echo(estimate.line(max_cost))
        costguard.check_cap(
            estimate,
            max_cost,
            source="command line",
            field="--max-cost",
            raise_hint=f"pass --max-cost {estimate.cost_usd * 1.1 + 0.005:.2f}, or narrow the selection",
        )
        ask = not assume_yes and costguard.needs_confirmation(estimate, confirm_above, interactive=_interactive())
        if ask and not click.confirm(
            f"spend about ${estimate.cost_usd:.4f} on {estimate.requests} request(s) ({label})?",
            default=False,
            err=True,
        ):
            raise InputError(
                "not confirmed; nothing was submitted (pass --yes to skip the question)",
                file="command line",
                field="--yes",
            )
        digest = orjson.dumps(sorted(row.custom_id for row in rows))
        digest += orjson.dumps(changes, option=orjson.OPT_SORT_KEYS)
        request = RunRequest(
            job=jobs[0],
            spec_hash="retry:" + hashlib.sha256(digest).hexdigest(),
            items=lambda: reprocess.retry_items(rows, changes, advice=policy),
            source_name="ledger",
            output_dir=output_dir,
            trust=trust,
            options=options,
            session=session,
            policy=policy,
            # asked of the service before the run is opened (wiring.execute_async)
            known_models=frozenset(str(entry.body.get("model")) for entry in checked if isinstance(entry, Item)),
            ledger_url=ledger_url,
            store_url=store_url,
            estimate_usd=estimate.cost_usd,
            cap_usd=max_cost,
        )
        store.close()
        return execute(
            request, api_label=label, base_url=base_url, environ=os.environ, echo=display.echo, display=display
        )

    resume = (
        f"batchpipe run <the job's spec or --manifest> --workdir {shlex.quote(str(workdir))} (it resumes the "
        f"job's unfinished retry run)"
    )
    try:
        _run_guarded(action, resume=resume, display=display)
    finally:
        store.close()


def _interactive() -> bool:
    """True when a person can answer a question: stdin is a terminal."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


def _retry_api(api: str | None, store: Ledger, rows: list[Any]) -> tuple[str, str | None]:
    """``(label, base_url)`` for ``retry``: ``--api`` when given, else the API the retried items' latest run
    recorded (``emulator``, ``openai``, or the base URL it was given), so a retry of a run against a standalone
    emulator or the real API goes there again, not to a new embedded emulator. Only labels and base URLs are
    recorded and echoed, never a key. Raises ``InputError`` (exit 2) when the recorded API cannot be used as it
    is (``openai`` without OPENAI_API_KEY), and ``click.UsageError`` for a bad ``--api``."""
    if api is not None:
        return resolve_api(api, os.environ)
    recorded = reprocess.recorded_api(store, rows)
    if recorded is None:
        return resolve_api(None, os.environ)
    run_id, recorded_label = recorded
    try:
        label, base_url = resolve_api(recorded_label, os.environ)
    except click.UsageError as exc:  # a URL is not repeated: the message of a refused one says what is wrong
        shown = repr(recorded_label) if recorded_label in ("openai", "emulator") else "recorded for it"
        raise InputError(
            f"run {run_id} used the API {shown} ({exc.message}); pass --api emulator|openai|URL to retry elsewhere",
            file="ledger",
            field="api",
        ) from None
    _echo_err(f"api: {base_url or label}, as run {run_id} used (pass --api to choose another)")
    return label, base_url


def _retry_policy(models_file: Path | None) -> Any:
    """The lifecycle policy of ``batchpipe retry``: the shipped table plus ``--models FILE``, the clock from
    ``BATCHPIPE_NOW`` (or the system clock), refusals that suggest ``--set model=...``. A models file that does
    not load raises ``ModelTableError`` (a ``ValueError`` naming file and field: exit 2 through ``guarded``)."""
    return ModelPolicy(
        shipped_table().with_file(models_file),
        clock=clock_from_env(),
        on_warning=lambda message: _echo_err(f"warning: {message}"),
        fix="batchpipe retry ... --set model={model}",
    )


def _run_guarded(action: Callable[[], int], *, resume: str | None = None, display: RunDisplay | None = None) -> None:
    """Run ``action()`` and exit with its code, errors mapped by :func:`batchpipe.cli.exits.guarded` (Ctrl-C:
    exit 3 and ``resume``, by default this command line again). With ``--log-json`` and a run's ``display``, a run
    that stops before its summary (bad input, the API unusable) still ends with one JSON summary on stdout:
    ``{"event": "summary", "exit_code": N, "finished": false, "messages": [...]}``."""
    if display is None or not json_only():
        guarded(action, echo=_echo_err, resume=resume)
    said: list[str] = []

    def echo(line: str) -> None:
        said.append(line)
        _echo_err(line)

    try:
        guarded(action, echo=echo, resume=resume)
    except SystemExit as exc:
        if not display.summarized:
            code = exc.code if isinstance(exc.code, int) else 1
            write_json("summary", stream=sys.stdout, exit_code=code, finished=False, messages=said)
        raise


def _attach_optional_commands() -> None:
    from batchpipe.emulator.cli import emulator_group  # lazy: Starlette, uvicorn and Pillow cost ~0.3 s to import

    main.add_command(verify_command, "verify")
    main.add_command(validate_command, "validate")
    main.add_command(emulator_group, "emulator")
    main.add_command(item_command, "show")  # the name the issue uses; `item` is the documented one


_attach_optional_commands()
