"""Domain types shared by every stage: items, statuses, identifiers.

An *item* is one request the user wants rendered: one manifest row (or one product × variant pair). It
becomes one line of a batch input file, identified there by its ``custom_id``.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Final

import orjson

from batchpipe.domain.spec import Endpoint

__all__ = [
    "TERMINAL_ITEM_STATUSES",
    "BatchStatus",
    "ImageRef",
    "Item",
    "ItemStatus",
    "make_custom_id",
    "request_hash",
]


class ItemStatus(enum.StrEnum):
    """Where one item stands. Changed only along :data:`batchpipe.domain.records.ITEM_TRANSITIONS`."""

    PENDING = "pending"  #: accepted and written to a shard, not yet part of a created batch
    SUBMITTED = "submitted"  #: its line is in a batch that the service accepted
    SUCCEEDED = "succeeded"  #: an image was written and recorded (C2PA state recorded alongside)
    FAILED = "failed"  #: the service answered with an error for this line (code, message, retryable)
    INVALID = "invalid"  #: refused by local validation before spending (only with --skip-invalid)
    EXPIRED = "expired"  #: the batch expired before this line ran (``batch_expired``)
    CANCELLED = "cancelled"  #: the batch was cancelled before this line ran (``batch_cancelled``)
    MISSING = "missing"  #: the batch ended and the line is in neither the output nor the error file
    SUPERSEDED = "superseded"  #: a retry attempt of this item replaced this row (kept for history)


#: Statuses an item no longer leaves on its own (a retry creates a new attempt row instead).
TERMINAL_ITEM_STATUSES: Final[frozenset[ItemStatus]] = frozenset(
    {
        ItemStatus.SUCCEEDED,
        ItemStatus.FAILED,
        ItemStatus.INVALID,
        ItemStatus.EXPIRED,
        ItemStatus.CANCELLED,
        ItemStatus.MISSING,
        ItemStatus.SUPERSEDED,
    }
)


class BatchStatus(enum.StrEnum):
    """The service's batch statuses (SPEC ``Batch.status``; FACTS §2.2 lifecycle)."""

    VALIDATING = "validating"  #: the input file is being checked
    FAILED = "failed"  #: validation failed (``errors.data``), or e.g. ``token_limit_exceeded``
    IN_PROGRESS = "in_progress"  #: requests are running
    FINALIZING = "finalizing"  #: results are being prepared
    COMPLETED = "completed"  #: done; output/error file ids (may briefly be null)
    EXPIRED = "expired"  #: the 24 h window passed; finished lines are in the output file
    CANCELLING = "cancelling"  #: cancel requested (up to 10 minutes)
    CANCELLED = "cancelled"  #: cancelled; partial results may be in the output file

    @property
    def terminal(self) -> bool:
        """True for ``completed``, ``failed``, ``expired`` and ``cancelled`` (FACTS §2.2)."""
        return self in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One input image of an edit, as the ledger records it: ``kind`` is ``url``, ``file`` or ``data``.

    ``ref`` is the URL, the Files API id, or ``data:<mime>;sha256=...`` for data URLs (the data itself is
    not recorded); ``sha256`` is the hex digest of the image bytes when known.
    """

    kind: str
    ref: str
    sha256: str | None = None

    @classmethod
    def parse_list(cls, text: str | None) -> tuple[ImageRef, ...]:
        """The ledger's ``inputs_json`` (a JSON list of ``{kind, ref, sha256}``) back into references."""
        if not text:
            return ()
        return tuple(
            cls(str(e["kind"]), str(e["ref"]), e.get("sha256")) for e in orjson.loads(text) if isinstance(e, dict)
        )


@dataclass(slots=True)
class Item:
    """One request to render.

    ``key``: unique within the job (str). ``endpoint``: ``/v1/images/generations`` or ``/v1/images/edits``.
    ``body``: the Images API request body, ``model`` included, exactly as it will be sent.
    ``metadata``: free-form, carried to the ledger. ``source``: ``"file:line"`` where the item came from.
    ``product_key`` / ``variant``: set for variant-matrix items. ``inputs``: input image references.
    ``encoded``: ``orjson.dumps(body)`` when the maker already serialized it (validation does, to check the
    line's size), so the shard line and the ledger row reuse those bytes; empty when not known
    (:meth:`body_bytes` serializes then).

    Treat it as a value: it is not a frozen dataclass only because a frozen one's ``__init__`` sets each field
    with ``object.__setattr__``, 1.9 µs an item instead of 0.7 µs (measured with ``timeit``; the build makes
    one per manifest row, about 18 µs a row in all).
    """

    key: str
    endpoint: Endpoint
    body: dict[str, object]
    metadata: dict[str, object] = field(default_factory=dict)
    source: str = ""
    product_key: str | None = None
    variant: str | None = None
    inputs: tuple[ImageRef, ...] = ()
    encoded: bytes = field(default=b"", compare=False, repr=False)
    #: what the item was built from (hex; see :func:`batchpipe.input.validate.make_items`), kept on its ledger
    #: row so a re-run can skip an unchanged row without rendering it; None when the maker keeps none
    source_hash: str | None = field(default=None, compare=False, repr=False)

    def body_bytes(self) -> bytes:
        """The body as compact JSON (``orjson.dumps(body)``): :attr:`encoded` when set."""
        return self.encoded or orjson.dumps(self.body)

    @property
    def model(self) -> str:
        """The ``model`` field of the body (validation guarantees it is a string)."""
        return str(self.body.get("model", ""))


def request_hash(endpoint: str, body: dict[str, object]) -> str:
    """Hex sha256 of the canonical JSON of ``endpoint`` and ``body`` (keys sorted).

    Two items with the same hash send the same request; a re-run skips items already succeeded with it.
    """
    canonical = orjson.dumps({"endpoint": endpoint, "body": body}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def make_custom_id(job: str, key: str, attempt: int) -> str:
    """The batch line's ``custom_id`` for attempt ``attempt`` (1-based) of ``key`` in ``job``.

    ``bp-<20 hex of sha256(job, key)>-a<attempt>``: deterministic, short, free of user text, and distinct
    across attempts so rows from retries never collide (gotchas #1).
    """
    digest = hashlib.sha256(f"{job}\x00{key}".encode()).hexdigest()[:20]
    return f"bp-{digest}-a{attempt}"
