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
from typing import Any

import structlog

from batchpipe.ports import BatchApi

__all__ = ["PollResult", "Poller"]

log = structlog.get_logger("batchpipe.stages.poll")


@dataclass(frozen=True, slots=True)
class PollResult:
    """One cycle: ``batches`` (id → Batch object as the service returned it) and ``calls`` (API requests made)."""

    batches: dict[str, dict[str, Any]]
    calls: int


class Poller:
    """Polls batches through the list endpoint. ``client``: an ``OpenAIClient``; ``page_limit`` 1..100."""

    def __init__(self, client: BatchApi, *, page_limit: int = 100) -> None:
        self._client = client
        self._page_limit = page_limit

    async def poll(self, tracked: Mapping[str, float]) -> PollResult:
        """The current Batch object of every tracked batch.

        ``tracked`` maps batch id → its ``created_at`` (unix seconds, from the create response). Raises the
        client's :class:`~batchpipe.errors.ApiError` if a call fails after the client's own retries.
        """
        wanted = set(tracked)
        found: dict[str, dict[str, Any]] = {}
        calls = 0
        if not wanted:
            return PollResult(found, 0)
        oldest = min(tracked.values())
        after: str | None = None
        while wanted - found.keys():
            page = await self._client.list_batches(after=after, limit=self._page_limit)
            calls += 1
            data = page.get("data") or []
            for batch in data:
                if batch.get("id") in wanted:
                    found[batch["id"]] = batch
            if not page.get("has_more") or not data:
                break
            if min(int(b.get("created_at") or 0) for b in data) < oldest:
                break
            after = page.get("last_id") or data[-1]["id"]
        for batch_id in sorted(wanted - found.keys()):
            found[batch_id] = await self._client.retrieve_batch(batch_id)
            calls += 1
        log.debug("poll cycle", tracked=len(wanted), calls=calls)
        return PollResult(found, calls)
