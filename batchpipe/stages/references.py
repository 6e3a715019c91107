"""Reference images as the run needs them on the service: each local file uploaded once (by sha256) and reused
while it lives, and reference files no pending item needs deleted afterwards.

Resolving and checking references is :mod:`batchpipe.input.references`; this stage does the Files API side
(``POST /files`` with ``expires_after``; ``GET /files``; ``DELETE /files/{file_id}``) and records every file in the
ledger with role :data:`~batchpipe.input.references.REFERENCE_ROLE`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import structlog

from batchpipe.domain.items import ItemStatus
from batchpipe.domain.spec import COMPLETION_WINDOW_S
from batchpipe.errors import ApiError, NotFoundError
from batchpipe.input.references import REFERENCE_ROLE, ReferenceOptions
from batchpipe.ports import AsyncLedger, BatchApi
from batchpipe.stages.listing import iter_files

__all__ = ["ensure_uploaded", "release_unused"]

_log = structlog.get_logger("batchpipe.stages.references")


async def ensure_uploaded(
    client: BatchApi,
    ledger: AsyncLedger,
    files: Mapping[str, Path],
    *,
    options: ReferenceOptions,
    clock: Callable[[], float] = time.time,
    concurrency: int = 4,
) -> tuple[dict[str, str], int]:
    """Make every file of ``files`` (sha256 → path) available as a ``file_id``; returns (sha256 → file_id,
    number uploaded now).

    A ledger row (role ``reference``, same sha256 and purpose, not deleted, expiring after now + 24 h
    completion window + ``options.reuse_margin_s``) whose file the service still lists (``GET /files``,
    paged) is reused; a row whose file is gone is marked deleted. Others are uploaded with
    ``expires_after`` = ``options.upload_expires_after_s`` and recorded with their sha256. Raises the
    client's ``ApiError`` family if an upload fails (the run stops before anything is submitted).
    """
    if not files:
        return {}, 0
    not_before = clock() + COMPLETION_WINDOW_S + options.reuse_margin_s
    cached: dict[str, str] = {}
    for sha in files:
        row = await ledger.file_by_sha256(sha, role=REFERENCE_ROLE, not_expired_at=not_before)
        if row is not None and row.get("purpose") == options.upload_purpose:
            cached[sha] = str(row["file_id"])
    if cached:
        live = await _listed_file_ids(client, options.upload_purpose)
        for sha, file_id in list(cached.items()):
            if file_id not in live:
                _log.info("cached reference file is gone from the service", file_id=file_id)
                await ledger.mark_file_deleted(file_id)
                del cached[sha]
    todo = [(sha, path) for sha, path in files.items() if sha not in cached]
    gate = asyncio.Semaphore(concurrency)

    async def upload(sha: str, path: Path) -> None:
        async with gate:
            obj = await client.upload_file(
                path,
                purpose=options.upload_purpose,
                filename=path.name,
                expires_after_s=options.upload_expires_after_s,
            )
        await ledger.record_file(obj.as_record(), role=REFERENCE_ROLE, sha256=sha)
        cached[sha] = obj.id

    await asyncio.gather(*(upload(sha, path) for sha, path in todo))
    return cached, len(todo)


async def _listed_file_ids(client: BatchApi, purpose: str) -> set[str]:
    """Every file id the service lists for ``purpose`` (all pages)."""
    return {listed.id async for listed in iter_files(client, purpose=purpose)}


def _file_ids_in_body(body: Mapping[str, object]) -> Iterable[str]:
    refs = body.get("images")
    for ref in [*(refs if isinstance(refs, list) else []), body.get("mask")]:
        if isinstance(ref, dict) and isinstance(ref.get("file_id"), str):
            yield str(ref["file_id"])


async def release_unused(client: BatchApi, ledger: AsyncLedger, *, keep: Iterable[str] = ()) -> list[str]:
    """Delete reference files (ledger role ``reference``) that no pending or submitted item of any job
    needs and that are not in ``keep``; returns the deleted ids. A file already gone (404) is marked
    deleted too; other API errors leave the row for a later try (logged)."""
    live = [ItemStatus.PENDING, ItemStatus.SUBMITTED]
    needed = set(keep) | await ledger.call(  # paged on the ledger thread: the rows are never all in memory
        lambda db: {file_id for row in db.items(statuses=live) for file_id in _file_ids_in_body(row.body)}
    )
    deleted: list[str] = []
    for listed in await ledger.files(role=REFERENCE_ROLE, deleted=False):
        file_id = str(listed["file_id"])
        if file_id in needed:
            continue
        try:
            await client.delete_file(file_id)
        except NotFoundError:
            pass
        except ApiError as exc:
            _log.warning("could not delete a reference file", file_id=file_id, error=str(exc))
            continue
        await ledger.mark_file_deleted(file_id)
        deleted.append(file_id)
    return deleted
