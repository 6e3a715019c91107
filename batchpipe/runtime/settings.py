"""Run settings, built once at the edge and then only read.

Precedence: the command line (``--limit``, ``--skip-invalid``, ``--poll-interval``...) over the job spec's
``[run]`` section (:class:`batchpipe.input.jobspec.RunSection`) over the defaults below. Where the API is (this
machine or the real service) decides the polling and grace timings (:func:`api_timing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from batchpipe.domain.modeltable import ModelTable
from batchpipe.input.jobspec import RunSection

__all__ = ["ApiTiming", "RunOptions", "api_timing", "options_from_spec"]


class ApiTiming(TypedDict):
    """The :class:`RunOptions` fields that depend on where the API is (seconds)."""

    poll_interval_s: float
    max_poll_interval_s: float
    output_grace_s: float
    list_lag_s: float
    max_stall_s: float


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves. Times in seconds; budgets in estimated input tokens.

    ``enqueued_token_budget``: per model, the most input tokens this run keeps enqueued at once (FACTS §3.1,
    gotchas #4): shards go out in waves under it. ``output_grace_s``: how long a ``completed`` batch with
    ``output_file_id: null`` is waited for before its rows are reconciled from the error file alone
    (gotchas #3). ``cleanup_inputs`` / ``cleanup_outputs``: delete input files after their batch ends and
    output/error files after collection (gotchas #6). ``retry_error_codes``: per-request error codes to
    resubmit automatically on top of the retryable ones (e.g. ``invalid_image_url`` while a photo host is down).
    ``list_lag_s``: how long after a create whose answer was lost its batch may still be missing from
    ``GET /batches`` (the list is eventually consistent): absence is decisive only after it.
    ``max_ambiguous_submits``: ambiguous failures (5xx, timeout, cut connection) of one shard's upload or create
    before the run stops (exit 3) and leaves the decision to a later run. ``max_stall_s``: how long every shard may
    be refused (429, the upload race's 404) with nothing in flight before the run stops (exit 3).

    Frozen: built once at the edge (:func:`options_from_spec`, ``batchpipe retry``), then only read. The timing
    fields that depend on where the API is come from :func:`api_timing` at that moment.
    """

    workdir: Path
    limit: int | None = None
    skip_invalid: bool = False
    max_attempts: int = 3
    poll_interval_s: float = 5.0
    max_poll_interval_s: float = 60.0
    collect_concurrency: int = 2
    collect_workers: int = 4
    enqueued_token_budget: dict[str, int] = field(default_factory=dict)
    output_grace_s: float = 600.0
    cleanup_inputs: bool = True
    cleanup_outputs: bool = True
    max_shard_requests: int | None = None
    max_shard_bytes: int | None = None
    max_shard_input_tokens: int | None = None
    retry_error_codes: frozenset[str] = frozenset()
    list_lag_s: float = 60.0
    max_ambiguous_submits: int = 2
    max_stall_s: float = 900.0
    models: ModelTable | None = None  #: the model table for costs (default: the shipped one)
    stop_after: str | None = None  # testing hook: "build" | "submit" stops the run early (resumable)


def api_timing(*, local: bool, poll_interval_s: float | None = None) -> ApiTiming:
    """The :class:`RunOptions` timings (seconds) for an API on this machine (``local``: the emulator or a
    loopback proxy: polled every 0.2 s, at most every 2 s, grace 30 s, list lag 10 s, stall 30 s) or the real
    service (every 30 s backing off to 300 s, grace 600 s, list lag 60 s, stall 900 s; FACTS §2.2: batches take
    minutes to hours). ``poll_interval_s`` (``--poll-interval``) overrides the base interval."""
    base = poll_interval_s or (0.2 if local else 30.0)
    return ApiTiming(
        poll_interval_s=base,
        max_poll_interval_s=max(base, 2.0 if local else 300.0),
        output_grace_s=30.0 if local else 600.0,
        list_lag_s=10.0 if local else 60.0,
        max_stall_s=30.0 if local else 900.0,
    )


def options_from_spec(
    run: RunSection,
    *,
    workdir: Path,
    limit: int | None = None,
    skip_invalid: bool = False,
    models: ModelTable | None = None,
    stop_after: str | None = None,
    timing: ApiTiming | None = None,
    **overrides: Any,
) -> RunOptions:
    """The one :class:`RunOptions` of a run: the job spec's ``[run]`` section under the command line's values
    (``skip_invalid`` is on when either says so), ``timing`` from :func:`api_timing`, ``overrides`` last
    (``collect_workers`` from ``--collect-workers`` comes in there)."""
    values: dict[str, Any] = {
        "workdir": workdir,
        "limit": limit,
        "skip_invalid": skip_invalid or run.skip_invalid,
        "max_attempts": run.max_attempts,
        "enqueued_token_budget": dict(run.enqueued_token_budget),
        "max_shard_requests": run.max_requests_per_shard,
        "max_shard_bytes": run.max_shard_bytes,
        "max_shard_input_tokens": run.max_input_tokens_per_shard,
        "cleanup_inputs": run.delete_input_files,
        "cleanup_outputs": run.delete_output_files,
        "retry_error_codes": frozenset(run.retry_error_codes),
        "collect_workers": run.collect_workers,
        "collect_concurrency": run.collect_concurrency,
        "models": models,
        "stop_after": stop_after,
        **(timing or {}),
        **overrides,
    }
    return RunOptions(**values)
