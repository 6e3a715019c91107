"""What only the SQLite ledger does: the WAL file on disk, reopening it, refusing a file it cannot open.

The behaviour every ledger shares (guarded transitions, idempotent batch records, streaming queries, transaction
atomicity) is in tests/contracts/test_ledger_contract.py, which runs it on SqliteLedger and MemoryLedger.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchpipe.adapters.sqlite_ledger import SqliteLedger, open_ledger
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import ITEM_TRANSITIONS
from batchpipe.errors import LedgerError


def _row(custom_id: str, key: str) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "job": "job",
        "item_key": key,
        "attempt": 1,
        "run_id": "r1",
        "endpoint": "/v1/images/generations",
        "model": "gpt-image-2",
        "request_hash": "h-" + key,
        "body_json": '{"prompt": "p"}',
        "metadata_json": "{}",
        "source": "m.jsonl:1",
        "status": "pending",
    }


def test_every_status_has_a_transition_entry() -> None:
    assert set(ITEM_TRANSITIONS) == set(ItemStatus)


def test_the_ledger_is_a_wal_file_that_survives_reopening(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "work")
    assert ledger.path == tmp_path / "work" / "ledger.sqlite" and ledger.path.is_file()
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2")])
    ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.insert_items([_row("c3", "k3")])
        raise RuntimeError("crash")
    ledger.close()
    ledger.close()  # idempotent
    with sqlite3.connect(tmp_path / "work" / "ledger.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again = SqliteLedger(tmp_path / "work" / "ledger.sqlite")
    assert again.count_items() == {"pending": 1, "submitted": 1}  # committed rows only
    assert [e["entity"] for e in again.events()] == ["items"]
    again.close()


def test_a_ledger_that_cannot_be_opened_raises_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(LedgerError):
        SqliteLedger(tmp_path / "dir.sqlite")
