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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Final

from batchpipe.domain.items import Item, request_hash
from batchpipe.domain.modeltable import ModelTable
from batchpipe.domain.records import ItemRow
from batchpipe.domain.spec import estimate_usage, request_cost_usd
from batchpipe.errors import InputError
from batchpipe.input.validate import ManifestItems, Unchanged
from batchpipe.ports import Ledger

__all__ = [
    "CONFIRM_ABOVE_USD",
    "CostCapError",
    "CostTally",
    "SpendEstimate",
    "check_cap",
    "estimate_items",
    "estimate_pending",
    "estimate_resumed",
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


#: Costs remembered per request shape by a :class:`CostTally` before it starts over (bounds its memory).
_MEMO_ENTRIES: Final = 65_536
#: ``estimate_run`` asks the ledger which items already succeeded this many at a time (bounded memory).
_SUCCEEDED_CHUNK: Final = 2_000


def _cost(model: str, body: Mapping[str, object], models: ModelTable | None) -> float | None:
    return request_cost_usd(model, estimate_usage(body, models), models=models)


class CostTally:
    """A running estimate over request bodies, one :meth:`add` at a time: what :func:`estimate_items` sums, and
    what ``batchpipe run`` sums while it builds (one pass over the manifest instead of two when no cap asks for
    the estimate first).

    Each body is priced as :func:`~batchpipe.domain.spec.estimate_usage` then
    :func:`~batchpipe.domain.spec.request_cost_usd` price it (USD, Batch prices). A body without reference
    images costs what its model, ``size``, ``quality``, ``n`` and prompt length give, so that cost is remembered
    per such shape (measured: 100,000 catalog bodies, about 12 µs a body priced each time, under 1 µs from the
    memo); bodies with images are priced each time. ``estimate(skipped=...)`` gives the :class:`SpendEstimate`.
    """

    __slots__ = ("_memo", "_models", "cost_usd", "requests", "unpriced")

    def __init__(self, models: ModelTable | None = None) -> None:
        self._models = models
        self._memo: dict[tuple[object, ...], float | None] = {}
        self.requests = 0
        self.unpriced = 0
        self.cost_usd = 0.0

    def add(self, model: str, body: Mapping[str, object]) -> None:
        """Count one request with ``body`` (sent to ``model``, its ``model`` field)."""
        get = body.get
        cost: float | None
        if get("images") is None and get("mask") is None and get("markup") is None:  # no reference images
            prompt = get("prompt")
            shape = (model, get("size"), get("quality"), get("n"), len(prompt) if isinstance(prompt, str) else None)
            try:
                cost = self._memo[shape]
            except KeyError:
                cost = _cost(model, body, self._models)
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.clear()
                self._memo[shape] = cost
            except TypeError:  # a field that cannot be a key (a list): priced as it is
                cost = _cost(model, body, self._models)
        else:
            cost = _cost(model, body, self._models)
        self.requests += 1
        if cost is None:
            self.unpriced += 1
        else:
            self.cost_usd += cost

    def estimate(self, *, skipped: int = 0) -> SpendEstimate:
        """The estimate so far; ``skipped``: requests left out as already succeeded with the same request."""
        return SpendEstimate(self.requests, skipped, self.cost_usd, self.unpriced)


def estimate_items(
    items: Iterable[object], *, models: ModelTable | None = None, succeeded: set[tuple[str, str]] | None = None
) -> SpendEstimate:
    """The estimate over a stream of items (problems in the stream are ignored); an item whose ``(key, request
    hash)`` is in ``succeeded`` is counted as skipped."""
    tally = CostTally(models)
    skipped = 0
    for item in items:
        if not isinstance(item, Item):
            continue
        if succeeded and (item.key, request_hash(item.endpoint, item.body)) in succeeded:
            skipped += 1
            continue
        tally.add(item.model, item.body)
    return tally.estimate(skipped=skipped)


def estimate_pending(rows: Iterable[ItemRow], *, models: ModelTable | None = None) -> SpendEstimate:
    """The estimate over ledger rows not yet submitted (a resumed run's ``pending`` items)."""
    tally = CostTally(models)
    for row in rows:
        tally.add(row.model, row.body)
    return tally.estimate()


def estimate_resumed(ledger: Ledger, job: str, *, models: ModelTable | None = None) -> SpendEstimate | None:
    """What resuming ``job`` would spend: the ``pending`` items of its unfinished run whose build finished; None
    when there is no such run (the next ``run`` builds a new one)."""
    running = ledger.latest_run(job)
    if running is not None and running.get("status") == "running" and running.get("built_at"):
        return estimate_pending(ledger.items(run_id=str(running["run_id"]), statuses=["pending"]), models=models)
    return None


def estimate_run(
    ledger: Ledger | None, job: str, items: Callable[[], Iterable[object]], *, models: ModelTable | None = None
) -> SpendEstimate:
    """What ``batchpipe run`` of ``job`` would spend now: the pending items of its unfinished run when it has one
    whose build finished, else the manifest's ``items()`` less what already succeeded unchanged.

    The items that already succeeded are asked of the ledger :data:`_SUCCEEDED_CHUNK` at a time
    (:meth:`~batchpipe.ports.Ledger.succeeded_with`), as the build does: memory stays flat however many the job
    has (issue 12: holding every hash of a 1,000,000-item job took 467 MB). A
    :class:`~batchpipe.input.validate.ManifestItems` source is first given the ledger's lookup by source hash, as
    the build's: rows already succeeded from the same catalog row come as ``Unchanged``, unrendered, and count as
    skipped."""
    if ledger is None:
        return estimate_items(items(), models=models)
    resumed = estimate_resumed(ledger, job, models=models)
    if resumed is not None:
        return resumed
    tally = CostTally(models)
    skipped = 0
    chunk: list[Item] = []

    def settle() -> None:
        nonlocal skipped
        done = ledger.succeeded_with(job, [(i.key, request_hash(i.endpoint, i.body)) for i in chunk])
        for item in chunk:
            if item.key in done:
                skipped += 1
            else:
                tally.add(item.model, item.body)
        chunk.clear()

    if isinstance(items, ManifestItems):
        entries: Iterable[object] = items(unchanged=lambda pairs: partial(_by_source, ledger, job, pairs))
    else:
        entries = items()
    for item in entries:
        if isinstance(item, Unchanged):
            skipped += 1
        elif isinstance(item, Item):
            chunk.append(item)
            if len(chunk) >= _SUCCEEDED_CHUNK:
                settle()
    if chunk:
        settle()
    return tally.estimate(skipped=skipped)


def _by_source(ledger: Ledger, job: str, pairs: list[tuple[str, str]]) -> set[str]:
    """The keys of ``pairs`` whose latest success was built from the same source (``by="source_hash"``)."""
    return ledger.succeeded_with(job, pairs, by="source_hash")


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
