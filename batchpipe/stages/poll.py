"""The poller: the service's view of every in-flight batch with as few calls as possible.

``GET /v1/batches`` returns up to 100 batches per page, newest first (SPEC ``listBatches``; FACTS §2.3), so
one cycle walks pages until every tracked batch has been seen or the page reaches batches created before
the oldest tracked one; a tracked batch not seen by then (it belongs to a much older page) is retrieved on
its own. For N batches created by this run that is ``ceil(N / 100)`` calls plus at most one, instead of N.
Rate limits are the client's business (it honours ``429`` / ``retry-after`` and ``x-ratelimit-*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from batchpipe.domain.api import Batch
from batchpipe.errors import ApiProtocolError
from batchpipe.ports import BatchApi

__all__ = ["PollResult", "Poller"]

log = structlog.get_logger("batchpipe.stages.poll")


@dataclass(frozen=True, slots=True)
class PollResult:
    """One cycle: ``batches`` (id → the service's :class:`~batchpipe.domain.api.Batch`) and ``calls`` (API
    requests made)."""

    batches: dict[str, Batch]
    calls: int


class Poller:
    """Polls batches through the list endpoint. ``client``: an ``OpenAIClient``; ``page_limit`` 1..100."""

    def __init__(self, client: BatchApi, *, page_limit: int = 100) -> None:
        self._client = client
        self._page_limit = page_limit

    async def poll(self, tracked: Mapping[str, float]) -> PollResult:
        """The current Batch object of every tracked batch.

        ``tracked`` maps batch id → its ``created_at`` (unix seconds, from the create response). The list walk
        ends at the last page or at a page of batches older than the oldest tracked one. Raises
        :class:`~batchpipe.errors.ApiProtocolError` when the list gives a cursor it gave before (a list that
        repeats or cycles would never end), and the client's :class:`~batchpipe.errors.ApiError` if a call fails
        after the client's own retries.
        """
        wanted = set(tracked)
        found: dict[str, Batch] = {}
        calls = 0
        if not wanted:
            return PollResult(found, 0)
        oldest = min(tracked.values())
        after: str | None = None
        followed: set[str] = set()
        while wanted - found.keys():
            page = await self._client.list_batches(after=after, limit=self._page_limit)
            calls += 1
            for batch in page.data:
                if batch.id in wanted:
                    found[batch.id] = batch
            if not page.has_more or not page.data or page.last_id is None:
                break
            if min(b.created_at if b.created_at is not None else 0 for b in page.data) < oldest:
                break
            if page.last_id in followed:
                raise ApiProtocolError(
                    f"GET /batches: the list's cursor repeats (after={page.last_id} was answered before); the list "
                    "cannot be trusted (a gateway or proxy may be caching its pages)",
                    method="GET",
                    url="/batches",
                )
            followed.add(page.last_id)
            after = page.last_id
        for batch_id in sorted(wanted - found.keys()):
            found[batch_id] = await self._client.retrieve_batch(batch_id)
            calls += 1
        log.debug("poll cycle", tracked=len(wanted), calls=calls)
        return PollResult(found, calls)
