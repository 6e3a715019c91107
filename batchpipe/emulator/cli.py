"""``batchpipe emulator serve``: run the emulator standalone (attach ``emulator_group`` to the main CLI)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from pydantic import ValidationError

from batchpipe.domain.modeltable import ModelTable, ModelTableError, shipped_table
from batchpipe.emulator.config import (
    AMBIGUOUS_CREATE_MODES,
    BAD_DOWNLOAD_KINDS,
    ROUTES,
    EmulatorConfig,
    FaultConfig,
    SpeedConfig,
)
from batchpipe.emulator.server import run_server

#: Where ``batchpipe emulator serve`` keeps files and batches without ``--state-dir``, relative to the current
#: directory, so a restart keeps them; not the embedded emulator's ``.batchpipe/emulator`` (two servers would share
#: one state).
DEFAULT_STATE_DIR = ".batchpipe/emulator-server"

__all__ = ["build_config", "emulator_group", "parse_now", "serve_models"]


def serve_models(path: Path | None) -> ModelTable:
    """The shipped model table with the ``[models."NAME"]`` rows of the TOML file ``path`` merged over it
    (``ModelTable.with_overrides``, origin = the path as given); the shipped table alone for ``None``.
    Raises ``click.UsageError`` naming the file and field for a file that does not load."""
    table = shipped_table()
    if path is None:
        return table
    try:
        return table.with_file(path)
    except ModelTableError as exc:
        raise click.UsageError(f"--models: {exc}") from exc


def parse_now(value: str | None) -> dt.datetime | None:
    """``--now``: an ISO 8601 date (``2026-12-02``, midnight) or date-time (``2026-12-02T10:00:00+00:00``; UTC
    when no offset is given) → an aware ``datetime``; ``None`` passes through. Raises ``click.UsageError``."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.UsageError(f"--now expects an ISO 8601 date or date-time, got {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _route_values(values: tuple[str, ...], option: str) -> dict[str, float]:
    """``("batches.create=0.5", "*=0.1")`` → ``{"batches.create": 0.5, "*": 0.1}``; bad input → UsageError."""
    out: dict[str, float] = {}
    for value in values:
        route, sep, number = value.partition("=")
        if not sep or (route not in ROUTES and route != "*"):
            raise click.UsageError(f"{option} expects ROUTE=NUMBER with ROUTE in {', '.join(ROUTES)} or '*': {value!r}")
        try:
            out[route] = float(number)
        except ValueError as exc:
            raise click.UsageError(f"{option}: not a number: {value!r}") from exc
    return out


def build_config(
    *,
    state_dir: Path,
    speed: str,
    per_request_s: float | None,
    completion_window_s: int | None,
    concurrency: int,
    rpm_limit: int,
    enqueued_token_limit: int | None,
    seed: int,
    fault_429: tuple[str, ...],
    fault_5xx: tuple[str, ...],
    first_429: tuple[str, ...],
    first_5xx: tuple[str, ...],
    latency_ms: int,
    cut_after_bytes: int | None,
    cut_first_n: int,
    cut_share: float,
    null_output_s: float,
    shuffle: bool,
    drop_rows: int,
    drop_first_n: int,
    expire_after_lines: int | None,
    expire_first_n: int,
    expire_share: float,
    stuck_finalizing_s: float,
    image_detail: str = "fast",
    rate_window_s: float = 60.0,
    models_file: Path | None = None,
    now: str | None = None,
    ambiguous_create_first_n: int = 0,
    ambiguous_create_share: float = 0.0,
    ambiguous_create_mode: str = "500",
    ambiguous_create_delay_s: float = 0.0,
    list_lag_s: float = 0.0,
    bad_download_first_n: int = 0,
    bad_download_share: float = 0.0,
    bad_download_kinds: tuple[str, ...] = (),
) -> EmulatorConfig:
    """The ``EmulatorConfig`` the ``serve`` flags describe. Raises ``click.UsageError`` on bad values.

    ``bad_download_kinds``: names from ``config.BAD_DOWNLOAD_KINDS`` (empty: all of them); the other fault
    arguments map one to one onto :class:`FaultConfig` fields.

    ``models_file``: a TOML file of ``[models."NAME"]`` rows merged over the shipped model table
    (:func:`serve_models`); ``now``: pins the emulator's lifecycle clock (:func:`parse_now`).
    """
    models = serve_models(models_file)
    pinned = parse_now(now)
    routes: dict[str, dict[str, float]] = {}
    for key, values, option in (
        ("share_429", fault_429, "--fault-429"),
        ("share_5xx", fault_5xx, "--fault-5xx"),
        ("first_n_429", first_429, "--first-429"),
        ("first_n_5xx", first_5xx, "--first-5xx"),
    ):
        for route, number in _route_values(values, option).items():
            routes.setdefault(route, {})[key] = int(number) if key.startswith("first") else number
    speed_fields: dict[str, object] = {"mode": speed}
    if per_request_s is not None:
        speed_fields["per_request_s"] = per_request_s
    if completion_window_s is not None:
        speed_fields["completion_window_s"] = completion_window_s
    fault_fields: dict[str, object] = {
        "seed": seed,
        "routes": routes,
        "latency_ms": latency_ms,
        "cut_download_after_bytes": cut_after_bytes,
        "cut_download_first_n": cut_first_n,
        "cut_download_share": cut_share,
        "null_output_file_s": null_output_s,
        "shuffle_output": shuffle,
        "drop_rows": drop_rows,
        "drop_rows_first_n_batches": drop_first_n,
        "expire_after_lines": expire_after_lines,
        "expire_first_n_batches": expire_first_n,
        "expire_share": expire_share,
        "stuck_finalizing_s": stuck_finalizing_s,
        "ambiguous_create_first_n": ambiguous_create_first_n,
        "ambiguous_create_share": ambiguous_create_share,
        "ambiguous_create_mode": ambiguous_create_mode,
        "ambiguous_create_delay_s": ambiguous_create_delay_s,
        "list_lag_s": list_lag_s,
        "bad_download_first_n": bad_download_first_n,
        "bad_download_share": bad_download_share,
    }
    if bad_download_kinds:
        fault_fields["bad_download_kinds"] = bad_download_kinds
    try:
        return EmulatorConfig(
            state_dir=state_dir,
            speed=SpeedConfig.model_validate(speed_fields),
            concurrency=concurrency,
            image_detail="realistic" if image_detail == "realistic" else "fast",
            rpm_limit=rpm_limit,
            rate_window_s=rate_window_s,
            enqueued_token_limit=enqueued_token_limit,
            models=models,
            now=pinned,
            faults=FaultConfig.model_validate(fault_fields),
        )
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from exc


@click.group("emulator")
def emulator_group() -> None:
    """The built-in emulator of the OpenAI Files, Batches and Images API."""


@emulator_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option(
    "--state-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Files and database; a restart on the same directory keeps files and batches (default: "
    f"./{DEFAULT_STATE_DIR}, created if missing and printed at start).",
)
@click.option("--speed", type=click.Choice(["instant", "realistic"]), default="instant", show_default=True)
@click.option("--per-request-s", type=float, default=None, help="Realistic mode: seconds per request.")
@click.option("--completion-window-s", type=int, default=None, help="Seconds before a batch expires (86400).")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Lines of one batch run at once.")
@click.option(
    "--image-detail",
    type=click.Choice(["fast", "realistic"]),
    default="fast",
    show_default=True,
    help="fast: flat images (small files); realistic: noise, ~1.5 MB per 1024x1024 PNG.",
)
@click.option("--rpm-limit", type=int, default=10_000, show_default=True, help="Requests per minute (429 over it).")
@click.option(
    "--rate-window-s",
    type=float,
    default=60.0,
    show_default=True,
    help="Length of the rate-limit window in seconds (the service's 60; shorter only for benchmarks).",
)
@click.option("--enqueued-token-limit", type=int, default=None, help="Per-model enqueued input-token cap.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault RNG.")
@click.option("--fault-429", multiple=True, metavar="ROUTE=SHARE", help="Share of 429s on ROUTE ('*': all).")
@click.option("--fault-5xx", multiple=True, metavar="ROUTE=SHARE", help="Share of 500/503s on ROUTE.")
@click.option("--first-429", multiple=True, metavar="ROUTE=N", help="The first N requests on ROUTE get 429.")
@click.option("--first-5xx", multiple=True, metavar="ROUTE=N", help="The first N requests on ROUTE get 500/503.")
@click.option("--latency-ms", type=int, default=0, show_default=True, help="Added to every response.")
@click.option("--cut-download-after-bytes", "cut_after_bytes", type=int, default=None)
@click.option("--cut-download-first-n", "cut_first_n", type=int, default=0, show_default=True)
@click.option("--cut-download-share", "cut_share", type=float, default=0.0, show_default=True)
@click.option("--null-output-s", type=float, default=0.0, show_default=True, help="Completed shows null file ids.")
@click.option("--shuffle-output", "shuffle", is_flag=True, help="Publish result lines in shuffled order.")
@click.option("--drop-rows", type=int, default=0, show_default=True, help="Rows missing from both files.")
@click.option("--drop-rows-first-n", "drop_first_n", type=int, default=0, help="Only the first N batches (0: all).")
@click.option("--expire-after-lines", type=int, default=None, help="Expire a batch after this many lines.")
@click.option("--expire-first-n", type=int, default=0, show_default=True, help="...for the first N batches.")
@click.option("--expire-share", type=float, default=0.0, show_default=True, help="...for this share of batches.")
@click.option("--stuck-finalizing-s", type=float, default=0.0, show_default=True)
@click.option(
    "--ambiguous-create-first-n",
    type=int,
    default=0,
    show_default=True,
    help="The first N batch creates that succeed are answered as failures (the batch exists).",
)
@click.option(
    "--ambiguous-create-share",
    type=float,
    default=0.0,
    show_default=True,
    help="...and this share of the others (seeded).",
)
@click.option(
    "--ambiguous-create-mode",
    type=click.Choice(AMBIGUOUS_CREATE_MODES),
    default="500",
    show_default=True,
    help="How: 500, 504, or drop (headers, then the connection closes).",
)
@click.option("--ambiguous-create-delay-s", type=float, default=0.0, show_default=True, help="Wait before that answer.")
@click.option(
    "--list-lag-s",
    type=float,
    default=0.0,
    show_default=True,
    help="A batch younger than this is absent from GET /v1/batches (GET /v1/batches/ID finds it).",
)
@click.option(
    "--bad-download-first-n",
    type=int,
    default=0,
    show_default=True,
    help="The first N downloads of batch result files serve something that is not the file.",
)
@click.option(
    "--bad-download-share", type=float, default=0.0, show_default=True, help="...and this share of the others."
)
@click.option(
    "--bad-download-kind",
    "bad_download_kinds",
    multiple=True,
    type=click.Choice(BAD_DOWNLOAD_KINDS),
    help="What they serve (repeatable; default: every kind, in turn).",
)
@click.option(
    "--models",
    "models_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='TOML file of [models."NAME"] rows merged over the shipped model table (new models, changed dates).',
)
@click.option(
    "--now",
    default=None,
    metavar="ISO",
    help="Pin the emulator's clock for model lifecycle (e.g. 2026-12-02 or 2026-12-02T10:00:00Z; UTC if no offset).",
)
def serve(host: str, port: int, **options: object) -> None:
    """Serve the emulator at http://HOST:PORT/v1 until Ctrl-C. Point an OpenAI client's base_url there."""
    note = ""
    if options.get("state_dir") is None:
        options["state_dir"] = Path(DEFAULT_STATE_DIR)
        note = ", the default: --state-dir DIR to choose"
    _serve(host, port, note=note, **options)


def _serve(host: str, port: int, *, note: str, **options: object) -> None:
    config = build_config(**options)  # type: ignore[arg-type]
    click.echo(f"batchpipe emulator on http://{host}:{port}/v1 (state in {config.state_dir}{note})", err=True)
    clock = "real UTC time" if config.now is None else f"pinned at {config.lifecycle_now().isoformat()}"
    click.echo(f"models: {config.models.origin} ({len(config.models)} rows); lifecycle clock: {clock}", err=True)
    from batchpipe.logs import show_emulator_requests

    show_emulator_requests(True)
    run_server(config, host=host, port=port)
