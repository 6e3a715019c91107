"""An in-memory :class:`~batchpipe.ports.ImageStore`: images as bytes in a dict, with crash simulation."""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from batchpipe.adapters.local_store import safe_relative_path
from batchpipe.ports import StoredImage

if TYPE_CHECKING:
    from batchpipe.ports import ImageStore

__all__ = ["MemoryImageStore"]


class MemoryImageStore:
    """Images as bytes in a dict keyed by location (thread-safe), for tests.

    ``location_for`` gives ``<root>/<relative path>`` with the relative path of
    :func:`batchpipe.adapters.local_store.safe_relative_path` (POSIX separators): the same names
    :class:`~batchpipe.adapters.local_store.LocalImageStore` uses under its folder, so a key can never leave
    ``root``. ``put`` replaces what a location holds in one step. Like the local store, a ``put`` becomes durable
    only at the next :meth:`sync`; :meth:`crash` forgets what was put since then, so a test can check that the
    ledger never records an image that a crash could lose.
    """

    def __init__(self, root: str = "memory://images") -> None:
        self.root = root.rstrip("/")
        self._blobs: dict[str, bytes] = {}
        #: location → what it held at the last sync (None: nothing), for each location put since then
        self._since_sync: dict[str, bytes | None] = {}
        self._lock = threading.Lock()

    def location_for(self, key: str, index: int, ext: str, attempt: int = 1) -> str:
        """See :meth:`batchpipe.ports.ImageStore.location_for`: ``<root>/<safe relative path>`` (deterministic).
        Raises ValueError if the key would map outside ``root`` (it cannot)."""
        relative = safe_relative_path(key, index, ext, attempt)
        if relative.is_absolute() or ".." in relative.parts:  # defence in depth, as in LocalImageStore
            raise ValueError(f"item key {key!r} maps outside the store")
        return f"{self.root}/{relative.as_posix()}"

    def put(self, location: str, data: bytes) -> StoredImage:
        """Store a copy of ``data`` (bytes) at ``location``, replacing what was there; durable at the next
        :meth:`sync`. Returns the location, the sha256 (hex) and the size in bytes."""
        blob = bytes(data)
        with self._lock:
            if location not in self._since_sync:
                self._since_sync[location] = self._blobs.get(location)
            self._blobs[location] = blob
        return StoredImage(location, hashlib.sha256(blob).hexdigest(), len(blob))

    def exists(self, location: str) -> bool:
        """True if something is stored at ``location`` (durable or not yet)."""
        with self._lock:
            return location in self._blobs

    def sync(self) -> None:
        """Make every ``put`` so far durable (:meth:`crash` no longer undoes it)."""
        with self._lock:
            self._since_sync.clear()

    # -- for tests --------------------------------------------------------------------------------------
    def read(self, location: str) -> bytes:
        """The bytes stored at ``location``; raises FileNotFoundError if there are none."""
        with self._lock:
            try:
                return self._blobs[location]
            except KeyError:
                raise FileNotFoundError(location) from None

    def locations(self) -> list[str]:
        """Every location that holds an image, sorted."""
        with self._lock:
            return sorted(self._blobs)

    def unsynced(self) -> list[str]:
        """The locations put since the last :meth:`sync`, sorted."""
        with self._lock:
            return sorted(self._since_sync)

    def crash(self) -> list[str]:
        """Forget every ``put`` since the last :meth:`sync` (what a power cut may do to the local store's
        renames): each such location holds again what it held then, or nothing. Returns them, sorted."""
        with self._lock:
            lost, self._since_sync = self._since_sync, {}
            for location, before in lost.items():
                if before is None:
                    self._blobs.pop(location, None)
                else:
                    self._blobs[location] = before
            return sorted(lost)


if TYPE_CHECKING:  # mypy proves that MemoryImageStore implements the ImageStore port; nothing runs
    _conforms: ImageStore = MemoryImageStore()
