"""The seams of the pipeline: what a stage needs of the ledger, the image store and the C2PA verifier, as Protocols.

Stages (:mod:`batchpipe.stages`) type against these and never import an adapter; adapters
(:mod:`batchpipe.adapters`: the SQLite ledger, the local image store, the OpenAI HTTP client) and
:mod:`batchpipe.provenance` implement them; :mod:`batchpipe.runtime` wires one to the other. A PostgreSQL ledger or
an object-storage image store plugs in by implementing the same Protocols.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import ItemRow

__all__ = ["CollectLedger", "ImageStore", "StoredImage", "Verifier"]


@dataclass(frozen=True, slots=True)
class StoredImage:
    """Where an image went: ``location`` (a filesystem path or URL as str), ``sha256`` (hex), ``size_bytes``."""

    location: str
    sha256: str
    size_bytes: int


class ImageStore(Protocol):
    """The image store as the collector uses it (thread-safe: called from worker threads)."""

    def location_for(self, key: str, index: int, ext: str) -> str:
        """The deterministic location of image ``index`` (0-based, of ``n``) of item ``key`` with extension."""
        ...

    def put(self, location: str, data: bytes) -> StoredImage:
        """Store ``data`` at ``location`` atomically and durably (all or nothing); returns what was stored."""
        ...

    def exists(self, location: str) -> bool:
        """True if something is stored at ``location``."""
        ...

    def sync(self) -> None:
        """Make everything ``put`` so far durable (called before the ledger records it)."""
        ...


class Verifier(Protocol):
    """What the collector needs of a C2PA verifier (:class:`batchpipe.provenance.verify.C2paVerifier`)."""

    def verify_bytes(self, data: bytes, mime: str | None = None) -> Any:
        """A report with ``state``, ``failure_codes``... and ``to_dict()`` (``C2paReport``)."""
        ...


class CollectLedger(Protocol):
    """The ledger as the collect stage uses it (:class:`batchpipe.adapters.sqlite_ledger.SqliteLedger`).

    ``items(batch_id=...)``: the batch's item rows. ``batch(id)``: the batch row (``output_offset``,
    ``error_offset`` in bytes...) or None. ``set_batch_progress``: collection offsets and done flags.
    ``transaction()``: one atomic group of writes. ``transition_items``: a guarded status change; returns the rows
    changed, raises ``TransitionError`` for a change the transition table forbids (when ``strict``).
    """

    def items(self, *, batch_id: str | None = None) -> Iterator[ItemRow]: ...

    def batch(self, batch_id: str) -> dict[str, Any] | None: ...

    def set_batch_progress(self, batch_id: str, **fields: object) -> None: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def transition_items(
        self,
        custom_ids: Sequence[str],
        to_status: ItemStatus,
        *,
        from_statuses: Iterable[ItemStatus] | None = None,
        fields: Mapping[str, object] | None = None,
        strict: bool = True,
    ) -> int: ...
