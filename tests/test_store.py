"""What only the local image store does: its path rule, temporary files and renames on disk.

The behaviour every image store shares (keys never escape the root, exact bytes, deterministic locations) is in
tests/contracts/test_image_store_contract.py, which runs it on LocalImageStore and MemoryImageStore.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpipe.adapters.local_store import LocalImageStore, safe_relative_path
from batchpipe.domain.locations import local_path


@given(st.text(min_size=0, max_size=80))
def test_any_key_maps_inside(key: str) -> None:
    rel = safe_relative_path(key, 0, "png")
    assert not rel.is_absolute() and ".." not in rel.parts


def test_paths_are_deterministic_and_distinct() -> None:
    assert safe_relative_path("a b", 0, "png") == safe_relative_path("a b", 0, "png")
    assert safe_relative_path("a b", 0, "png") != safe_relative_path("a_b", 0, "png")  # hash keeps them apart
    assert safe_relative_path("shoes/red", 1, "jpg").parts[0] == "shoes"
    assert str(safe_relative_path("shoes/red", 1, "jpg")).endswith("-1.jpg")


def test_put_writes_a_file_and_leaves_no_temp(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    data = b"\x89PNG" + bytes(range(256)) * 10
    stored = store.put(store.location_for("k", 0, "png"), data)
    path = local_path(stored.location)  # a file:// URI
    assert path is not None and path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    store.put(stored.location, data)  # rewriting leaves no temp either
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    store.sync()


def test_concurrent_puts_to_one_location_leave_one_whole_file(tmp_path: Path) -> None:
    """Two threads writing different bytes to the same location at once: every put succeeds (each has its own
    temporary name), the file holds exactly one of the two payloads, and no temporary file is left."""
    import hashlib
    import threading

    store = LocalImageStore(tmp_path)
    location = store.location_for("sku/1", 0, "png")
    payloads = [bytes([i]) * 200_000 for i in range(2)]
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []
    results: list[str] = []

    def put(data: bytes) -> None:
        try:
            for _ in range(30):
                barrier.wait()
                results.append(store.put(location, data).sha256)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()  # the other thread stops waiting too

    threads = [threading.Thread(target=put, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 60
    on_disk = store.read(location)
    assert on_disk in payloads and hashlib.sha256(on_disk).hexdigest() in results
    assert [p.name for p in tmp_path.rglob(".*tmp*")] == []


def test_recover_reads_the_pid_of_old_and_new_temporary_names(tmp_path: Path) -> None:
    import os

    dead = 2**22 + 12345  # above the default pid_max: no such process
    old, new = tmp_path / f".a.png.tmp-{dead}", tmp_path / f".b.png.tmp-{dead}-0a1b2c"
    mine = tmp_path / f".c.png.tmp-{os.getpid()}-0a1b2c"
    for path in (old, new, mine):
        path.write_bytes(b"x")
    assert sorted(LocalImageStore(tmp_path).recover()) == sorted([old, new])
    assert mine.exists()


def test_put_makes_each_folder_once_and_again_if_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    store = LocalImageStore(tmp_path / "out")
    calls: list[Path] = []
    real_mkdir = Path.mkdir

    def counting_mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        calls.append(self)
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", counting_mkdir)
    store.put(store.location_for("shoes/item0", 0, "png"), b"x")
    first = len(calls)
    assert first >= 1
    for i in range(1, 5):
        store.put(store.location_for(f"shoes/item{i}", 0, "png"), b"x")
    assert len(calls) == first  # the folder is made by the first put only
    shutil.rmtree(tmp_path / "out" / "shoes")
    loc = store.location_for("shoes/again", 0, "png")
    assert store.put(loc, b"yy").size_bytes == 2
    assert store.read(loc) == b"yy"


def test_sync_makes_every_file_put_since_and_its_folder_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put writes and renames without waiting for the disk; :meth:`LocalImageStore.sync` (before each ledger
    commit) fsyncs each file put since the last sync, the last one under a name that was written twice, then each
    folder. A file removed before the sync is an error (its row must not be committed), and is tried again by the
    next sync, with the folders."""
    import os

    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = LocalImageStore(tmp_path)
    locations = [store.location_for(key, 0, "png") for key in ("shoes/red", "shoes/blue", "hats/green")]
    for location in locations:
        store.put(location, b"\x89PNG first")
    store.put(locations[0], b"\x89PNG second")  # the same name again: the file now there is the one synced
    assert synced == []  # nothing waited for the disk yet

    def identity(path: Path) -> tuple[int, int]:
        info = path.stat()
        return info.st_dev, info.st_ino

    files = [local_path(location) for location in locations]
    assert all(path is not None for path in files)
    store.sync()
    expected_files = {identity(path) for path in files if path is not None}
    expected_folders = {identity(tmp_path / "shoes"), identity(tmp_path / "hats")}
    assert len(synced) == 5 and set(synced[:3]) == expected_files and set(synced[3:]) == expected_folders
    synced.clear()
    store.sync()
    assert synced == []  # each put is synced once

    store.put(locations[1], b"\x89PNG third")
    gone = local_path(store.put(store.location_for("socks/grey", 0, "png"), b"\x89PNG lost").location)
    assert gone is not None
    gone.unlink()
    with pytest.raises(FileNotFoundError):
        store.sync()
    gone.write_bytes(b"\x89PNG back")  # put back: the next sync completes the pending ones
    synced.clear()
    store.sync()
    assert identity(gone) in synced and identity(tmp_path / "socks") in synced
