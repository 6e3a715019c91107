"""What only the SQLite ledger does: the WAL file on disk, reopening it, migrating an older file, claims across
processes, refusing a file it cannot open; and the domain's transition tables.

The behaviour every ledger shares (guarded transitions, item history, forward-only batches, claims, idempotent batch
records, streaming queries, transaction atomicity) is in tests/contracts/test_ledger_contract.py, which runs it on
SqliteLedger and MemoryLedger.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchpipe.adapters.sqlite_ledger import SqliteLedger, open_ledger
from batchpipe.domain.items import BatchStatus, ItemStatus
from batchpipe.domain.records import (
    BATCH_TRANSITIONS,
    ITEM_TRANSITIONS,
    batch_may_move,
    batch_status_is_terminal,
)
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
    assert set(BATCH_TRANSITIONS) == set(BatchStatus)


def test_batch_statuses_end_where_the_service_says_and_unknown_ones_are_not_terminal() -> None:
    for status, later in BATCH_TRANSITIONS.items():
        assert (later == frozenset()) == status.terminal == batch_status_is_terminal(status)
        assert status not in later  # no status follows itself
        for after in later:
            assert BATCH_TRANSITIONS[after] <= later  # a status reachable later is reachable now (polls skip)
    assert not batch_status_is_terminal("paused_for_review")
    assert batch_may_move("in_progress", "paused_for_review") and batch_may_move("paused_for_review", "validating")
    assert not batch_may_move("expired", "paused_for_review") and not batch_may_move("paused", "paused")


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
    assert [(e["entity"], e["entity_id"]) for e in again.events()] == [("item", "c1")]
    again.close()


def test_an_older_ledger_file_gains_claims_and_the_events_index(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path)
    ledger.insert_items([_row("c1", "k1")])
    ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # the file as the ledger wrote it before claims
        db.execute("DROP TABLE claims")
        db.execute("DROP INDEX events_entity")
    again = SqliteLedger(path)
    assert again.claim("shard", "s1", owner="a", lease_s=60)
    assert [e["to_status"] for e in again.item_history("c1")] == ["submitted"]  # nothing lost
    plan = " ".join(
        str(row[-1])
        for row in again._db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM events WHERE entity_id = ? AND entity = 'item' ORDER BY event_id", ("c1",)
        )
    )
    assert "events_entity" in plan  # an item's history is an index lookup, not a scan of the whole log
    again.close()


_CLAIMER = """
import json, sys
from pathlib import Path
from batchpipe.adapters.sqlite_ledger import SqliteLedger
ledger = SqliteLedger(Path(sys.argv[1]))
sys.stdin.readline()  # start together
won = [k for k in (f"shard-{i:03d}" for i in range(int(sys.argv[3]))) if ledger.claim("shard", k, owner=sys.argv[2],
       lease_s=600)]
print(json.dumps(won))
"""


def test_worker_processes_sharing_a_ledger_file_never_take_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()
    keys = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(path), f"worker-{n}", str(keys)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    for proc in procs:  # all are running and have opened the ledger: let them go at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    won = {f"worker-{n}": json.loads(out) for n, out in enumerate(outputs)}
    taken = sorted(k for keys_won in won.values() for k in keys_won)
    assert taken == [f"shard-{i:03d}" for i in range(keys)]  # every key taken exactly once
    ledger = SqliteLedger(path)
    for owner, keys_won in won.items():
        for key in keys_won:
            holder = ledger.claim_holder("shard", key)
            assert holder is not None and holder[0] == owner
    ledger.close()


def test_a_ledger_that_cannot_be_opened_raises_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(LedgerError):
        SqliteLedger(tmp_path / "dir.sqlite")
