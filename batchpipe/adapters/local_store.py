"""Where images go: one narrow interface, :class:`ImageStore`, and the local-directory implementation.

The collector hands the store the exact decoded bytes of each image (never re-encoded: re-encoding strips
the C2PA manifest, gotchas #12). A later object-storage implementation keeps the same three methods.

Locations are deterministic functions of the item key and attempt, so a collector that is killed and restarted
writes the same file again instead of a second one, a later attempt of an item (a retry at another quality, a
changed prompt) never overwrites the file an earlier attempt's ledger row describes, and no key can escape the
root (``..``, absolute paths, backslashes and control characters are neutralised segment by segment).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Final

import structlog

from batchpipe.domain.locations import file_uri, local_path
from batchpipe.ports import StoredImage

__all__ = ["LocalImageStore", "safe_relative_path"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._@+=,-]+")
_MAX_SEGMENT: Final = 120
log = structlog.get_logger("batchpipe.adapters.local_store")


def safe_relative_path(key: str, index: int, ext: str, attempt: int = 1) -> Path:
    """A relative path for image ``index`` (0-based) of attempt ``attempt`` (1-based) of an item key, that cannot
    escape its root.

    ``/`` in the key groups into sub-folders; each segment keeps ``[A-Za-z0-9._@+=,-]``, other runs become
    ``_``, leading dots are dropped, and long segments are cut. Because sanitising can map two keys to one
    name, a short hash of the exact key is appended to the file name: ``"shoes/red sneaker"`` →
    ``shoes/red_sneaker-<8 hex>.png``. ``-a<attempt>`` is added when ``attempt > 1`` (so a new attempt never
    replaces an earlier attempt's file), then ``-<index>`` when ``index > 0``: attempt 2, image 1 →
    ``shoes/red_sneaker-<8 hex>-a2-1.png``. Raises ``ValueError`` for an attempt below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    segments = []
    for raw in key.replace("\\", "/").split("/"):
        clean = _UNSAFE.sub("_", raw).lstrip(".")[:_MAX_SEGMENT]
        if clean:
            segments.append(clean)
    if not segments:
        segments = ["item"]
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    suffix = (f"-a{attempt}" if attempt > 1 else "") + (f"-{index}" if index else "")
    segments[-1] = f"{segments[-1]}-{digest}{suffix}.{ext.lstrip('.')}"
    return Path(*segments)


def _fsync_path(path: str) -> None:
    """fsync the file or folder at ``path`` (opened read-only: enough for fsync on Linux and macOS)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalImageStore:
    """Images as files under ``root``: written whole to a temporary name, then renamed (never a partial file under
    its name while the machine runs).

    Durability is :meth:`sync`'s: it fsyncs every file put since the last call, then each folder written to. The
    collector calls it before each ledger commit (a group of up to 64 lines), so a row is never committed before
    its file is on disk. After a power cut before that sync a file may be empty or partial under its name, but no
    committed row names it: the run collects its line again and writes it anew. Measured (500 emulator PNGs of
    85 KB, one thread, ext4): an fsync in each put took 0.60-0.81 ms a file, the fsyncs deferred to a sync per 64
    files 0.45-0.48 ms, with less system time.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._dirty: set[str] = set()
        self._unsynced: set[str] = set()  # files put since the last sync()
        self._lock = threading.Lock()
        self._made: set[Path] = set()  # folders known to exist: put() skips their mkdir system calls

    def recover(self) -> list[Path]:
        """Delete the ``.<name>.tmp-<pid>-<random>`` files (:meth:`put`; older versions wrote
        ``.<name>.tmp-<pid>``) that a process killed mid-write left under ``root``; files of a process that is
        still alive (this one included) are kept. Returns the deleted paths."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for path in self.root.rglob(".*.tmp-*"):
            pid = path.name.rpartition(".tmp-")[2].partition("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
                removed.append(path)
                log.info("removed a temporary file of a killed run", path=str(path))
            except OSError:
                pass  # alive, owned by someone else
        return removed

    def location_for(self, key: str, index: int, ext: str, attempt: int = 1) -> str:
        """See :meth:`ImageStore.location_for`. ``safe_relative_path`` keeps the result inside ``root``
        (no ``..``, no absolute part), so no ``resolve()`` system calls are needed on this hot path."""
        relative = safe_relative_path(key, index, ext, attempt)
        if relative.is_absolute() or ".." in relative.parts:  # defence in depth; cannot happen
            raise ValueError(f"item key {key!r} maps outside the output directory")
        return file_uri(self.root / relative)

    def _path(self, location: str) -> Path:
        """The file a location of this store names. Raises ``ValueError`` for a location that is not a
        ``file://`` URI (or, as older ledgers hold, an absolute path) inside ``root``."""
        path = local_path(location)
        if path is None or not path.is_relative_to(self.root):
            raise ValueError(f"not a location of the image store at {self.root}: {location!r}")
        return path

    def put(self, location: str, data: bytes) -> StoredImage:
        """Write ``data`` to ``location`` via ``.<name>.tmp-<pid>-<random>`` and rename it; the file and its folder
        are made durable by the next :meth:`sync`. Concurrent puts to one location (threads of this process or
        other processes) each write their own temporary file, so each rename succeeds and the file is whole: the
        last rename wins. A folder is made once per store (remembered; made again if it has since been removed).
        Raises ``ValueError`` for a location outside this store and ``OSError`` when the disk refuses."""
        path = self._path(location)
        folder = path.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)  # a set add is atomic under the GIL; a lost race only repeats the mkdir
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # the folder was removed behind our back: make it again, once
            self._made.discard(folder)
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        os.replace(tmp, path)
        with self._lock:
            self._unsynced.add(str(path))
            self._dirty.add(str(path.parent))
        return StoredImage(location, hashlib.sha256(data).hexdigest(), len(data))

    def sync(self) -> None:
        """Make every :meth:`put` since the last call durable: an fsync of each file written (whatever the last
        rename left under its name), then of each folder written to. Raises ``OSError`` when the disk refuses or a
        file put since has been removed (the ledger must not record it); the files not yet synced are synced by
        the next call."""
        with self._lock:
            files, self._unsynced = sorted(self._unsynced), set()
            dirty, self._dirty = self._dirty, set()
        synced = 0
        try:
            for path in files:
                _fsync_path(path)
                synced += 1
            for folder in dirty:
                _fsync_path(folder)
        except BaseException:
            with self._lock:
                self._unsynced.update(files[synced:])
                self._dirty |= dirty
            raise

    def exists(self, location: str) -> bool:
        """True if the file exists."""
        return self._path(location).is_file()

    def read(self, location: str) -> bytes:
        """The bytes stored at ``location``. Raises ``FileNotFoundError`` if there are none, ``ValueError`` for a
        location outside this store."""
        return self._path(location).read_bytes()
