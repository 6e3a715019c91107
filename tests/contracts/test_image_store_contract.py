"""The ImageStore contract: every implementation of :class:`batchpipe.ports.ImageStore` behaves the same.

Each test runs against ``LocalImageStore`` (a folder under tmp_path), ``S3ImageStore`` on the session's SeaweedFS
server (``s3``, a fresh prefix per test, configured by the AWS variables) and on obstore's ``MemoryStore``
(``s3-memory``, fast), and ``MemoryImageStore``. Tests of what only the local filesystem does (temporary files,
folder fsyncs) stay in tests/test_store.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import obstore
import pytest
from obstore.store import MemoryStore

from batchpipe.adapters.local_store import LocalImageStore, safe_relative_path
from batchpipe.adapters.s3_store import S3ImageStore, open_s3_store
from batchpipe.domain.locations import local_path
from batchpipe.fakes import MemoryImageStore
from batchpipe.ports import ImageStore, StoredImage

if TYPE_CHECKING:  # checked by mypy, never run: each implements the ImageStore port
    from obstore.store import ObjectStore

    _local: ImageStore = LocalImageStore(Path("out"))
    _memory: ImageStore = MemoryImageStore()
    _s3: ImageStore = S3ImageStore("s3://bucket/prefix", MemoryStore())


@dataclass
class Case:
    """One implementation under test: the ``store``, how to read back what it holds, and whether a location lies
    inside its root (and what it is relative to the root)."""

    store: ImageStore
    read: Callable[[str], bytes]
    inside: Callable[[str], bool]
    relative: Callable[[str], PurePosixPath]


def _file(uri: str) -> Path:
    path = local_path(uri)
    assert path is not None, uri
    return path


def _s3_case(store: S3ImageStore, objects: ObjectStore, bucket_url: str) -> Case:
    """A case for an S3 store rooted at ``bucket_url`` (``s3://bucket/prefix``), read back through ``objects``
    (the bucket's obstore store, used directly: not through the store under test)."""
    prefix = bucket_url + "/"
    key_prefix = bucket_url.partition("//")[2].partition("/")[2]

    def read(location: str) -> bytes:
        assert location.startswith(prefix), location
        return bytes(obstore.get(objects, f"{key_prefix}/{location[len(prefix) :]}".lstrip("/")).bytes())

    return Case(
        store,
        read=read,
        inside=lambda location: (
            location.startswith(prefix) and ".." not in PurePosixPath(location[len(prefix) :]).parts
        ),
        relative=lambda location: PurePosixPath(location.removeprefix(prefix)),
    )


@pytest.fixture(params=["local", "s3", "s3-memory", "memory"])
def case(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        url = server.new_prefix()
        store = open_s3_store(url, os.environ)
        return _s3_case(store, store.objects, url)
    if request.param == "s3-memory":
        objects = MemoryStore()
        return _s3_case(S3ImageStore("s3://bucket/run-1", objects), objects, "s3://bucket/run-1")
    if request.param == "local":
        root = (tmp_path / "out").resolve()
        return Case(  # locations are file:// URIs of files under the root
            LocalImageStore(tmp_path / "out"),
            read=lambda location: _file(location).read_bytes(),
            inside=lambda location: location.startswith("file:///") and _file(location).is_relative_to(root),
            relative=lambda location: PurePosixPath(_file(location).relative_to(root).as_posix()),
        )
    memory = MemoryImageStore("memory://bucket")
    prefix = "memory://bucket/"
    return Case(
        memory,
        read=memory.read,
        inside=lambda location: (
            location.startswith(prefix) and ".." not in PurePosixPath(location[len(prefix) :]).parts
        ),
        relative=lambda location: PurePosixPath(location.removeprefix(prefix)),
    )


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/abs/path",
        "a\\..\\..\\b",
        "..",
        "",
        "a/../../b",
        "x\x00y",
        "\u00e9t\u00e9/ch\u00e2teau",
    ],
)
def test_keys_never_escape_the_root(case: Case, key: str) -> None:
    location = case.store.location_for(key, 0, "png")
    assert case.inside(location)
    assert not case.relative(location).is_absolute() and ".." not in case.relative(location).parts


def test_locations_follow_the_shared_safe_path_rule(case: Case) -> None:
    store = case.store
    assert store.location_for("a b", 0, "png") == store.location_for("a b", 0, "png")  # deterministic
    assert store.location_for("a b", 0, "png") != store.location_for("a_b", 0, "png")  # hash keeps them apart
    assert store.location_for("k", 0, "png") != store.location_for("k", 1, "png")
    assert case.relative(store.location_for("shoes/red", 1, "jpg")).parts[0] == "shoes"
    assert store.location_for("shoes/red", 1, "jpg").endswith("-1.jpg")
    assert store.location_for("k", 0, ".webp").endswith(".webp") and not store.location_for("k", 0, ".webp").endswith(
        "..webp"
    )
    for key, index, ext in [("shoes/red sneaker", 0, "png"), ("../x", 2, "jpeg"), ("", 0, "gif")]:
        relative = case.relative(store.location_for(key, index, ext))
        assert relative == PurePosixPath(safe_relative_path(key, index, ext).as_posix())  # the same names everywhere


def test_a_later_attempt_never_takes_an_earlier_attempts_location(case: Case) -> None:
    """Issue 14: a retry at another quality stores its image beside the first attempt's, never over it."""
    store = case.store
    first = store.location_for("shoes/red", 0, "png")
    assert store.location_for("shoes/red", 0, "png", 1) == first  # attempt 1 keeps the name it always had
    second, third = store.location_for("shoes/red", 0, "png", 2), store.location_for("shoes/red", 0, "png", 3)
    assert len({first, second, third}) == 3 and second.endswith("-a2.png")
    assert store.location_for("shoes/red", 1, "png", 2).endswith("-a2-1.png")
    assert case.relative(second) == PurePosixPath(safe_relative_path("shoes/red", 0, "png", 2).as_posix())
    old = store.put(first, b"attempt 1")
    store.put(second, b"attempt 2")
    store.sync()
    assert case.read(first) == b"attempt 1" and hashlib.sha256(case.read(first)).hexdigest() == old.sha256
    assert case.read(second) == b"attempt 2"
    with pytest.raises(ValueError, match="attempt"):
        store.location_for("shoes/red", 0, "png", 0)


def test_put_writes_exact_bytes(case: Case) -> None:
    store = case.store
    data = b"\x89PNG" + bytes(range(256)) * 10
    location = store.location_for("k", 0, "png")
    assert not store.exists(location)
    stored = store.put(location, data)
    assert stored == StoredImage(location, hashlib.sha256(data).hexdigest(), len(data))
    assert case.read(stored.location) == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size_bytes == len(data)
    store.put(stored.location, data)  # rewriting is idempotent
    assert store.exists(stored.location)
    assert case.read(stored.location) == data


def test_put_replaces_what_a_location_held(case: Case) -> None:
    store = case.store
    location = store.location_for("shoes/red", 0, "png")
    store.put(location, b"first version, longer than the second")
    stored = store.put(location, b"second")
    assert case.read(location) == b"second"
    assert (stored.size_bytes, stored.sha256) == (6, hashlib.sha256(b"second").hexdigest())


def test_empty_images_and_other_locations(case: Case) -> None:
    store = case.store
    empty = store.put(store.location_for("empty", 0, "png"), b"")
    assert (empty.size_bytes, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert store.exists(empty.location) and case.read(empty.location) == b""
    assert not store.exists(store.location_for("empty", 1, "png"))
    assert not store.exists(store.location_for("other", 0, "png"))


def test_sync_keeps_everything_put(case: Case) -> None:
    store = case.store
    store.sync()  # nothing to sync yet
    locations = [store.location_for(f"group{i % 3}/k{i}", 0, "png") for i in range(9)]
    for i, location in enumerate(locations):
        store.put(location, bytes([i]) * 10)
    store.sync()
    store.sync()
    for i, location in enumerate(locations):
        assert store.exists(location) and case.read(location) == bytes([i]) * 10


def test_puts_from_many_threads(case: Case) -> None:
    store = case.store
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                location = store.location_for(f"t{n}/k{i}", 0, "png")
                stored = store.put(location, f"{n}-{i}".encode())
                assert stored.location == location
                if i % 5 == 0:
                    store.sync()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.sync()
    assert errors == []
    for n in range(8):
        for i in range(25):
            assert case.read(store.location_for(f"t{n}/k{i}", 0, "png")) == f"{n}-{i}".encode()


def test_what_is_put_is_read_back_by_its_location_and_a_foreign_location_is_refused(case: Case) -> None:
    store = case.store
    location = store.location_for("shoes/red sneaker é", 0, "png")
    assert store.put(location, b"\x89PNG exact bytes").location == location
    store.sync()
    assert store.read(location) == b"\x89PNG exact bytes" == case.read(location)
    with pytest.raises(FileNotFoundError):
        store.read(store.location_for("never put", 0, "png"))
    with pytest.raises((ValueError, FileNotFoundError)):
        store.read("s3://some-other-bucket/shoes/red.png")
