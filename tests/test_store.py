"""The local image store: safe deterministic paths and atomic writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpipe.adapters.local_store import LocalImageStore, safe_relative_path


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
def test_keys_never_escape_the_root(tmp_path: Path, key: str) -> None:
    store = LocalImageStore(tmp_path / "out")
    location = Path(store.location_for(key, 0, "png"))
    assert location.is_relative_to((tmp_path / "out").resolve())


@given(st.text(min_size=0, max_size=80))
def test_any_key_maps_inside(key: str) -> None:
    rel = safe_relative_path(key, 0, "png")
    assert not rel.is_absolute() and ".." not in rel.parts


def test_paths_are_deterministic_and_distinct() -> None:
    assert safe_relative_path("a b", 0, "png") == safe_relative_path("a b", 0, "png")
    assert safe_relative_path("a b", 0, "png") != safe_relative_path("a_b", 0, "png")  # hash keeps them apart
    assert safe_relative_path("shoes/red", 1, "jpg").parts[0] == "shoes"
    assert str(safe_relative_path("shoes/red", 1, "jpg")).endswith("-1.jpg")


def test_put_writes_exact_bytes_and_leaves_no_temp(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    data = b"\x89PNG" + bytes(range(256)) * 10
    stored = store.put(store.location_for("k", 0, "png"), data)
    assert Path(stored.location).read_bytes() == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size_bytes == len(data)
    assert [p.name for p in tmp_path.iterdir()] == [Path(stored.location).name]
    store.put(stored.location, data)  # rewriting is idempotent
    assert store.exists(stored.location)
