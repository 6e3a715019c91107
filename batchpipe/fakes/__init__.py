"""In-memory implementations of the ports, shipped for tests and experiments (as procrastinate ships an in-memory
connector): :class:`MemoryLedger` (:class:`batchpipe.ports.Ledger`), :class:`MemoryImageStore`
(:class:`batchpipe.ports.ImageStore`) and :class:`MemoryBatchApi` (:class:`batchpipe.ports.BatchApi`).

They keep the same rules and raise the same errors as the production adapters (``tests/contracts`` runs one
suite against both), so a test can swap them in for ``SqliteLedger`` / ``LocalImageStore`` and touch no disk::

    from batchpipe.fakes import MemoryImageStore, MemoryLedger

    ledger, store = MemoryLedger(), MemoryImageStore()

Production code never imports this package (``lint-imports`` keeps :mod:`batchpipe.runtime` and below from it).
"""

from __future__ import annotations

from batchpipe.fakes.batch_api import MemoryBatchApi
from batchpipe.fakes.memory_ledger import MemoryLedger
from batchpipe.fakes.memory_store import MemoryImageStore

__all__ = ["MemoryBatchApi", "MemoryImageStore", "MemoryLedger"]
