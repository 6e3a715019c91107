"""The batch lifecycle: validate the input file, run its lines, publish output and error files.

Lifecycle (FACTS §2.2)::

    validating ─┬─> failed                      (errors.data[] with code/message/param/line)
                └─> in_progress ─┬─> finalizing ─> completed
                                 ├─> expired     (partial results; unfinished lines: batch_expired)
                                 └─> cancelling ─> cancelled (partial results; batch_cancelled)

Each batch runs as one asyncio task in the server's loop. Lines are streamed from the input file and run
by ``concurrency`` workers through the image executor; each result line is appended to a part file at
once, and the part files are published as ``batch_output`` files at the end. Everything a restart needs
is on disk: the batch row, the part files (whose custom_ids say which lines are done).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol

import orjson
import structlog

from batchpipe.domain import spec
from batchpipe.emulator.config import EmulatorConfig
from batchpipe.emulator.faults import BatchFaultPlan, FaultInjector, server_error_body
from batchpipe.emulator.state import TERMINAL_STATUSES, BatchRecord, FileRecord, StateStore, new_id

__all__ = [
    "BatchProcessor",
    "CancelRefused",
    "ExecutorLike",
    "OutcomeLike",
    "validation_error",
]

log = structlog.get_logger("batchpipe.emulator")

#: Default lifetime of published output/error files (G-BATCH: deleted 30 days after completion).
DEFAULT_OUTPUT_EXPIRY_S = 30 * 86_400
#: Cap on errors.data entries reported for one failed validation.
MAX_VALIDATION_ERRORS = 1_000
_SAVE_EVERY_S = 0.25


class OutcomeLike(Protocol):
    """What ``ImageExecutor.execute`` returns (``batchpipe.emulator.images.ImageOutcome``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def body(self) -> dict[str, object]: ...


class ExecutorLike(Protocol):
    """The image executor seam (``batchpipe.emulator.images.ImageExecutor``)."""

    async def execute(
        self, endpoint: str, body: dict[str, object], *, open_file: Callable[[str], bytes | None]
    ) -> OutcomeLike: ...

    async def aclose(self) -> None: ...


class CancelRefused(Exception):
    """The batch is in a status that cannot be cancelled (``status`` names it)."""

    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(f"Cannot cancel a batch with status '{status}'.")


def validation_error(
    code: str, message: str, *, param: str | None = None, line: int | None = None
) -> dict[str, object]:
    """One SPEC ``BatchError``: ``{code, message, param, line}``."""
    return {"code": code, "message": message, "param": param, "line": line}


@dataclass
class _Run:
    """In-memory state of one running batch."""

    record: BatchRecord
    done: set[str] = field(default_factory=set)
    started: int = 0
    stop: Literal["expired", "cancelled"] | None = None
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    last_save: float = 0.0


class BatchProcessor:
    """Creates batches and drives each one through its lifecycle.

    ``clock`` returns unix seconds; ``sleep`` is awaited for every configured delay (injectable).
    """

    def __init__(
        self,
        *,
        store: StateStore,
        config: EmulatorConfig,
        executor: ExecutorLike,
        faults: FaultInjector,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._config = config
        self._executor = executor
        self._faults = faults
        self._clock = clock
        self._sleep = sleep
        self._runs: dict[str, _Run] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ API
    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, str] | None,
        output_expires_after_s: int | None,
    ) -> BatchRecord:
        """Create a batch in ``validating`` (already validated request fields) and start running it."""
        now = int(self._clock())
        doc: dict[str, object] = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "model": None,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": spec.COMPLETION_WINDOW,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + self._config.speed.completion_window_s,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": None,
            "metadata": metadata,
        }
        internal: dict[str, object] = {
            "plan": self._faults.batch_plan().to_dict(),
            "enqueued_tokens": 0,
            "output_expires_after_s": output_expires_after_s,
            "files_visible_at": None,
            "usage_in": 0,
            "usage_out": 0,
        }
        if self._faults.config.list_lag_s:
            internal["listed_at"] = self._clock() + self._faults.config.list_lag_s
        record = BatchRecord(str(doc["id"]), doc, internal)
        self._store.add_batch(record)
        self._start(record)
        return record

    def get(self, batch_id: str) -> BatchRecord | None:
        """The live record of a running batch, or the stored one."""
        run = self._runs.get(batch_id)
        return run.record if run is not None else self._store.get_batch(batch_id)

    def list_batches(self, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """Batches newest first (live records substituted), ``limit`` of them after the cursor ``after``, and
        whether more follow. Batches not yet listable (``FaultConfig.list_lag_s``: ``internal.listed_at``, unix
        seconds, still in the future) are left out, and the page is filled from older ones."""
        now = self._clock()

        def listed(record: BatchRecord) -> bool:
            listed_at = record.internal.get("listed_at")
            return not isinstance(listed_at, int | float) or listed_at <= now

        visible: list[BatchRecord] = []
        cursor = after
        while True:
            records, more = self._store.list_batches(after=cursor, limit=limit + 1)
            visible.extend(r for r in records if listed(r))
            if len(visible) > limit or not more or not records:
                break
            cursor = records[-1].id
        page = visible[:limit]
        return [self._runs[r.id].record if r.id in self._runs else r for r in page], len(visible) > limit

    def render(self, record: BatchRecord) -> dict[str, object]:
        """The SPEC ``Batch`` object as the API returns it (file ids hidden during a null-output fault)."""
        doc = dict(record.doc)
        visible_at = record.internal.get("files_visible_at")
        if isinstance(visible_at, int | float) and self._clock() < visible_at:
            doc["output_file_id"] = None
            doc["error_file_id"] = None
        return doc

    def cancel(self, batch_id: str) -> BatchRecord | None:
        """Request cancellation: ``validating``/``in_progress`` → ``cancelling``. None if unknown.

        Raises ``CancelRefused`` from ``finalizing`` or a terminal status; cancelling twice is a no-op.
        """
        record = self.get(batch_id)
        if record is None:
            return None
        if record.status == "cancelling":
            return record
        if record.status not in ("validating", "in_progress"):
            raise CancelRefused(record.status)
        record.doc["status"] = "cancelling"
        record.doc["cancelling_at"] = int(self._clock())
        self._store.save_batch(record)
        run = self._runs.get(batch_id)
        if run is not None:
            run.stop = "cancelled"
            run.cancel_event.set()
        else:
            self._start(record)
        return record

    async def resume_all(self) -> None:
        """Restart every non-terminal batch found in the store (after a server restart)."""
        for record in self._store.iter_unfinished_batches():
            if record.id not in self._runs:
                log.info("emulator.batch.resume", batch_id=record.id, status=record.status)
                self._start(record)

    async def aclose(self) -> None:
        """Stop every batch task (their state stays on disk and resumes on the next start)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for run in self._runs.values():
            self._store.save_batch(run.record)
        self._runs.clear()
        self._tasks.clear()

    # ------------------------------------------------------------- internals
    def _start(self, record: BatchRecord) -> None:
        run = _Run(record)
        if record.status == "cancelling":
            run.stop = "cancelled"
        self._runs[record.id] = run
        task = asyncio.get_running_loop().create_task(self._drive(run), name=f"batch:{record.id}")
        self._tasks[record.id] = task

    def _save(self, run: _Run, *, force: bool = True) -> None:
        now = time.monotonic()
        if force or now - run.last_save >= _SAVE_EVERY_S:
            run.last_save = now
            self._store.save_batch(run.record)

    def _plan(self, run: _Run) -> BatchFaultPlan:
        plan = run.record.internal.get("plan")
        return BatchFaultPlan.from_dict(plan if isinstance(plan, dict) else {})

    async def _drive(self, run: _Run) -> None:
        batch_id = run.record.id
        try:
            await self._lifecycle(run)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("emulator.batch.crashed", batch_id=batch_id)
            doc = run.record.doc
            if doc["status"] not in TERMINAL_STATUSES:
                doc["status"] = "failed"
                doc["failed_at"] = int(self._clock())
                doc["errors"] = {
                    "object": "list",
                    "data": [validation_error("server_error", "The batch could not be processed.")],
                }
                self._save(run)
        finally:
            if self._tasks.get(batch_id) is asyncio.current_task():
                self._runs.pop(batch_id, None)
                self._tasks.pop(batch_id, None)

    async def _lifecycle(self, run: _Run) -> None:
        doc = run.record.doc
        if doc["status"] == "validating":
            await self._sleep(self._config.speed.delay("validating"))
            if not await self._validate(run):
                return
        if doc["status"] == "in_progress":
            self._load_parts(run)
            await self._execute_lines(run)
        if run.stop is not None or doc["status"] in ("cancelling", "expired"):
            await self._finish_early(run)
            return
        if doc["status"] == "in_progress":
            doc["status"] = "finalizing"
            doc["finalizing_at"] = int(self._clock())
            self._save(run)
        if doc["status"] == "finalizing":
            plan = self._plan(run)
            await self._sleep(self._config.speed.delay("finalizing") + plan.stuck_finalizing_s)
            self._publish(run)
            now = self._clock()
            doc["status"] = "completed"
            doc["completed_at"] = int(now)
            if plan.null_output_file_s:
                run.record.internal["files_visible_at"] = now + plan.null_output_file_s
            self._release(run)
            self._save(run)
            log.info("emulator.batch.completed", batch_id=run.record.id, counts=doc["request_counts"])

    def _release(self, run: _Run) -> None:
        run.record.internal["enqueued_tokens"] = 0

    def _fail(self, run: _Run, errors: list[dict[str, object]]) -> None:
        doc = run.record.doc
        doc["status"] = "failed"
        doc["failed_at"] = int(self._clock())
        doc["errors"] = {"object": "list", "data": errors}
        self._release(run)
        self._save(run)
        log.info("emulator.batch.failed", batch_id=run.record.id, first_code=errors[0]["code"] if errors else None)

    # ---------------------------------------------------------- validation
    async def _validate(self, run: _Run) -> bool:
        """Check the input file like the service does; move to ``in_progress`` or ``failed``."""
        doc = run.record.doc
        file_id = str(doc["input_file_id"])
        endpoint = str(doc["endpoint"])
        record = self._store.get_file(file_id)
        if record is None:
            self._fail(
                run,
                [
                    validation_error(
                        "invalid_input_file",
                        f"Cannot find file {file_id}. Either it does not exist or you do not have access to it.",
                        param="input_file_id",
                    )
                ],
            )
            return False
        if record.purpose != "batch":
            self._fail(
                run,
                [
                    validation_error(
                        "invalid_input_file",
                        f"File {file_id} has purpose '{record.purpose}'; batch input files must have purpose 'batch'.",
                        param="input_file_id",
                    )
                ],
            )
            return False
        errors: list[dict[str, object]] = []
        seen: set[str] = set()
        models: str | None = None
        count = 0
        tokens = 0
        path = self._store.file_path(file_id)
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                count += 1
                if count % 500 == 0:
                    await asyncio.sleep(0)  # keep the loop responsive on big files
                if count > spec.MAX_REQUESTS_PER_BATCH:
                    errors.append(
                        validation_error(
                            "too_many_tasks",
                            "The batch input file has more than the maximum of "
                            f"{spec.MAX_REQUESTS_PER_BATCH} requests.",
                        )
                    )
                    break
                line_errors, cid, model, body = self._check_line(raw, lineno, endpoint, seen)
                if cid is not None:
                    seen.add(cid)
                if model is not None:
                    if models is None:
                        models = model
                    elif model != models:
                        line_errors.append(
                            validation_error(
                                "model_mismatch",
                                f"The model '{model}' differs from '{models}' used by earlier requests. "
                                "A batch input file can only contain requests for a single model.",
                                param="body.model",
                                line=lineno,
                            )
                        )
                if body is not None:
                    tokens += spec.estimate_input_tokens(body, self._config.models)
                errors.extend(line_errors)
                if len(errors) >= MAX_VALIDATION_ERRORS:
                    break
        if not errors and count == 0:
            errors.append(validation_error("empty_file", "The batch input file is empty."))
        doc["model"] = models
        if errors:
            self._fail(run, errors[:MAX_VALIDATION_ERRORS])
            return False
        if run.stop == "cancelled":
            return True  # _finish_early handles it
        limit = self._config.enqueued_limit_for(models or "")
        if limit is not None and models is not None:
            queued = self._store.enqueued_tokens(models, exclude=run.record.id)
            if queued + tokens > limit:
                self._fail(
                    run,
                    [
                        validation_error(
                            "token_limit_exceeded",
                            f"Enqueued token limit reached for {models} in organization {self._config.org}. "
                            f"Limit: {limit} enqueued tokens. Please try again once some in_progress batches "
                            "have been completed.",
                        )
                    ],
                )
                return False
        run.record.internal["enqueued_tokens"] = tokens
        doc["status"] = "in_progress"
        doc["in_progress_at"] = int(self._clock())
        doc["request_counts"] = {"total": count, "completed": 0, "failed": 0}
        doc["usage"] = self._usage(0, 0)
        self._save(run)
        return True

    @staticmethod
    def _check_line(
        raw: bytes, lineno: int, endpoint: str, seen: set[str]
    ) -> tuple[list[dict[str, object]], str | None, str | None, dict[str, object] | None]:
        """Problems of one input line, its custom_id, model and body (when readable)."""
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return (
                [validation_error("invalid_json_line", "This line is not parseable as valid JSON.", line=lineno)],
                None,
                None,
                None,
            )
        if not isinstance(line, dict):
            return (
                [validation_error("invalid_json_line", "This line is not a JSON object.", line=lineno)],
                None,
                None,
                None,
            )
        errors: list[dict[str, object]] = []
        cid = line.get("custom_id")
        if not isinstance(cid, str) or not cid:
            errors.append(
                validation_error(
                    "missing_required_parameter",
                    "Missing required parameter: 'custom_id'.",
                    param="custom_id",
                    line=lineno,
                )
            )
            cid = None
        elif cid in seen:
            errors.append(
                validation_error(
                    "duplicate_custom_id",
                    f"The custom_id '{cid}' is a duplicate of another request. The custom_id parameter "
                    "must be unique for each request in a batch.",
                    param="custom_id",
                    line=lineno,
                )
            )
        if line.get("method") != "POST":
            errors.append(
                validation_error(
                    "invalid_method",
                    f"The method {line.get('method')!r} is not supported. Only 'POST' is supported.",
                    param="method",
                    line=lineno,
                )
            )
        if line.get("url") != endpoint:
            errors.append(
                validation_error(
                    "url_mismatch",
                    f"The URL {line.get('url')!r} of this request does not match the batch endpoint '{endpoint}'.",
                    param="url",
                    line=lineno,
                )
            )
        body = line.get("body")
        if not isinstance(body, dict):
            errors.append(
                validation_error(
                    "missing_required_parameter",
                    "Missing required parameter: 'body'.",
                    param="body",
                    line=lineno,
                )
            )
            return errors, cid, None, None
        model = body.get("model")
        return errors, cid, model if isinstance(model, str) else None, body

    # ------------------------------------------------------------ execution
    @staticmethod
    def _usage(tokens_in: int, tokens_out: int) -> dict[str, object]:
        """The SPEC ``Batch.usage`` shape from summed image usage (no caching, no reasoning tokens)."""
        return {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        }

    def _count(self, run: _Run, kind: Literal["output", "error"], usage: object) -> None:
        counts = run.record.doc["request_counts"]
        assert isinstance(counts, dict)
        counts["completed" if kind == "output" else "failed"] += 1
        if isinstance(usage, dict):
            internal = run.record.internal
            internal["usage_in"] = int(internal.get("usage_in") or 0) + int(usage.get("input_tokens") or 0)  # type: ignore[call-overload]
            internal["usage_out"] = int(internal.get("usage_out") or 0) + int(usage.get("output_tokens") or 0)  # type: ignore[call-overload]
            run.record.doc["usage"] = self._usage(int(internal["usage_in"]), int(internal["usage_out"]))  # type: ignore[call-overload]

    def _load_parts(self, run: _Run) -> None:
        """Learn finished custom_ids and counts from the part files (after a restart; drops a torn line)."""
        counts = run.record.doc.get("request_counts")
        total = counts.get("total", 0) if isinstance(counts, dict) else 0
        run.record.doc["request_counts"] = {"total": total, "completed": 0, "failed": 0}
        run.record.internal["usage_in"] = 0
        run.record.internal["usage_out"] = 0
        for kind in ("output", "error"):
            path = self._store.part_path(run.record.id, kind)
            if not path.exists():
                continue
            good = 0
            with path.open("rb") as fh:
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break
                    good += len(raw)
                    line = orjson.loads(raw)
                    run.done.add(str(line["custom_id"]))
                    response = line.get("response") or {}
                    body = response.get("body") if isinstance(response, dict) else None
                    usage = body.get("usage") if isinstance(body, dict) else None
                    self._count(run, kind, usage)
            if good != path.stat().st_size:
                os.truncate(path, good)

    async def _execute_lines(self, run: _Run) -> None:
        """Run every unfinished line with bounded concurrency until done, expired or cancelled."""
        doc = run.record.doc
        plan = self._plan(run)
        expires_at = float(doc["expires_at"])  # type: ignore[arg-type]
        endpoint = str(doc["endpoint"])
        workers = self._config.concurrency
        queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue(maxsize=workers * 2)
        out_fh = self._store.part_path(run.record.id, "output").open("ab")
        err_fh = self._store.part_path(run.record.id, "error").open("ab")
        per_request_s = self._config.speed.delay("per_request")

        async def produce() -> None:
            try:
                with self._store.file_path(str(doc["input_file_id"])).open("rb") as fh:
                    for raw in fh:
                        if run.stop is not None:
                            break
                        if not raw.strip():
                            continue
                        line = orjson.loads(raw)
                        if line["custom_id"] in run.done:
                            continue
                        await queue.put(line)
            except FileNotFoundError:
                log.warning("emulator.batch.input_gone", batch_id=run.record.id)
            for _ in range(workers):
                await queue.put(None)

        async def work() -> None:
            while True:
                line = await queue.get()
                if line is None:
                    return
                if run.stop is not None:
                    continue
                if (plan.expire_after_lines is not None and run.started >= plan.expire_after_lines) or (
                    self._clock() >= expires_at
                ):
                    run.stop = "expired"
                    continue
                run.started += 1
                if per_request_s:
                    await self._sleep(per_request_s)
                cid = str(line["custom_id"])
                body = line.get("body")
                try:
                    outcome = await self._executor.execute(
                        endpoint,
                        body if isinstance(body, dict) else {},
                        open_file=self._store.read_file_bytes,
                    )
                    status_code, response_body = outcome.status_code, outcome.body
                except Exception:  # the executor should not raise; if it does, the line gets a 500
                    log.exception("emulator.batch.line_crashed", batch_id=run.record.id, custom_id=cid)
                    status_code, response_body = 500, server_error_body(500)
                result = {
                    "id": new_id("batch_req_", 32),
                    "custom_id": cid,
                    "response": {
                        "status_code": status_code,
                        "request_id": new_id("req_", 32),
                        "body": response_body,
                    },
                    "error": None,
                }
                kind: Literal["output", "error"] = "output" if status_code == 200 else "error"
                target = out_fh if kind == "output" else err_fh
                target.write(orjson.dumps(result) + b"\n")
                target.flush()
                run.done.add(cid)
                self._count(run, kind, response_body.get("usage") if kind == "output" else None)
                self._save(run, force=False)

        producer = asyncio.create_task(produce())
        try:
            await asyncio.gather(*(work() for _ in range(workers)))
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
            out_fh.close()
            err_fh.close()
        self._save(run)

    # ------------------------------------------------------------ finishing
    async def _finish_early(self, run: _Run) -> None:
        """Expired or cancelled: unfinished lines go to the error file, then publish partial results."""
        doc = run.record.doc
        reason: Literal["expired", "cancelled"] = (
            "cancelled" if run.stop == "cancelled" or doc["status"] == "cancelling" else "expired"
        )
        if reason == "cancelled":
            await self._sleep(self._config.speed.delay("cancelling"))
        code = "batch_cancelled" if reason == "cancelled" else "batch_expired"
        message = (
            "This request was not executed because the batch was cancelled."
            if reason == "cancelled"
            else "This request could not be executed before the completion window expired."
        )
        if doc.get("in_progress_at") is not None:
            self._load_parts(run)
            counts = doc["request_counts"]
            assert isinstance(counts, dict)
            path = self._store.file_path(str(doc["input_file_id"]))
            with (
                contextlib.suppress(FileNotFoundError),
                path.open("rb") as fh,
                self._store.part_path(run.record.id, "error").open("ab") as err_fh,
            ):
                for raw in fh:
                    if not raw.strip():
                        continue
                    cid = str(orjson.loads(raw)["custom_id"])
                    if cid in run.done:
                        continue
                    err_fh.write(
                        orjson.dumps(
                            {
                                "id": new_id("batch_req_", 32),
                                "custom_id": cid,
                                "response": None,
                                "error": {"code": code, "message": message},
                            }
                        )
                        + b"\n"
                    )
                    run.done.add(cid)
                    counts["failed"] += 1
            self._publish(run)
        now = int(self._clock())
        if reason == "cancelled":
            doc["status"] = "cancelled"
            doc["cancelled_at"] = now
        else:
            doc["status"] = "expired"
            doc["expired_at"] = now
        self._release(run)
        self._save(run)
        log.info("emulator.batch.ended", batch_id=run.record.id, status=doc["status"])

    def _publish(self, run: _Run) -> None:
        """Turn the part files into ``batch_output`` files (applying drop/shuffle faults) and set the ids."""
        plan = self._plan(run)
        doc = run.record.doc
        rng = random.Random(plan.seed)
        parts = {kind: self._store.part_path(run.record.id, kind) for kind in ("output", "error")}
        offsets = {kind: _line_offsets(path) for kind, path in parts.items()}
        total = sum(len(v) for v in offsets.values())
        dropped = set(rng.sample(range(total), min(plan.drop_rows, total))) if plan.drop_rows else set()
        if dropped:
            log.warning("emulator.fault.rows_dropped", batch_id=run.record.id, count=len(dropped))
        base = 0
        expiry = run.record.internal.get("output_expires_after_s")
        for kind in ("output", "error"):
            path = parts[kind]
            lines = offsets[kind]
            keep = [span for i, span in enumerate(lines) if base + i not in dropped]
            base += len(lines)
            if plan.shuffle:
                rng.shuffle(keep)
            if not keep:
                path.unlink(missing_ok=True)
                continue
            file_id = new_id("file-", 22)
            target = self._store.file_path(file_id)
            if len(keep) == len(lines) and not plan.shuffle:
                os.replace(path, target)
            else:
                _copy_spans(path, target, keep)
                path.unlink(missing_ok=True)
            now = int(self._clock())
            seconds = int(expiry) if isinstance(expiry, int) else DEFAULT_OUTPUT_EXPIRY_S
            self._store.add_file(
                FileRecord(
                    file_id,
                    f"{run.record.id}_{kind}.jsonl",
                    "batch_output",
                    target.stat().st_size,
                    now,
                    now + seconds,
                )
            )
            doc[f"{kind}_file_id"] = file_id


def _line_offsets(path: Path) -> list[tuple[int, int]]:
    """(start, length) of every complete line of ``path`` ([] if it does not exist)."""
    spans: list[tuple[int, int]] = []
    if not path.exists():
        return spans
    pos = 0
    with path.open("rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                spans.append((pos, len(raw)))
            pos += len(raw)
    return spans


def _copy_spans(source: Path, target: Path, spans: list[tuple[int, int]]) -> None:
    """Write the given line spans of ``source`` to ``target`` in order (one line in memory at a time)."""
    src: IO[bytes]
    with source.open("rb") as src, target.open("wb") as dst:
        for start, length in spans:
            src.seek(start)
            dst.write(src.read(length))
