"""Reprocessing failed jobs: select items from the ledger, optionally change request fields, and run them
again as new attempts linked to the originals (``previous_custom_id``), or export them as a manifest.

Workflows (README "Reprocessing"):

- nightly catalog re-run: ``batchpipe run jobs/catalog-nightly.toml`` renders only what changed; items already
  succeeded with the same request hash are skipped;
- brand variants again at another quality: ``batchpipe retry --job brand-variants --status succeeded
  --set quality=high``;
- everything that failed last week: ``batchpipe retry --since 2026-11-14``, or ``batchpipe retry --job tea
  --since 2026-11-14 --export week.jsonl``, edit it, then ``batchpipe run --manifest week.jsonl``: each line names
  its job and the attempt it retries (``metadata.retry_job``, ``metadata.retry_of``), so the run takes the job's
  name from the file and its items become new attempts that supersede the originals.

A failure the service called final (``retryable`` 0: ``moderation_blocked``, invalid requests) would fail again if
sent unchanged, so ``retry`` leaves such items out (:func:`split_final_failures`) unless ``--set`` changes their
request or ``--force`` is given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import orjson

from batchpipe.domain import spec as rules
from batchpipe.domain.items import Item, ItemStatus, request_hash
from batchpipe.domain.modeltable import ModelTable
from batchpipe.domain.problems import Problem
from batchpipe.domain.records import ItemRow
from batchpipe.errors import InputError
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.matrix import REQUEST_FIELDS
from batchpipe.ports import Ledger
from batchpipe.runtime.matrix_run import MatrixRun
from batchpipe.stages.collect import IMAGE_FAULT_CODES

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "OUTSIDE_CAUSE_CODES",
    "RetrySelection",
    "check_error_codes",
    "export_manifest",
    "is_final_failure",
    "left_out_line",
    "manifest_retry_jobs",
    "parse_set_options",
    "recorded_api",
    "retry_items",
    "select_rows",
    "split_final_failures",
]

#: What ``batchpipe retry`` selects when no ``--status`` is given: every final state but success.
DEFAULT_RETRY_STATUSES: Final[tuple[str, ...]] = (
    ItemStatus.FAILED,
    ItemStatus.EXPIRED,
    ItemStatus.CANCELLED,
    ItemStatus.MISSING,
)
#: Request fields ``--set`` may change (the Images API body fields of FACTS §4.1-4.2).
SETTABLE_FIELDS: Final[frozenset[str]] = frozenset({*REQUEST_FIELDS, "prompt"})
_INT_FIELDS: Final = frozenset({"n", "output_compression", "frame_count", "frame_duration_ms"})
_JSON_FIELDS: Final = frozenset({"svg"})


@dataclass(frozen=True)
class RetrySelection:
    """Which ledger items to take again. Every given filter must match; only each item's latest attempt counts.

    ``statuses``/``error_codes``/``c2pa_states``: sets of values; ``since``/``until``: unix seconds of the row's
    last update; ``job``: job name; ``retryable_only``: skip failures marked not retryable.
    """

    job: str | None = None
    statuses: tuple[str, ...] = DEFAULT_RETRY_STATUSES
    error_codes: tuple[str, ...] | None = None
    c2pa_states: tuple[str, ...] | None = None
    since: float | None = None
    until: float | None = None
    retryable_only: bool = False


def parse_when(text: str, *, option: str) -> float:
    """``YYYY-MM-DD`` or an ISO timestamp (UTC unless it says otherwise) → unix seconds; ``InputError`` if not."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"not a date or ISO timestamp: {text!r}", file="<command line>", field=option) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def parse_set_options(pairs: Sequence[str]) -> dict[str, object]:
    """``["quality=high", "n=2"]`` → ``{"quality": "high", "n": 2}``; ``InputError`` for unknown fields."""
    changes: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or name not in SETTABLE_FIELDS:
            raise InputError(
                f"--set takes FIELD=VALUE with FIELD one of {', '.join(sorted(SETTABLE_FIELDS))}; got {pair!r}",
                file="<command line>",
                field="--set",
            )
        if name in _JSON_FIELDS:
            try:
                changes[name] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InputError(
                    f"{name} must be a JSON object, not {value!r}", file="<command line>", field=name
                ) from exc
        elif name in _INT_FIELDS:
            try:
                changes[name] = int(value)
            except ValueError as exc:
                raise InputError(
                    f"{name} must be a whole number, not {value!r}", file="<command line>", field=name
                ) from exc
        else:
            changes[name] = value
    return changes


def select_rows(ledger: Ledger, selection: RetrySelection) -> Iterator[ItemRow]:
    """The latest attempt of every item matching ``selection`` (streamed)."""
    for row in ledger.items(
        job=selection.job,
        statuses=selection.statuses,
        error_codes=selection.error_codes,
        c2pa_states=selection.c2pa_states,
        since=selection.since,
        until=selection.until,
        latest_only=True,
    ):
        if selection.retryable_only and row.retryable == 0:
            continue
        if row.status == ItemStatus.INVALID or not row.endpoint:
            continue  # refused locally: there is no request to send; fix the manifest and run the job
        yield row


def _changed_body(row: ItemRow, changes: Mapping[str, object], models: ModelTable | None) -> dict[str, object]:
    body = {**row.body, **changes}
    if body.get("model") and "input_fidelity" in body:
        model_rules = rules.model_rules(str(body["model"]), models)
        if model_rules is not None and not model_rules.input_fidelity and "input_fidelity" not in changes:
            body.pop("input_fidelity")  # e.g. switching an edit to a model that always reads at high fidelity
    return body


def retry_items(
    rows: Iterable[ItemRow], changes: Mapping[str, object], *, advice: rules.ModelAdvice | None = None
) -> Iterator[Item | Problem]:
    """Items for new attempts of ``rows`` with ``changes`` applied, each checked against the model's rules; each
    item's metadata names the attempt it retries (``retry_of``: its custom_id) and its job (``retry_job``).

    ``advice``: the lifecycle policy (:class:`batchpipe.domain.lifecycle.ModelPolicy`, its fix text
    ``--set model={model}``): an item whose model is shut down, or shuts down before its batch could finish,
    becomes a problem naming the date and the replacement. Without it only the model's capabilities are checked.
    """
    models = advice.table if advice is not None else None
    for row in rows:
        body = _changed_body(row, changes, models)
        problems = rules.check_image_request(row.endpoint, body, models=models, advice=advice)
        if problems:
            for problem in problems:
                yield problem.at(file=f"ledger:{row.custom_id}", key=row.item_key)
            continue
        metadata: dict[str, object] = orjson.loads(row.metadata_json)
        metadata["retry_of"] = row.custom_id
        metadata["retry_job"] = row.job
        yield row.as_item(body=body, metadata=metadata, source=f"ledger:{row.custom_id}")


def export_manifest(items: Iterable[Item | Problem], out: IO[bytes]) -> tuple[int, list[Problem]]:
    """Write items as plain JSONL manifest lines (``key``, body fields, ``metadata``); returns (lines, problems).

    ``batchpipe run --manifest FILE`` accepts the result: the job comes from the lines' ``metadata.retry_job``
    (:func:`manifest_retry_jobs`), so the items become new attempts of the originals, which are superseded.
    """
    count = 0
    problems: list[Problem] = []
    for entry in items:
        if isinstance(entry, Problem):
            problems.append(entry)
            continue
        line: dict[str, Any] = {"key": entry.key, **entry.body, "metadata": entry.metadata}
        out.write(orjson.dumps(line) + b"\n")
        count += 1
    return count, problems


def default_output_dir(ledger: Ledger, job: str | None, workdir: Path) -> tuple[Path, str]:
    """The output directory and trust setting of the job's latest run (``workdir/out/retry`` if unknown)."""
    run = ledger.latest_run(job)
    if run and run.get("output_dir"):
        return Path(str(run["output_dir"])), str(run.get("trust") or "default")
    return workdir / "out" / (job or "retry"), "default"


def job_session(ledger: Ledger, job: str, workdir: Path) -> Callable[[], AbstractAsyncContextManager[None]] | None:
    """The job's run session (a matrix job's loopback mirror of reference photos), found through the spec path
    its latest run recorded; None when the job has none or its spec is gone."""
    run = ledger.latest_run(job)
    spec_path = Path(str(run["spec_path"])) if run and run.get("spec_path") else None
    if spec_path is None or not spec_path.is_file():
        return None
    try:
        spec = JobSpec.load(spec_path, workdir=workdir, on_warning=lambda message: None)  # only its session is used
    except InputError:
        return None
    if spec.matrix is None:
        return None
    return MatrixRun(spec, workdir=workdir).session


#: Error codes recorded as not retryable whose cause lies outside the request itself, so the same request sent
#: again may succeed: a reference photo's host that was down (``invalid_image_url``, what ``[run]
#: retry_error_codes`` is for), an uploaded reference that expired (``invalid_file_id``: ``retry`` uploads
#: references again), a service fault in the returned image bytes after its one automatic retry
#: (:data:`~batchpipe.stages.collect.IMAGE_FAULT_CODES`). ``retry`` does not leave these out.
OUTSIDE_CAUSE_CODES: Final[frozenset[str]] = frozenset({"invalid_image_url", "invalid_file_id", *IMAGE_FAULT_CODES})


def is_final_failure(row: ItemRow) -> bool:
    """True for a failure that the same request would meet again: status ``failed``, ``retryable`` 0 (what the
    collector records for ``moderation_blocked`` and invalid requests; see
    :data:`batchpipe.stages.collect.RETRYABLE_ERROR_CODES`) and a code not in :data:`OUTSIDE_CAUSE_CODES`."""
    return row.status == ItemStatus.FAILED and row.retryable == 0 and row.error_code not in OUTSIDE_CAUSE_CODES


def split_final_failures(
    rows: Iterable[ItemRow], changes: Mapping[str, object], *, models: ModelTable | None = None, force: bool = False
) -> tuple[list[ItemRow], list[ItemRow]]:
    """``(kept, left_out)``: the final failures (:func:`is_final_failure`) whose request ``changes`` (``--set``)
    would leave exactly as it was are left out, unless ``force``; every other row is kept, in order."""
    kept: list[ItemRow] = []
    left_out: list[ItemRow] = []
    for row in rows:
        if (
            not force
            and is_final_failure(row)
            and request_hash(row.endpoint, _changed_body(row, changes, models)) == request_hash(row.endpoint, row.body)
        ):
            left_out.append(row)
        else:
            kept.append(row)
    return kept, left_out


def left_out_line(left_out: Sequence[ItemRow]) -> str:
    """What ``retry`` prints about the final failures it leaves out: how many, their error codes (most common
    first) and the two ways to include them."""
    counts: dict[str, int] = {}
    for row in left_out:
        code = row.error_code or "unknown_error"
        counts[code] = counts.get(code, 0) + 1
    codes = ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return (
        f"left out {len(left_out)} item(s) whose failure is final ({codes}): sent again unchanged they would fail "
        "again. Change their request with --set FIELD=VALUE (or --export, edit, run), or include them with --force"
    )


def check_error_codes(ledger: Ledger, job: str | None, error_codes: Sequence[str], selected: Iterable[ItemRow]) -> None:
    """Refuse ``--error-code`` values that no item of ``job`` (of any job when None) has ever had: raises
    ``InputError`` (exit 2) naming them and listing the error codes the ledger does hold for it. A code that
    ``selected`` rows carry is known without reading the ledger again."""
    seen = {row.error_code for row in selected}
    missing = [code for code in error_codes if code not in seen]
    if not missing:
        return
    present = {row.error_code for row in ledger.items(job=job) if row.error_code}
    unknown = [code for code in missing if code not in present]
    if unknown:
        where = f"of job {job!r}" if job else "in the ledger"
        listed = ", ".join(sorted(present)) or "none (no item has an error code)"
        raise InputError(
            f"unknown --error-code {', '.join(map(repr, unknown))}: no item {where} has it; "
            f"error codes {where}: {listed}",
            file="<command line>",
            field="--error-code",
        )


def recorded_api(ledger: Ledger, rows: Iterable[ItemRow]) -> tuple[str, str] | None:
    """``(run_id, api)`` of the most recently started run among the runs ``rows`` were recorded by: ``api`` as
    that run recorded it (``emulator``, ``openai`` or the base URL given with ``--api``; never a key). None when
    no run is known."""
    best: dict[str, object] | None = None
    for run_id in {row.run_id for row in rows if row.run_id}:
        info = ledger.run_info(run_id)
        if info is None or not info.get("api"):
            continue
        if best is None or float(str(info.get("started_at") or 0)) > float(str(best.get("started_at") or 0)):
            best = info
    if best is None:
        return None
    return str(best["run_id"]), str(best["api"])


_RETRY_JOB: Final = b'"retry_job"'


def manifest_retry_jobs(path: Path) -> dict[str, int]:
    """``{job: lines}``: how many lines of a plain JSONL manifest name each job in ``metadata.retry_job`` (the
    lines ``batchpipe retry --export`` wrote). Streamed; lines that do not parse are skipped (the run's
    validation reports them). Empty for a path that is not a regular file (the run refuses it)."""
    jobs: dict[str, int] = {}
    if not path.is_file():
        return jobs
    with path.open("rb") as lines:
        for line in lines:
            if _RETRY_JOB not in line:
                continue
            try:
                fields = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            metadata = fields.get("metadata") if isinstance(fields, dict) else None
            job = metadata.get("retry_job") if isinstance(metadata, dict) else None
            if isinstance(job, str) and job:
                jobs[job] = jobs.get(job, 0) + 1
    return jobs
