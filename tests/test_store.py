"""What only the local image store does: its path rule, temporary files and renames on disk.

The behaviour every image store shares (keys never escape the root, exact bytes, deterministic locations) is in
tests/contracts/test_image_store_contract.py, which runs it on LocalImageStore and MemoryImageStore.
"""

from __future__ import annotations

from pathlib import Path

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
