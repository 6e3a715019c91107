"""The ledger: guarded transitions, idempotent batch records, streaming queries, crash atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import ITEM_TRANSITIONS
from batchpipe.errors import LedgerError, TransitionError


def _row(
    custom_id: str, key: str, *, attempt: int = 1, run_id: str = "r1", status: str = "pending"
) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "job": "job",
        "item_key": key,
        "attempt": attempt,
        "run_id": run_id,
        "endpoint": "/v1/images/generations",
        "model": "gpt-image-2",
        "request_hash": "h-" + key,
        "body_json": '{"prompt": "p"}',
        "metadata_json": "{}",
        "source": "m.jsonl:1",
        "status": status,
    }


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    return SqliteLedger(tmp_path / "ledger.sqlite")


def test_transitions_follow_the_table(ledger: SqliteLedger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2")])
    assert ledger.transition_items(["c1", "c2"], ItemStatus.SUBMITTED) == 2
    assert ledger.transition_items(["c1"], ItemStatus.SUCCEEDED, fields={"sha256": "ab"}) == 1
    with pytest.raises(TransitionError):
        ledger.transition_items(["c1"], ItemStatus.FAILED)  # succeeded -> failed is not allowed
    row = ledger.item("c1")
    assert row is not None and row.status == "succeeded" and row.sha256 == "ab"
    # non-strict replays leave rows that already moved untouched
    assert (
        ledger.transition_items(["c1", "c2"], ItemStatus.MISSING, from_statuses=[ItemStatus.SUBMITTED], strict=False)
        == 1
    )
    assert ledger.count_items(run_id="r1") == {"succeeded": 1, "missing": 1}


def test_strict_transition_changes_nothing_when_one_row_is_wrong(ledger: SqliteLedger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2")])
    ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    with pytest.raises(TransitionError):
        ledger.transition_items(["c1", "c2"], ItemStatus.SUCCEEDED)
    assert ledger.count_items() == {"submitted": 1, "pending": 1}


def test_every_status_has_a_transition_entry() -> None:
    assert set(ITEM_TRANSITIONS) == set(ItemStatus)


def test_new_items_must_start_pending_or_invalid_and_be_unique(ledger: SqliteLedger) -> None:
    with pytest.raises(LedgerError):
        ledger.insert_items([_row("c1", "k1", status="succeeded")])
    ledger.insert_items([_row("c1", "k1")])
    with pytest.raises(LedgerError):
        ledger.insert_items([_row("c9", "k1")])  # same job, key and attempt
    assert ledger.count_items() == {"pending": 1}


def test_transaction_rolls_back_everything(ledger: SqliteLedger) -> None:
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.insert_items([_row("c1", "k1")])
        raise RuntimeError("crash")
    assert ledger.count_items() == {}


def test_batch_records_are_idempotent_and_changes_are_logged(ledger: SqliteLedger) -> None:
    batch = {"id": "batch_1", "status": "validating", "input_file_id": "file-1", "created_at": 100}
    assert ledger.record_batch(batch, shard="s1", run_id="r1", model="gpt-image-2") is True
    assert ledger.record_batch(batch, shard="s1", run_id="r1", model="gpt-image-2") is False
    assert ledger.update_batch({**batch, "status": "in_progress"}) == "validating"
    assert ledger.update_batch({**batch, "status": "in_progress"}) is None
    events = ledger.events(entity="batch", entity_id="batch_1")
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "validating"),
        ("validating", "in_progress"),
    ]
    assert ledger.batches()[0]["created_at"] == 100


def test_shard_intents_are_guarded(ledger: SqliteLedger) -> None:
    ledger.insert_shard(
        {
            "name": "s1",
            "run_id": "r1",
            "job": "job",
            "endpoint": "/v1/images/generations",
            "model": "m",
            "path": "/x",
            "requests": 1,
            "bytes": 10,
            "sha256": "00",
            "input_tokens": 5,
        }
    )
    ledger.transition_shard("s1", "uploading", fields={"intent_at": 1.0})
    with pytest.raises(TransitionError):
        ledger.transition_shard("s1", "created")
    ledger.transition_shard("s1", "uploaded", fields={"input_file_id": "file-1"})
    shard = ledger.shard("s1")
    assert shard is not None and shard.status == "uploaded" and shard.input_file_id == "file-1"


def test_items_stream_in_pages_and_latest_only(ledger: SqliteLedger) -> None:
    ledger.insert_items([_row(f"c{i:05d}", f"k{i}") for i in range(2500)])
    ledger.insert_items([_row("z-2", "k1", attempt=2)])
    assert sum(1 for _ in ledger.items(job="job")) == 2501
    latest = {r.item_key: r.attempt for r in ledger.items(job="job", latest_only=True)}
    assert len(latest) == 2500 and latest["k1"] == 2


def test_open_run_resumes_until_finished(ledger: SqliteLedger) -> None:
    run_id, resumed = ledger.open_run("job", "h", "emulator")
    assert not resumed
    assert ledger.open_run("job", "h", "emulator") == (run_id, True)
    ledger.finish_run(run_id, "finished")
    other, resumed = ledger.open_run("job", "h", "emulator")
    assert other != run_id and not resumed
