"""The cost guard: what a run or a retry is estimated to spend, shown before anything is sent, and a cap.

The estimate is the model table's (:func:`batchpipe.domain.spec.estimate_usage` priced by
:func:`~batchpipe.domain.spec.request_cost_usd`, Batch prices) summed over the requests the command would send:

* a new run: every valid item of the manifest, less the items that already succeeded with the same request
  (the nightly re-run skips them);
* a resumed run: the run's items still ``pending`` (what is already submitted is spent or in flight);
* a retry: every selected item, as changed by ``--set``.

Automatic follow-up attempts of retryable failures may spend up to ``max_attempts`` times more on the items that
fail; they are not in the estimate. Above the cap (``[run] max_cost_usd`` or ``--max-cost``) nothing is submitted:
:class:`CostCapError`, exit 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from batchpipe.domain.items import Item, request_hash
from batchpipe.domain.modeltable import ModelTable
from batchpipe.domain.records import ItemRow
from batchpipe.domain.spec import estimate_usage, request_cost_usd
from batchpipe.errors import InputError
from batchpipe.ports import Ledger

__all__ = [
    "CONFIRM_ABOVE_USD",
    "CostCapError",
    "SpendEstimate",
    "check_cap",
    "estimate_items",
    "estimate_pending",
    "estimate_run",
    "needs_confirmation",
]

#: ``batchpipe retry`` asks in a terminal before spending more than this many USD (estimated, batch prices),
#: unless ``--yes``; ``--confirm-above`` / ``BATCHPIPE_CONFIRM_ABOVE_USD`` change it.
CONFIRM_ABOVE_USD: Final = 1.0


class CostCapError(InputError):
    """The estimated cost is above the cap; nothing was submitted (exit 2)."""


@dataclass(frozen=True)
class SpendEstimate:
    """Requests to be sent, requests skipped (already succeeded with the same request), the estimated cost in USD
    at Batch prices, and how many requests have no price in the model table (not in the cost)."""

    requests: int = 0
    skipped: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0

    def line(self, cap_usd: float | None) -> str:
        """``estimated cost: $1.2345 for 400 request(s) at batch prices (...)``, with the cap when there is one."""
        text = f"estimated cost: ${self.cost_usd:.4f} for {self.requests} request(s) at batch prices"
        notes = []
        if self.skipped:
            notes.append(f"{self.skipped} already succeeded with the same request, skipped")
        if self.unpriced:
            notes.append(f"{self.unpriced} with no price in the model table, not counted")
        if notes:
            text += f" ({'; '.join(notes)})"
        text += f"; cap ${cap_usd:.2f}" if cap_usd is not None else "; no cap (set [run] max_cost_usd or --max-cost)"
        return text


def _cost(model: str, body: dict[str, object], models: ModelTable | None) -> float | None:
    return request_cost_usd(model, estimate_usage(body, models), models=models)


def estimate_items(
    items: Iterable[object], *, models: ModelTable | None = None, succeeded: set[tuple[str, str]] | None = None
) -> SpendEstimate:
    """The estimate over a stream of items (problems in the stream are ignored); an item whose ``(key, request
    hash)`` is in ``succeeded`` is counted as skipped."""
    requests = skipped = unpriced = 0
    total = 0.0
    for item in items:
        if not isinstance(item, Item):
            continue
        if succeeded and (item.key, request_hash(item.endpoint, item.body)) in succeeded:
            skipped += 1
            continue
        requests += 1
        cost = _cost(item.model, item.body, models)
        if cost is None:
            unpriced += 1
        else:
            total += cost
    return SpendEstimate(requests, skipped, total, unpriced)


def estimate_pending(rows: Iterable[ItemRow], *, models: ModelTable | None = None) -> SpendEstimate:
    """The estimate over ledger rows not yet submitted (a resumed run's ``pending`` items)."""
    requests = unpriced = 0
    total = 0.0
    for row in rows:
        requests += 1
        cost = _cost(row.model, row.body, models)
        if cost is None:
            unpriced += 1
        else:
            total += cost
    return SpendEstimate(requests, 0, total, unpriced)


def estimate_run(
    ledger: Ledger | None, job: str, items: Callable[[], Iterable[object]], *, models: ModelTable | None = None
) -> SpendEstimate:
    """What ``batchpipe run`` of ``job`` would spend now: the pending items of its unfinished run when it has one
    whose build finished, else the manifest's ``items()`` less what already succeeded unchanged."""
    if ledger is not None:
        running = ledger.latest_run(job)
        if running is not None and running.get("status") == "running" and running.get("built_at"):
            return estimate_pending(ledger.items(run_id=str(running["run_id"]), statuses=["pending"]), models=models)
        succeeded = set(ledger.succeeded_hashes(job))
    else:
        succeeded = set()
    return estimate_items(items(), models=models, succeeded=succeeded)


def check_cap(estimate: SpendEstimate, cap_usd: float | None, *, source: str, field: str, raise_hint: str) -> None:
    """Raise :class:`CostCapError` when ``estimate`` is above ``cap_usd`` (None: no cap). ``source`` and ``field``
    name where the cap came from; ``raise_hint`` says how to raise it."""
    if cap_usd is None or estimate.cost_usd <= cap_usd:
        return
    raise CostCapError(
        f"the estimated cost ${estimate.cost_usd:.4f} for {estimate.requests} request(s) is above the cap "
        f"${cap_usd:.2f}; nothing was submitted. To spend it, {raise_hint}",
        file=source,
        field=field,
    )


def needs_confirmation(estimate: SpendEstimate, threshold_usd: float, *, interactive: bool) -> bool:
    """True when a command should ask before spending: someone can answer (``interactive``: stdin is a terminal)
    and the estimate is above ``threshold_usd`` (USD). Not in a terminal (cron, CI) the cap is the guard."""
    return interactive and estimate.requests > 0 and estimate.cost_usd > threshold_usd
