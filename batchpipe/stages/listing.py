"""Walking the Files API's list pages (``GET /files``) with a bound: a service whose cursor repeats or cycles
stops the walk with an error instead of looping forever (issue "never pay twice": every wait is bounded)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from batchpipe.domain.api import FileObject
from batchpipe.errors import ApiProtocolError
from batchpipe.ports import BatchApi

__all__ = ["iter_files"]

log = structlog.get_logger("batchpipe.stages.listing")


async def iter_files(
    client: BatchApi, *, purpose: str | None = None, limit: int | None = None, max_pages: int = 10_000
) -> AsyncIterator[FileObject]:
    """Every file the service lists (for ``purpose``), newest first, page by page (``after`` = the page's
    ``last_id``). Ends at the last page, an empty page or ``max_pages`` pages (logged). Raises
    :class:`~batchpipe.errors.ApiProtocolError` for a cursor given before (a list that would never end) and the
    client's :class:`~batchpipe.errors.ApiError` family."""
    after: str | None = None
    followed: set[str] = set()
    for _ in range(max_pages):
        page = await client.list_files(purpose=purpose, after=after, limit=limit)
        for listed in page.data:
            yield listed
        if not page.has_more or not page.data or page.last_id is None:
            return
        if page.last_id in followed:
            raise ApiProtocolError(
                f"GET /files: the list's cursor repeats (after={page.last_id} was answered before); the list "
                "cannot be walked to its end",
                method="GET",
                url="/files",
            )
        followed.add(page.last_id)
        after = page.last_id
    log.warning("file list longer than the walk allows", pages=max_pages)
