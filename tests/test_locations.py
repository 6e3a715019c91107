"""Choosing the ledger and the image store by URL (:mod:`batchpipe.runtime.locations`), without servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpipe.adapters.local_store import LocalImageStore
from batchpipe.adapters.s3_store import S3ImageStore, split_s3_url
from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.errors import InputError
from batchpipe.runtime.locations import (
    describe_ledger,
    describe_store,
    ledger_exists,
    ledger_url,
    open_ledger_url,
    open_store_url,
    store_url,
)


def test_the_option_wins_over_the_variable_and_none_means_the_default() -> None:
    env = {"BATCHPIPE_LEDGER": "postgresql://db/x", "BATCHPIPE_STORE": "s3://b/p"}
    assert ledger_url("sqlite:///x.sqlite", env) == "sqlite:///x.sqlite"
    assert ledger_url(None, env) == "postgresql://db/x" and store_url(None, env) == "s3://b/p"
    assert ledger_url(None, {}) is None and store_url("", {}) is None


def test_default_and_sqlite_ledgers(tmp_path: Path) -> None:
    default = open_ledger_url(None, tmp_path)
    assert isinstance(default, SqliteLedger) and default.path == tmp_path / "ledger.sqlite"
    default.close()
    assert ledger_exists(None, tmp_path) and describe_ledger(None, tmp_path) == str(tmp_path / "ledger.sqlite")
    other = open_ledger_url(f"sqlite:///{tmp_path}/other.sqlite", tmp_path)
    assert isinstance(other, SqliteLedger) and other.path == tmp_path / "other.sqlite"
    other.close()
    assert ledger_exists("postgresql://host/db", tmp_path)  # a server: its schema is made on first use
    assert "secret" not in describe_ledger("postgresql://me:secret@host/db", tmp_path)


def test_stores_by_url(tmp_path: Path) -> None:
    local = open_store_url(None, tmp_path / "out", {})
    assert isinstance(local, LocalImageStore) and local.root == (tmp_path / "out").resolve()
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    s3 = open_store_url("s3://bucket/nightly/", tmp_path, env)
    assert isinstance(s3, S3ImageStore) and s3.root == "s3://bucket/nightly"
    assert s3.location_for("shoes/red", 0, "png").startswith("s3://bucket/nightly/shoes/red-")
    assert describe_store("s3://bucket/nightly", tmp_path) == "s3://bucket/nightly"
    assert describe_store(None, tmp_path / "out") == str(tmp_path / "out")


@pytest.mark.parametrize("url", ["s3://", "s3://me:secret@bucket/p", "s3://b/../x", "s3://b/p?x=1", "gs://b/x"])
def test_a_bad_store_url_is_an_input_error_that_never_echoes_a_secret(tmp_path: Path, url: str) -> None:
    with pytest.raises(InputError) as caught:
        open_store_url(url, tmp_path, {})
    assert "secret" not in str(caught.value)


def test_a_bad_ledger_url_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unsupported"):
        open_ledger_url("mysql://db/x", tmp_path)


def test_s3_urls_split_into_bucket_and_prefix() -> None:
    assert split_s3_url("s3://bucket") == ("bucket", "")
    assert split_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")


def test_an_s3_store_refuses_locations_outside_its_prefix() -> None:
    from obstore.store import MemoryStore

    store = S3ImageStore("s3://bucket/run-1", MemoryStore())
    for location in ("s3://bucket/run-2/x.png", "s3://bucket/run-1/../run-2/x.png", "s3://bucket/run-1/", "x.png"):
        with pytest.raises(ValueError, match="not a location"):
            store.read(location)
    assert not store.exists("s3://bucket/run-1/missing.png")
