"""The shipped fakes beyond the contracts: the same schema as SQLite, their own refusals and test helpers, and the
collect stage running on them with no disk at all."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from PIL import Image

from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.api import FileObject
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import ITEM_COLUMNS, ShardRow
from batchpipe.errors import LedgerError
from batchpipe.fakes import MemoryImageStore, MemoryLedger, memory_ledger
from batchpipe.stages.collect import Collector


def _row(custom_id: str, key: str) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "job": "j",
        "item_key": key,
        "attempt": 1,
        "run_id": "r",
        "endpoint": "/v1/images/generations",
        "model": "gpt-image-2",
        "request_hash": "h",
        "body_json": "{}",
        "metadata_json": "{}",
        "source": "m:1",
        "status": "pending",
    }


# -- MemoryLedger ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("runs", memory_ledger._RUNS),
        ("items", memory_ledger._ITEMS),
        ("shards", memory_ledger._SHARDS),
        ("batches", memory_ledger._BATCHES),
        ("files", memory_ledger._FILES),
        ("claims", memory_ledger._CLAIMS),
    ],
)
def test_memory_ledger_has_the_sqlite_schema(tmp_path: Path, table: str, columns: dict[str, tuple[str, bool]]) -> None:
    SqliteLedger(tmp_path / "ledger.sqlite").close()
    affinity = {"TEXT": "text", "INTEGER": "integer", "DOUBLE PRECISION": "real"}
    with contextlib.closing(sqlite3.connect(tmp_path / "ledger.sqlite")) as db:
        schema = {
            name: (affinity[kind], bool(notnull or primary_key))  # the fake requires primary keys too
            for _, name, kind, notnull, _, primary_key in db.execute(f"PRAGMA table_info({table})")
        }
    assert columns == schema
    assert list(memory_ledger._ITEMS) == ITEM_COLUMNS
    assert list(memory_ledger._SHARDS) == [f.name for f in dataclasses.fields(ShardRow)]


def test_memory_ledger_refuses_what_sqlite_would_refuse() -> None:
    ledger = MemoryLedger()
    ledger.insert_items([_row("c1", "k1")])
    with pytest.raises(LedgerError):
        ledger.update_item_fields("c1", {"no_such_column": 1})
    with pytest.raises(LedgerError):
        ledger.transition_items(["c1"], ItemStatus.SUBMITTED, fields={"output_uri": Path("/x")})  # cannot bind
    with pytest.raises(LedgerError):
        ledger.update_item_fields("c1", {"model": None})  # NOT NULL
    with pytest.raises(LedgerError):
        ledger.insert_shard({"name": "s1", "bogus": 1})
    row = ledger.item("c1")
    assert row is not None and row.status == "pending" and row.output_path is None


def test_memory_ledger_does_not_change_the_columns_that_name_a_row() -> None:
    ledger = MemoryLedger()
    ledger.insert_items([_row("c1", "k1")])
    for fields in ({"custom_id": "c2"}, {"item_key": "k2"}, {"attempt": 2}, {"job": "other"}):
        with pytest.raises(LedgerError):
            ledger.update_item_fields("c1", fields)
    assert [(r.custom_id, r.item_key, r.attempt, r.job) for r in ledger.items()] == [("c1", "k1", 1, "j")]


def test_memory_ledger_stays_readable_after_close() -> None:
    ledger = MemoryLedger()
    ledger.insert_items([_row("c1", "k1")])
    ledger.close()
    ledger.close()
    assert ledger.count_items() == {"pending": 1}


# -- MemoryImageStore -----------------------------------------------------------------------------------------
def test_a_crash_forgets_what_was_put_since_the_last_sync() -> None:
    store = MemoryImageStore()
    kept, replaced, lost = (store.location_for(k, 0, "png") for k in ("kept", "replaced", "lost"))
    assert kept.startswith("memory://images/kept-") and kept.endswith(".png")
    store.put(kept, b"k")
    store.put(replaced, b"old")
    store.sync()
    store.put(replaced, b"new")
    store.put(replaced, b"newer")
    store.put(lost, b"l")
    assert store.unsynced() == sorted([replaced, lost])
    assert store.crash() == sorted([replaced, lost])
    assert store.read(kept) == b"k" and store.read(replaced) == b"old" and not store.exists(lost)
    assert store.locations() == sorted([kept, replaced]) and store.unsynced() == []
    with pytest.raises(FileNotFoundError):
        store.read(lost)
    assert store.crash() == []


# -- the collect stage on fakes -------------------------------------------------------------------------------
class _OneFileClient:
    """Serves one file from memory, in small chunks."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def retrieve_file(self, file_id: str) -> FileObject:
        return FileObject.parse({"id": file_id, "object": "file", "bytes": len(self.data)})

    @contextlib.asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[_OneFileClient]:
        yield self

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 11):
            yield self.data[start : start + 11]


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return buf.getvalue()


async def test_the_collector_runs_on_the_fakes() -> None:
    ledger, store = MemoryLedger(), MemoryImageStore()
    ids = [f"bp-{i:03d}-a1" for i in range(3)]
    ledger.insert_items([_row(cid, f"sku/{i}") for i, cid in enumerate(ids)])
    ledger.record_batch({"id": "b1", "status": "completed", "input_file_id": "f"}, shard="s", run_id="r", model="m")
    ledger.transition_items(ids, ItemStatus.SUBMITTED, fields={"batch_id": "b1"})
    pngs = [_png((i * 80, 0, 0)) for i in range(2)]
    lines = [
        {
            "id": "r",
            "custom_id": ids[i],
            "error": None,
            "response": {
                "status_code": 200,
                "request_id": "x",
                "body": {"created": 1, "data": [{"b64_json": base64.b64encode(png).decode()}], "output_format": "png"},
            },
        }
        for i, png in enumerate(pngs)
    ]
    lines.append({"id": "r", "custom_id": ids[2], "response": None, "error": {"code": "batch_expired", "message": "e"}})
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    collector = Collector(_OneFileClient(data), ledger, store, None)
    try:
        stats = await collector.collect_file("b1", "file-out", "output", await collector.targets_for_batch("b1"))
    finally:
        collector.close()
    assert stats.lines == 3 and stats.images == 2
    for cid, png in zip(ids, pngs, strict=False):
        row = ledger.item(cid)
        assert row is not None and row.status == "succeeded" and row.sha256 == hashlib.sha256(png).hexdigest()
        assert store.read(str(row.output_uri)) == png
    expired = ledger.item(ids[2])
    assert expired is not None and expired.status == "expired"
    assert store.unsynced() == []  # every image the ledger records was synced first
    batch = ledger.batch("b1")
    assert batch is not None and batch.output_offset == len(data) and batch.output_done == 1
