"""The Ledger contract: every implementation of :class:`batchpipe.ports.Ledger` behaves the same.

Each test runs against ``SqliteLedger`` (a file under tmp_path), ``PostgresLedger`` (a new schema on the session's
embedded PostgreSQL server, tests/conftest.py) and ``MemoryLedger``. Tests of what only SQLite
does (WAL, the file on disk, reopening it, other processes) stay in tests/test_ledger.py. The claims tests run on
two handles of one ledger (``workers``): two ``SqliteLedger`` objects on one file or two ``PostgresLedger`` objects on
one schema (two connections, as two workers have), or the one ``MemoryLedger`` twice.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from ledger_reads import item_row as _row
from structlog.testing import capture_logs

from batchpipe.adapters.postgres_ledger import PostgresLedger
from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.items import BatchStatus, ItemStatus
from batchpipe.domain.records import BatchRow
from batchpipe.errors import LedgerError, TransitionError
from batchpipe.fakes import MemoryLedger
from batchpipe.ports import AsyncLedger, Ledger

if TYPE_CHECKING:  # checked by mypy, never run: both implement the Ledger port
    _sqlite: Ledger = SqliteLedger(Path("ledger.sqlite"))
    _memory: Ledger = MemoryLedger()
    _postgres: Ledger = PostgresLedger("postgresql://")
    _async: AsyncLedger = AsyncLedger(MemoryLedger())

IMPLEMENTATIONS = [SqliteLedger, PostgresLedger, MemoryLedger]


class Clock:
    """A clock the test moves: ``clock()`` returns ``now`` (unix seconds)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeLedger = Callable[..., Ledger]


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeLedger]:
    """A factory of empty ledgers of one implementation: ``make_ledger(clock=...)``."""
    opened: list[Ledger] = []
    fresh_postgres_url = request.getfixturevalue("fresh_postgres_url") if request.param == "postgres" else None

    def make(*, clock: Callable[[], float] = time.time) -> Ledger:
        ledger: Ledger
        if request.param == "sqlite":
            ledger = SqliteLedger(tmp_path / f"ledger-{len(opened)}.sqlite", clock=clock)
        elif fresh_postgres_url is not None:
            ledger = PostgresLedger(fresh_postgres_url(), clock=clock)
        else:
            ledger = MemoryLedger(clock=clock)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: MakeLedger) -> Ledger:
    return make_ledger()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(make_ledger: MakeLedger, clock: Clock) -> Ledger:
    """A ledger on the test's clock."""
    return make_ledger(clock=clock)


@pytest.fixture
def workers(request: pytest.FixtureRequest, make_ledger: MakeLedger, clock: Clock) -> Iterator[tuple[Ledger, Ledger]]:
    """Two workers' handles on one ledger, on the test's clock: two ``SqliteLedger`` objects on one file or two
    ``PostgresLedger`` objects on one schema (two connections), or one ``MemoryLedger`` twice (an in-memory ledger
    lives in one process)."""
    first = make_ledger(clock=clock)
    second: Ledger
    if isinstance(first, SqliteLedger):
        second = SqliteLedger(first.path, clock=clock)
    elif isinstance(first, PostgresLedger):
        second = PostgresLedger(first.url, clock=clock)
    else:
        yield first, first
        return
    yield first, second
    second.close()


def _shard(name: str, *, run_id: str = "r1") -> dict[str, object]:
    return {
        "name": name,
        "run_id": run_id,
        "job": "job",
        "endpoint": "/v1/images/generations",
        "model": "m",
        "path": "/x",
        "requests": 1,
        "bytes": 10,
        "sha256": "00",
        "input_tokens": 5,
    }


def _batch(batch_id: str, status: str = "validating", **extra: object) -> dict[str, Any]:
    return {"id": batch_id, "status": status, "input_file_id": "file-in-" + batch_id, "created_at": 100, **extra}


def _state(ledger: Ledger) -> dict[str, object]:
    """Everything a ledger holds, to compare before and after."""
    return {
        "items": list(ledger.items()),
        "shards": ledger.shards(),
        "batches": ledger.batches(),
        "files": sorted(ledger.files(), key=lambda f: str(f["file_id"])),
        "events": ledger.events(),
        "latest_run": ledger.latest_run(),
    }


# -- the interface itself -------------------------------------------------------------------------------------
def _public_methods(cls: type) -> dict[str, list[tuple[str, object, object]]]:
    return {
        name: [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_implements_exactly_the_protocol_methods_with_the_same_signatures(implementation: type) -> None:
    protocol = _public_methods(Ledger)
    # 36 + error_counts (status by code) + open_runs (batchpipe worker) + item_summary and export_jsonl (issue 12)
    assert len(protocol) == 40
    assert _public_methods(implementation) == protocol


# -- item transitions -----------------------------------------------------------------------------------------
def test_transitions_follow_the_table(ledger: Ledger) -> None:
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


def test_strict_transition_changes_nothing_when_one_row_is_wrong(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2")])
    ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    with pytest.raises(TransitionError):
        ledger.transition_items(["c1", "c2"], ItemStatus.SUCCEEDED)
    assert ledger.count_items() == {"submitted": 1, "pending": 1}


@pytest.mark.parametrize(
    ("start", "to_status", "from_statuses"),
    [
        ("pending", ItemStatus.SUCCEEDED, None),  # pending may not skip submitted
        ("succeeded", ItemStatus.FAILED, None),
        ("superseded", ItemStatus.PENDING, None),  # superseded is final
        ("invalid", ItemStatus.SUBMITTED, None),
        ("submitted", ItemStatus.SUCCEEDED, [ItemStatus.PENDING]),  # pending -> succeeded named as a source
        ("pending", ItemStatus.SUPERSEDED, [ItemStatus.PENDING, ItemStatus.SUPERSEDED]),
    ],
)
def test_a_forbidden_transition_raises_and_changes_nothing(
    timed: Ledger, clock: Clock, start: str, to_status: ItemStatus, from_statuses: list[ItemStatus] | None
) -> None:
    status = "invalid" if start == "invalid" else "pending"
    timed.insert_items([_row("c1", "k1", status=status), _row("c2", "k2")])
    path = {
        "submitted": [ItemStatus.SUBMITTED],
        "succeeded": [ItemStatus.SUBMITTED, ItemStatus.SUCCEEDED],
        "superseded": [ItemStatus.SUPERSEDED],
    }
    for step in path.get(start, []):
        timed.transition_items(["c1"], step)
    before = _state(timed)
    clock.now += 60
    with pytest.raises(TransitionError):
        timed.transition_items(
            ["c1"], to_status, from_statuses=from_statuses, fields={"error_code": "x", "sha256": "ff"}
        )
    assert _state(timed) == before  # not the status, not the fields, not updated_at, no event
    row = timed.item("c1")
    assert row is not None and row.status == start and row.error_code is None and row.sha256 is None


def test_a_failed_strict_transition_changes_nothing_inside_an_outer_transaction(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2"), _row("c3", "k3")])
    ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    before = _state(ledger)
    with ledger.transaction():
        with pytest.raises(TransitionError):
            ledger.transition_items(["c1", "c2"], ItemStatus.SUCCEEDED)  # c2 is pending: neither moves
        assert _state(ledger) == before
        ledger.transition_items(["c3"], ItemStatus.SUBMITTED)  # the outer transaction goes on and commits
    assert ledger.count_items() == {"submitted": 2, "pending": 1}
    assert [(r.custom_id, r.status) for r in ledger.items(statuses=["submitted"])] == [
        ("c1", "submitted"),
        ("c3", "submitted"),
    ]


def test_a_strict_failure_in_a_later_chunk_undoes_the_earlier_chunks(ledger: Ledger) -> None:
    ids = [f"c{i:04d}" for i in range(1200)]
    ledger.insert_items([_row(cid, cid) for cid in ids])
    ledger.transition_items(ids[-1:], ItemStatus.SUBMITTED)  # the last id (third chunk of 500) is not pending
    with pytest.raises(TransitionError):
        ledger.transition_items(ids, ItemStatus.SUBMITTED, from_statuses=[ItemStatus.PENDING])
    assert ledger.count_items() == {"pending": 1199, "submitted": 1}
    assert [e["entity_id"] for e in ledger.events(entity="item")] == ids[-1:]  # no event of the undone moves
    assert ledger.transition_items(ids, ItemStatus.SUBMITTED, strict=False) == 1199
    assert len(ledger.events(entity="item")) == 1200  # one per item, across chunks of 500


def test_a_guarded_transition_from_the_wrong_status_returns_0_when_not_strict(timed: Ledger, clock: Clock) -> None:
    timed.insert_items([_row("c1", "k1"), _row("c2", "k2")])
    timed.transition_items(["c1", "c2"], ItemStatus.SUBMITTED)
    timed.transition_items(["c1", "c2"], ItemStatus.SUCCEEDED)
    before = _state(timed)
    clock.now += 60
    # a replay after a crash: the rows already moved on
    assert timed.transition_items(["c1", "c2"], ItemStatus.SUCCEEDED, fields={"sha256": "zz"}, strict=False) == 0
    assert (
        timed.transition_items(
            ["c1"], ItemStatus.FAILED, from_statuses=[ItemStatus.SUBMITTED], fields={"error_code": "x"}, strict=False
        )
        == 0
    )
    assert timed.transition_items(["nope"], ItemStatus.SUBMITTED, strict=False) == 0  # unknown ids are skipped too
    assert timed.transition_items([], ItemStatus.SUBMITTED) == 0
    assert _state(timed) == before  # no field, no updated_at, no event


def test_unknown_ids_fail_a_strict_transition(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1")])
    with pytest.raises(TransitionError):
        ledger.transition_items(["c1", "ghost"], ItemStatus.SUBMITTED)
    assert ledger.count_items() == {"pending": 1}


def test_a_transition_sets_fields_and_updated_at_and_logs_an_event_per_item(timed: Ledger, clock: Clock) -> None:
    timed.insert_items([_row("c1", "k1"), _row("c2", "k2"), _row("c3", "k3")])
    clock.now += 5
    changed = timed.transition_items(["c2", "c1"], ItemStatus.SUBMITTED, fields={"batch_id": "b1", "shard": "s1"})
    assert changed == 2
    for cid in ("c1", "c2"):
        row = timed.item(cid)
        assert row is not None
        assert (row.status, row.batch_id, row.shard, row.updated_at) == ("submitted", "b1", "s1", clock.now)
        assert row.created_at == clock.now - 5
    untouched = timed.item("c3")
    assert untouched is not None and untouched.status == "pending" and untouched.batch_id is None
    events = timed.events(entity="item")
    assert [(e["entity_id"], e["from_status"], e["to_status"], e["detail"], e["at"]) for e in events] == [
        ("c2", "pending", "submitted", "2 items", clock.now),  # in the order the ids were given
        ("c1", "pending", "submitted", "2 items", clock.now),
    ]
    assert timed.events(entity="items") == []  # no bulk event any more


def test_concurrent_guarded_transitions_move_each_item_once(ledger: Ledger) -> None:
    ids = [f"c{i:03d}" for i in range(200)]
    ledger.insert_items([_row(cid, cid) for cid in ids])
    results: list[int] = []
    lock = threading.Lock()

    def race() -> None:
        changed = ledger.transition_items(ids, ItemStatus.SUBMITTED, from_statuses=[ItemStatus.PENDING], strict=False)
        with lock:
            results.append(changed)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0] * 7 + [200]  # compare-and-set: exactly one writer wins the rows
    assert ledger.count_items() == {"submitted": 200}
    events = ledger.events(entity="item")
    assert sorted(e["entity_id"] for e in events) == ids  # each item moved, and was logged, exactly once
    assert {(e["from_status"], e["to_status"]) for e in events} == {("pending", "submitted")}


# -- item history (one event per item moved) -------------------------------------------------------------------
def test_every_item_transition_is_an_event_in_its_history(timed: Ledger, clock: Clock) -> None:
    timed.insert_items([_row("c1", "k1"), _row("c2", "k2"), _row("c3", "k3")])
    assert timed.item_history("c1") == []  # inserting is not a move
    t1 = clock.now = clock.now + 5
    timed.transition_items(["c2", "c1"], ItemStatus.SUBMITTED, fields={"batch_id": "b1"})
    t2 = clock.now = clock.now + 7.25
    timed.transition_items(["c1"], ItemStatus.SUCCEEDED, fields={"sha256": "ab"})
    timed.transition_items(["c2"], ItemStatus.FAILED, fields={"error_code": "x"})
    history = timed.item_history("c1")
    assert [{k: v for k, v in e.items() if k != "event_id"} for e in history] == [
        {
            "custom_id": "c1",
            "from_status": "pending",
            "to_status": "submitted",
            "detail": "2 items",
            "created_at": t1,
        },
        {
            "custom_id": "c1",
            "from_status": "submitted",
            "to_status": "succeeded",
            "detail": "1 items",
            "created_at": t2,
        },
    ]
    assert history[0]["event_id"] < history[1]["event_id"]
    assert all(type(e["created_at"]) is float and type(e["event_id"]) is int for e in history)
    assert [(e["from_status"], e["to_status"]) for e in timed.item_history("c2")] == [
        ("pending", "submitted"),
        ("submitted", "failed"),
    ]
    assert timed.item_history("c3") == [] and timed.item_history("ghost") == []
    # events() keeps working: the same changes, as item events, oldest first
    assert [(e["entity_id"], e["to_status"]) for e in timed.events(entity="item")] == [
        ("c2", "submitted"),
        ("c1", "submitted"),
        ("c1", "succeeded"),
        ("c2", "failed"),
    ]
    assert [e["event_id"] for e in timed.events(entity="item", entity_id="c1")] == [e["event_id"] for e in history]
    history[0]["to_status"] = "changed by the caller"
    assert timed.item_history("c1")[0]["to_status"] == "submitted"  # new dicts


def test_each_item_event_names_the_status_that_item_left(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2"), _row("c3", "k3"), _row("c4", "k4", status="invalid")])
    ledger.transition_items(["c2", "c3"], ItemStatus.SUBMITTED)
    ledger.transition_items(["c3"], ItemStatus.SUCCEEDED)
    ledger.transition_items(["c2"], ItemStatus.FAILED)
    moved = ledger.transition_items(["c1", "c2", "c3", "c4", "c1", "ghost"], ItemStatus.SUPERSEDED, strict=False)
    assert moved == 4
    assert [(e["entity_id"], e["from_status"], e["detail"]) for e in ledger.events(entity="item")][-4:] == [
        ("c1", "pending", "4 items"),  # a repeated id moves, and is logged, once
        ("c2", "failed", "4 items"),
        ("c3", "succeeded", "4 items"),
        ("c4", "invalid", "4 items"),
    ]
    assert [e["to_status"] for e in ledger.item_history("c3")] == ["submitted", "succeeded", "superseded"]
    assert ledger.transition_items(["c1", "c2"], ItemStatus.SUPERSEDED, strict=False) == 0  # a replay logs nothing
    assert len(ledger.events(entity="item")) == 8


def test_item_events_are_rolled_back_with_their_transition(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2")])
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.transition_items(["c1", "c2"], ItemStatus.SUBMITTED)
        assert [e["to_status"] for e in ledger.item_history("c1")] == ["submitted"]  # visible inside
        raise RuntimeError("crash")
    assert ledger.item_history("c1") == [] and ledger.events() == []
    with ledger.transaction():
        ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
        with pytest.raises(TransitionError):
            ledger.transition_items(["c1", "c2"], ItemStatus.SUCCEEDED)  # c2 is pending: neither moves
    assert [e["to_status"] for e in ledger.item_history("c1")] == ["submitted"]
    assert ledger.item_history("c2") == []


# -- inserting and reading items ------------------------------------------------------------------------------
def test_new_items_must_start_pending_or_invalid_and_be_unique(ledger: Ledger) -> None:
    with pytest.raises(LedgerError):
        ledger.insert_items([_row("c1", "k1", status="succeeded")])
    ledger.insert_items([_row("c1", "k1")])
    with pytest.raises(LedgerError):
        ledger.insert_items([_row("c9", "k1")])  # same job, key and attempt
    assert ledger.count_items() == {"pending": 1}


def test_insert_items_is_all_or_nothing(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1")])
    with pytest.raises(LedgerError):
        ledger.insert_items([_row("c2", "k2"), _row("c1", "k3")])  # the second has a taken custom_id
    with pytest.raises(LedgerError):
        ledger.insert_items([_row("c3", "k3"), _row("c4", "k4", request_hash=None)])  # a required column is NULL
    with ledger.transaction():
        with pytest.raises(LedgerError):
            ledger.insert_items([_row("c5", "k5"), _row("c5", "k6")])  # a duplicate within the rows
        ledger.insert_items([_row("c6", "k6")])
    assert [r.custom_id for r in ledger.items()] == ["c1", "c6"]
    assert ledger.insert_items([]) == 0
    assert ledger.insert_items([_row("c7", "k7"), _row("c8", "k8", status="invalid")]) == 2


def test_rows_read_back_with_their_column_types(timed: Ledger, clock: Clock) -> None:
    timed.insert_items(
        [_row("c1", "k1", status=ItemStatus.PENDING, created_at=5, updated_at=6, retryable=True, cost_usd=2)]
    )
    row = timed.item("c1")
    assert row is not None
    assert type(row.status) is str and row.status == "pending"
    assert (row.created_at, row.updated_at, row.cost_usd) == (5.0, 6.0, 2.0)
    assert all(type(v) is float for v in (row.created_at, row.updated_at, row.cost_usd))
    assert row.retryable == 1 and type(row.retryable) is int
    assert row.input_tokens_est == 0 and row.output_uri is None and row.previous_custom_id is None
    timed.record_batch(_batch("b1"), shard="s1", run_id="r1", model="m")
    timed.set_batch_progress("b1", output_done=True, output_offset=10)
    batch = timed.batch("b1")
    assert batch is not None and batch.output_done == 1 and type(batch.output_done) is int
    assert type(batch.created_at) is float and batch.output_offset == 10


def test_items_filter_by_every_field(timed: Ledger, clock: Clock) -> None:
    timed.insert_items(
        [
            _row("c3", "k3", run_id="r1"),
            _row("c1", "k1", run_id="r1"),
            _row("c2", "k2", run_id="r2"),
            {**_row("d1", "k1", run_id="r2"), "job": "other"},
        ]
    )
    clock.now += 10
    timed.transition_items(["c1", "c2"], ItemStatus.SUBMITTED, fields={"shard": "s1", "batch_id": "b1"})
    clock.now += 10
    timed.transition_items(["c1"], ItemStatus.FAILED, fields={"error_code": "rate_limit_exceeded"})
    timed.transition_items(["c2"], ItemStatus.SUCCEEDED, fields={"c2pa_state": "Trusted"})
    t = clock.now

    def ids(**filters: Any) -> list[str]:
        return [r.custom_id for r in timed.items(**filters)]

    assert ids() == ["c1", "c2", "c3", "d1"]  # custom_id order, not insertion order
    assert ids(run_id="r1") == ["c1", "c3"]
    assert ids(job="other") == ["d1"]
    assert ids(statuses=["pending"]) == ["c3", "d1"]
    assert ids(statuses=[ItemStatus.FAILED, ItemStatus.SUCCEEDED]) == ["c1", "c2"]
    assert ids(statuses=[]) == []
    assert ids(shard="s1") == ["c1", "c2"]
    assert ids(batch_id="b1", run_id="r2") == ["c2"]
    assert ids(error_codes=["rate_limit_exceeded"]) == ["c1"]
    assert ids(error_codes=[]) == []
    assert ids(c2pa_states=["Trusted", "Invalid"]) == ["c2"]
    assert ids(since=t) == ["c1", "c2"]
    assert ids(since=t - 10, until=t) == []
    assert ids(until=t) == ["c3", "d1"]
    assert ids(run_id="r1", statuses=["pending", "failed"], shard="s1") == ["c1"]
    assert ids(run_id="nope") == []
    assert ids(key="k1") == ["c1", "d1"]  # one item key, in every job
    assert ids(key="k1", job="other") == ["d1"]
    assert ids(key="k1", job="job", statuses=["failed"]) == ["c1"]
    assert ids(key="k1", run_id="r2") == ["d1"]
    assert ids(key="nope") == []


def test_items_stream_in_pages_and_latest_only(ledger: Ledger) -> None:
    ledger.insert_items([_row(f"c{i:05d}", f"k{i}") for i in range(2500)])
    ledger.insert_items([_row("z-2", "k1", attempt=2)])
    assert sum(1 for _ in ledger.items(job="job")) == 2501
    latest = {r.item_key: r.attempt for r in ledger.items(job="job", latest_only=True)}
    assert len(latest) == 2500 and latest["k1"] == 2
    assert [(r.custom_id, r.attempt) for r in ledger.items(job="job", key="k1")] == [("c00001", 1), ("z-2", 2)]
    assert [r.custom_id for r in ledger.items(job="job", key="k1", latest_only=True)] == ["z-2"]


def test_latest_only_counts_attempts_outside_the_other_filters(ledger: Ledger) -> None:
    ledger.insert_items([_row("a1", "k1", run_id="r1"), _row("a2", "k2", run_id="r1")])
    ledger.insert_items([_row("b1", "k1", attempt=2, run_id="r2", previous_custom_id="a1")])
    assert [r.custom_id for r in ledger.items(run_id="r1", latest_only=True)] == ["a2"]
    assert [r.custom_id for r in ledger.items(run_id="r1")] == ["a1", "a2"]
    latest = ledger.latest_attempts("job", ["k1", "k2", "k9"])
    assert {k: r.custom_id for k, r in latest.items()} == {"k1": "b1", "k2": "a2"}
    assert ledger.latest_attempts("other", ["k1"]) == {}


def test_items_is_lazy_and_sees_writes_between_pages(ledger: Ledger) -> None:
    ledger.insert_items([_row(f"c{i:04d}", f"k{i}") for i in range(1500)])
    rows = ledger.items(statuses=["pending"])
    ledger.insert_items([_row("c9999", "k9999")])  # before the first row is read: included
    first = next(rows)
    assert first.custom_id == "c0000"
    ledger.transition_items([f"c{i:04d}" for i in range(1000, 1500)], ItemStatus.SUBMITTED)  # on the next page
    assert sum(1 for _ in rows) == 999 + 1  # the rest of the first page, then c9999


def test_item_counts_hashes_and_costs(ledger: Ledger) -> None:
    ledger.insert_items([_row("c1", "k1"), _row("c2", "k2"), _row("c3", "k3", run_id="r2")])
    ledger.insert_items([{**_row("d1", "k1"), "job": "other"}])
    ledger.transition_items(["c1", "c2", "c3"], ItemStatus.SUBMITTED)
    ledger.transition_items(["c1"], ItemStatus.SUCCEEDED, fields={"cost_usd": 0.25})
    ledger.transition_items(["c3"], ItemStatus.SUCCEEDED, fields={"cost_usd": 0.5})
    ledger.transition_items(["c2"], ItemStatus.FAILED, fields={"cost_usd": 0.125})
    assert ledger.count_items() == {"failed": 1, "pending": 1, "succeeded": 2}
    assert ledger.count_items(run_id="r2") == {"succeeded": 1}
    assert ledger.count_items(job="other") == {"pending": 1}
    assert ledger.count_items(run_id="r2", job="other") == {"succeeded": 1}  # run_id wins
    assert ledger.count_items(run_id="none") == {}
    assert sorted(ledger.succeeded_hashes("job")) == [("k1", "h-k1"), ("k3", "h-k3")]
    assert list(ledger.succeeded_hashes("other")) == []
    assert ledger.cost_usd() == pytest.approx(0.875)
    assert ledger.cost_usd(run_id="r1") == pytest.approx(0.375)
    assert ledger.cost_usd(run_id="none") == 0.0 and isinstance(ledger.cost_usd(run_id="none"), float)
    assert ledger.cost_usd(job="job") == pytest.approx(0.875) and ledger.cost_usd(job="other") == 0.0
    assert ledger.cost_usd(run_id="r2", job="other") == pytest.approx(0.5)  # run_id wins


def test_error_counts_group_by_code_and_status_with_an_example(ledger: Ledger) -> None:
    ledger.insert_items([_row(f"c{i}", f"k{i}") for i in range(6)] + [_row("c9", "k9", run_id="r2")])
    ledger.insert_items([{**_row("o1", "k1", run_id="r3"), "job": "other"}])
    ledger.transition_items([f"c{i}" for i in range(6)] + ["c9", "o1"], ItemStatus.SUBMITTED)
    blocked = {"error_code": "moderation_blocked", "error_message": "no", "retryable": 0}
    ledger.transition_items(["c1", "c3", "c9", "o1"], ItemStatus.FAILED, fields=blocked)
    ledger.transition_items(["c2"], ItemStatus.FAILED, fields={"error_code": "server_error", "retryable": 1})
    ledger.transition_items(["c4"], ItemStatus.EXPIRED, fields={"error_code": "batch_expired", "retryable": 1})
    ledger.transition_items(["c5"], ItemStatus.MISSING)  # no code: counted under its status
    ledger.transition_items(["c0"], ItemStatus.SUCCEEDED)
    failures = ["failed", "expired", "missing"]
    assert ledger.error_counts(failures, run_id="r1") == [
        {"code": "moderation_blocked", "status": "failed", "count": 2, "retryable": False, "example_custom_id": "c1"},
        {"code": "batch_expired", "status": "expired", "count": 1, "retryable": True, "example_custom_id": "c4"},
        {"code": "missing", "status": "missing", "count": 1, "retryable": False, "example_custom_id": "c5"},
        {"code": "server_error", "status": "failed", "count": 1, "retryable": True, "example_custom_id": "c2"},
    ]
    assert [(g["code"], g["count"]) for g in ledger.error_counts(["failed"], job="job")] == [
        ("moderation_blocked", 3),
        ("server_error", 1),
    ]
    assert ledger.error_counts(["failed"], job="other") == [
        {"code": "moderation_blocked", "status": "failed", "count": 1, "retryable": False, "example_custom_id": "o1"}
    ]
    assert ledger.error_counts(["failed"], run_id="r2", job="other")[0]["example_custom_id"] == "c9"  # run_id wins
    assert ledger.error_counts([], run_id="r1") == [] and ledger.error_counts(["cancelled"]) == []
    # a new attempt of k1 that succeeded: its failed first attempt no longer counts among the latest attempts
    ledger.insert_items([_row("c1b", "k1", attempt=2)])
    ledger.transition_items(["c1b"], ItemStatus.SUBMITTED)
    ledger.transition_items(["c1b"], ItemStatus.SUCCEEDED)
    assert ledger.error_counts(["failed"], job="job", latest_only=True)[0]["count"] == 2
    assert ledger.error_counts(["failed"], job="job")[0]["count"] == 3


def _mixed_ledger(ledger: Ledger) -> None:
    """Two jobs, retried items, every failure kind, costs, JSON columns, images in a folder and in a bucket."""
    ledger.insert_items([_row(f"c{i}", f"k{i}", body_json='{"prompt":"p' + str(i) + '"}') for i in range(8)])
    ledger.insert_items([{**_row("o1", "k1", run_id="r3"), "job": "other"}, _row("c8", "k8", run_id="r2")])
    ledger.transition_items([f"c{i}" for i in range(7)] + ["o1"], ItemStatus.SUBMITTED)
    image = {"output_uri": "file:///srv/out/k0/0.png", "sha256": "ab", "bytes": 12, "format": "png", "width": 2,
             "height": 2, "c2pa_state": "Trusted", "c2pa_json": '{"issuer":"Example CA","failure_codes":[]}',
             "usage_json": '{"input_tokens":60,"output_tokens":4160}', "cost_usd": 0.1 + 0.2}  # fmt: skip
    ledger.transition_items(["c0"], ItemStatus.SUCCEEDED, fields=image)
    ledger.transition_items(["c6"], ItemStatus.SUCCEEDED, fields={**image, "output_uri": "s3://b/k6.png"})
    blocked = {"error_code": "moderation_blocked", "error_message": 'no\n"quoted"', "retryable": 0}
    ledger.transition_items(["c1", "c3", "o1"], ItemStatus.FAILED, fields={**blocked, "cost_usd": 1e-05})
    ledger.transition_items(["c2"], ItemStatus.FAILED, fields={"error_code": "server_error", "retryable": 1})
    ledger.transition_items(["c4"], ItemStatus.EXPIRED, fields={"error_code": "batch_expired", "retryable": 1})
    ledger.transition_items(["c5"], ItemStatus.MISSING)  # no code: counted under its status
    ledger.insert_items([_row("c1b", "k1", attempt=2, previous_custom_id="c1", run_id="r2")])  # k1 again
    ledger.transition_items(["c1b"], ItemStatus.SUBMITTED)
    ledger.transition_items(["c1b"], ItemStatus.SUCCEEDED, fields={"cost_usd": 0.04})


def test_item_summary_is_the_counts_cost_and_latest_errors_in_one(ledger: Ledger) -> None:
    _mixed_ledger(ledger)
    failures = ["failed", "expired", "cancelled", "missing", "invalid"]
    for job in (None, "job", "other", "none"):
        summary = ledger.item_summary(failures, job=job)
        assert summary.items == ledger.count_items(job=job)
        assert summary.current == ledger.count_items(job=job, latest_only=True)
        assert summary.cost_usd == pytest.approx(ledger.cost_usd(job=job)) and isinstance(summary.cost_usd, float)
        assert summary.errors == ledger.error_counts(failures, job=job, latest_only=True)
    summary = ledger.item_summary(failures, job="job")
    assert summary.items == {"expired": 1, "failed": 3, "missing": 1, "pending": 2, "succeeded": 3}
    assert summary.current == {"expired": 1, "failed": 2, "missing": 1, "pending": 2, "succeeded": 3}
    assert summary.cost_usd == pytest.approx(0.6 + 0.04 + 2e-05)
    assert [(g["code"], g["count"], g["example_custom_id"]) for g in summary.errors] == [
        ("batch_expired", 1, "c4"), ("missing", 1, "c5"), ("moderation_blocked", 1, "c3"), ("server_error", 1, "c2"),
    ]  # fmt: skip
    assert ledger.item_summary([], job="job").errors == []


def test_item_summary_takes_an_error_groups_example_and_retryable_from_latest_attempts_only(ledger: Ledger) -> None:
    """A superseded attempt in the same error group as its item's latest attempt counts among every attempt, but
    lends the group neither its (smaller) custom_id as the example nor its ``retryable``; a third attempt supersedes
    both earlier ones."""
    ledger.insert_items([_row("a1", "k1"), _row("b1", "k2")])
    ledger.transition_items(["a1", "b1"], ItemStatus.SUBMITTED)
    ledger.transition_items(["a1", "b1"], ItemStatus.FAILED, fields={"error_code": "server_error", "retryable": 1})
    ledger.insert_items([_row("a2", "k1", attempt=2, previous_custom_id="a1", run_id="r2")])
    ledger.transition_items(["a2"], ItemStatus.SUBMITTED)
    ledger.transition_items(["a2"], ItemStatus.FAILED, fields={"error_code": "server_error", "retryable": 0})
    summary = ledger.item_summary(["failed"], job="job")
    assert summary.items == {"failed": 3} and summary.current == {"failed": 2}
    assert summary.errors == ledger.error_counts(["failed"], job="job", latest_only=True)
    assert [(g["count"], g["retryable"], g["example_custom_id"]) for g in summary.errors] == [(2, True, "a2")]
    ledger.transition_items(["b1"], ItemStatus.SUPERSEDED)
    ledger.insert_items([_row("b2", "k2", attempt=2, previous_custom_id="b1", run_id="r2")])
    ledger.insert_items([_row("a3", "k1", attempt=3, previous_custom_id="a2", run_id="r3")])
    summary = ledger.item_summary(["failed"], job="job")
    assert summary.items == {"failed": 2, "pending": 2, "superseded": 1}
    assert summary.current == {"pending": 2} == ledger.count_items(job="job", latest_only=True)
    assert summary.errors == [] == ledger.error_counts(["failed"], job="job", latest_only=True)
    assert ledger.item_summary(["failed"], job="other") == ledger.item_summary(["failed"], job="none")


def test_item_summary_matches_the_separate_counts_on_a_ledger_of_many_retries(ledger: Ledger) -> None:
    """A seeded random ledger: two jobs of 60 keys, each key with 1-4 attempts in any status (an earlier attempt
    mostly failed, expired, missing or superseded), random error codes, retryable flags and costs. The one-pass
    summary equals what the separate queries (count_items, cost_usd, error_counts) say, for every job and error set."""
    rng = random.Random(20261130)
    ends = [ItemStatus.FAILED, ItemStatus.EXPIRED, ItemStatus.MISSING, ItemStatus.SUPERSEDED]
    last = [ItemStatus.PENDING, ItemStatus.SUBMITTED, ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.EXPIRED]
    last += [ItemStatus.MISSING, ItemStatus.CANCELLED]
    codes = [None, "server_error", "moderation_blocked", "rate_limit_exceeded"]
    for attempt in range(1, 5):
        rows = [
            {**_row(f"{job}-{key}-a{attempt}", f"k{key}", attempt=attempt, run_id=f"r{attempt}"), "job": job}
            for job in ("job", "other")
            for key in range(60)
            if attempt == 1 or rng.random() < 0.6
        ]
        ledger.insert_items(rows)
        for row in rows:
            final = rng.choice(last) if attempt == 4 or rng.random() < 0.4 else rng.choice(ends)
            custom_id = str(row["custom_id"])
            if final == ItemStatus.PENDING:
                continue
            ledger.transition_items([custom_id], ItemStatus.SUBMITTED)
            if final == ItemStatus.SUBMITTED:
                continue
            code = rng.choice(codes) if final in (ItemStatus.FAILED, ItemStatus.EXPIRED) else None
            fields = {"error_code": code, "retryable": rng.choice([0, 1, None]), "cost_usd": rng.choice([None, 0.04])}
            if final == ItemStatus.SUPERSEDED:
                ledger.transition_items([custom_id], ItemStatus.FAILED, fields=fields)
                ledger.transition_items([custom_id], ItemStatus.SUPERSEDED)
            else:
                ledger.transition_items([custom_id], final, fields=fields)
    failures = ["failed", "expired", "cancelled", "missing", "invalid"]
    assert ledger.count_items(job="job") != ledger.count_items(job="job", latest_only=True)  # retries happened
    for errors in (failures, ["failed"], []):
        for job in (None, "job", "other"):
            summary = ledger.item_summary(errors, job=job)
            assert summary.items == ledger.count_items(job=job)
            assert summary.current == ledger.count_items(job=job, latest_only=True)
            assert summary.cost_usd == pytest.approx(ledger.cost_usd(job=job))
            assert summary.errors == ledger.error_counts(errors, job=job, latest_only=True), (errors, job)


def test_export_lines_are_the_export_records_of_the_rows_in_order(ledger: Ledger) -> None:
    _mixed_ledger(ledger)
    ledger.insert_items([_row(f"z{i:05d}", f"z{i}") for i in range(2500)])  # several pages
    for run_id, latest in ((None, True), (None, False), ("r1", True), ("r1", False), ("r2", True), ("none", True)):
        rows = list(ledger.items(run_id=run_id, latest_only=latest))
        expected = "".join(orjson.dumps(row.export_record()).decode() + "\n" for row in rows)  # custom_id order
        chunks = list(ledger.export_jsonl(run_id=run_id, latest_only=latest))
        # the same lines; their order is the store's (SQLite: insertion, the others: custom_id)
        assert sorted("".join(chunks).split("\n")) == sorted(expected.split("\n")), (run_id, latest)
        assert all(chunk.endswith("\n") for chunk in chunks)
    lines = "".join(ledger.export_jsonl(latest_only=False)).splitlines()
    records = sorted((orjson.loads(line) for line in lines), key=lambda r: str(r["custom_id"]))
    assert [r["custom_id"] for r in records[:3]] == ["c0", "c1", "c1b"]
    assert records[0]["output_path"] == "/srv/out/k0/0.png" and records[0]["cost_usd"] == 0.1 + 0.2
    assert records[0]["prompt"] == "p0" and records[0]["c2pa"] == {"issuer": "Example CA", "failure_codes": []}


def test_succeeded_with_names_the_keys_whose_latest_success_has_the_same_request(ledger: Ledger) -> None:
    ledger.insert_items([_row("a1", "k1"), _row("a2", "k2"), _row("a3", "k3"), _row("a4", "k4"), _row("a5", "k5")])
    ledger.insert_items([{**_row("o1", "k1"), "job": "other"}])
    ledger.transition_items(["a1", "a2", "a3", "a4", "o1"], ItemStatus.SUBMITTED)
    ledger.transition_items(["a1", "a2", "a3", "o1"], ItemStatus.SUCCEEDED)
    ledger.transition_items(["a4"], ItemStatus.FAILED)
    # k2 succeeded with h-k2, then a later attempt with another request succeeded: that one speaks now
    ledger.insert_items([{**_row("b2", "k2", attempt=2, previous_custom_id="a2"), "request_hash": "h-new"}])
    ledger.transition_items(["b2"], ItemStatus.SUBMITTED)
    ledger.transition_items(["b2"], ItemStatus.SUCCEEDED)
    # k3's later attempt has not succeeded (yet): its latest success is still attempt 1
    ledger.insert_items([{**_row("b3", "k3", attempt=2, previous_custom_id="a3"), "request_hash": "h-other"}])
    pairs = [("k1", "h-k1"), ("k2", "h-k2"), ("k3", "h-k3"), ("k4", "h-k4"), ("k5", "h-k5"), ("k9", "h-k9")]
    assert ledger.succeeded_with("job", pairs) == {"k1", "k3"}
    assert ledger.succeeded_with("job", [("k2", "h-new"), ("k1", "changed")]) == {"k2"}
    assert ledger.succeeded_with("other", [("k1", "h-k1"), ("k2", "h-k2")]) == {"k1"}
    assert ledger.succeeded_with("job", []) == set()
    assert ledger.succeeded_with("nope", pairs) == set()


def test_succeeded_with_by_source_hash_compares_what_the_latest_success_was_built_from(ledger: Ledger) -> None:
    """``by="source_hash"``: the same rule over the ``source_hash`` column (what the row was built from). A row
    without one (written by an older batchpipe, or by a mode that keeps none) never matches; ``request_hash`` is
    not consulted, and another column name is refused."""
    ledger.insert_items([{**_row("a1", "k1"), "source_hash": "s-k1"}, {**_row("a2", "k2"), "source_hash": "s-k2"}])
    ledger.insert_items([_row("a3", "k3"), {**_row("a4", "k4"), "source_hash": "s-k4"}])
    ledger.transition_items(["a1", "a2", "a3", "a4"], ItemStatus.SUBMITTED)
    ledger.transition_items(["a1", "a2", "a3"], ItemStatus.SUCCEEDED)
    # k2 built again from another row, not yet collected: its latest success is still attempt 1's
    ledger.insert_items([{**_row("b2", "k2", attempt=2, previous_custom_id="a2"), "source_hash": "s-new"}])
    pairs = [("k1", "s-k1"), ("k2", "s-k2"), ("k3", "s-k3"), ("k4", "s-k4"), ("k9", "s-k9")]
    assert ledger.succeeded_with("job", pairs, by="source_hash") == {"k1", "k2"}
    assert ledger.succeeded_with("job", [("k1", "h-k1"), ("k3", "h-k3")], by="source_hash") == set()
    assert ledger.succeeded_with("job", [("k1", "s-k1")], by="request_hash") == set()
    assert ledger.succeeded_with("job", [("k1", "h-k1")]) == {"k1"}  # the default: the request
    assert next(r for r in ledger.items(job="job") if r.custom_id == "a1").source_hash == "s-k1"
    with pytest.raises(ValueError, match="not a hash column"):
        ledger.succeeded_with("job", pairs, by="status")  # type: ignore[arg-type]


def test_succeeded_with_reads_any_key_text_and_a_key_given_twice(ledger: Ledger) -> None:
    # keys travel to SQLite inside one JSON parameter: quotes, backslashes, non-BMP and line separators survive
    keys = ['say "hi"', "back\\slash", "\U0001f600 grin", "line\u2028sep", "caf\u00e9/bleu", "$[0]"]
    ledger.insert_items([_row(f"c{i}", key) for i, key in enumerate(keys)])
    ids = [f"c{i}" for i in range(len(keys))]
    ledger.transition_items(ids, ItemStatus.SUBMITTED)
    ledger.transition_items(ids, ItemStatus.SUCCEEDED)
    assert ledger.succeeded_with("job", [(key, f"h-{key}") for key in keys]) == set(keys)
    assert ledger.succeeded_with("job", [(key, "other") for key in keys]) == set()
    # a key given twice, once with its request and once with another: it is unchanged (one pair matches)
    assert ledger.succeeded_with("job", [(keys[0], "other"), (keys[0], f"h-{keys[0]}"), (keys[1], "x")]) == {keys[0]}


def test_succeeded_with_answers_for_more_keys_than_one_chunk(ledger: Ledger) -> None:
    # 4,500 keys: more than one statement's worth on every ledger (SQLite 2,000 pairs, PostgreSQL 500 keys)
    ledger.insert_items([_row(f"c{i:05d}", f"k{i}") for i in range(4500)])
    ids = [f"c{i:05d}" for i in range(0, 4500, 2)]
    ledger.transition_items(ids, ItemStatus.SUBMITTED)
    ledger.transition_items(ids, ItemStatus.SUCCEEDED)
    pairs = [(f"k{i}", f"h-k{i}") for i in range(4500)]
    assert ledger.succeeded_with("job", pairs) == {f"k{i}" for i in range(0, 4500, 2)}
    assert ledger.succeeded_with("job", pairs) == set().union(
        *(ledger.succeeded_with("job", pairs[start : start + 500]) for start in range(0, 4500, 500))
    )
    assert set(dict(ledger.succeeded_hashes("job")).items()) >= {(k, h) for k, h in pairs[::2]}


def test_count_items_latest_only_counts_each_items_highest_attempt(ledger: Ledger) -> None:
    ledger.insert_items([_row("a1", "k1", run_id="r1"), _row("a2", "k2", run_id="r1"), _row("a3", "k3")])
    ledger.transition_items(["a1", "a2"], ItemStatus.SUBMITTED)
    ledger.transition_items(["a1", "a2"], ItemStatus.FAILED)
    ledger.insert_items([_row("b1", "k1", attempt=2, run_id="r2", previous_custom_id="a1")])
    ledger.insert_items([{**_row("o1", "k1", run_id="r2"), "job": "other"}])
    assert ledger.count_items() == {"failed": 2, "pending": 3}
    assert ledger.count_items(latest_only=True) == {"failed": 1, "pending": 3}
    assert ledger.count_items(run_id="r1", latest_only=True) == {"failed": 1, "pending": 1}  # a1 is not latest
    assert ledger.count_items(job="job", latest_only=True) == {"failed": 1, "pending": 2}
    assert ledger.count_items(run_id="r2", latest_only=True) == {"pending": 2}
    latest = {}
    for row in ledger.items(latest_only=True):
        latest[row.status] = latest.get(row.status, 0) + 1
    assert ledger.count_items(latest_only=True) == latest  # the same rows items(latest_only=True) gives


def test_update_item_fields_never_changes_a_status(timed: Ledger, clock: Clock) -> None:
    timed.insert_items([_row("c1", "k1")])
    clock.now += 3
    timed.update_item_fields("c1", {"shard": "s9", "input_tokens_est": 42})
    row = timed.item("c1")
    assert row is not None and (row.shard, row.input_tokens_est, row.updated_at) == ("s9", 42, clock.now)
    with pytest.raises(LedgerError):
        timed.update_item_fields("c1", {"status": "succeeded", "shard": "s0"})
    after = timed.item("c1")
    assert after is not None and after.status == "pending" and after.shard == "s9"
    timed.update_item_fields("ghost", {"shard": "s1"})  # an unknown id changes nothing
    assert timed.item("ghost") is None and timed.events() == []


# -- transactions ---------------------------------------------------------------------------------------------
def test_transaction_rolls_back_everything(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.insert_items([_row("c1", "k1")])
        raise RuntimeError("crash")
    assert ledger.count_items() == {}


def test_transaction_rolls_back_every_kind_of_write(timed: Ledger, clock: Clock) -> None:
    run_id, _ = timed.open_run("job", "h", "emulator")
    timed.insert_items([_row("c1", "k1", run_id=run_id), _row("c2", "k2", run_id=run_id)])
    timed.insert_shard(_shard("s1", run_id=run_id))
    timed.record_batch(_batch("b1"), shard="s1", run_id=run_id, model="m")
    timed.record_file({"id": "file-1", "purpose": "batch", "created_at": 1}, role="input", sha256="aa")
    before = {**_state(timed), "run": timed.run_info(run_id), "open": timed.open_run("job", "h", "emulator")}
    clock.now += 100
    with pytest.raises(RuntimeError, match="crash"), timed.transaction():
        timed.insert_items([_row("c3", "k3", run_id=run_id)])
        timed.transition_items(["c1", "c2"], ItemStatus.SUBMITTED, fields={"batch_id": "b1"})
        timed.update_item_fields("c1", {"shard": "s1"})
        with timed.transaction():  # an inner block joins the outer one
            timed.transition_shard("s1", "uploading", fields={"intent_at": 5.0}, note="n")
            timed.insert_shard(_shard("s2", run_id=run_id))
        timed.record_batch(_batch("b2"), shard="s2", run_id=run_id, model="m")
        timed.update_batch(_batch("b1", "completed", completed_at=150, output_file_id="file-out"))
        timed.set_batch_progress("b1", output_offset=99, output_done=1)
        timed.record_file({"id": "file-2", "purpose": "batch"}, role="output")
        timed.mark_file_deleted("file-1")
        timed.finish_run(run_id, "finished")
        timed.open_run("other-job", "h", "emulator")
        raise RuntimeError("crash")
    assert {**_state(timed), "run": timed.run_info(run_id), "open": timed.open_run("job", "h", "emulator")} == before
    # the ledger is usable afterwards
    timed.insert_items([_row("c3", "k3", run_id=run_id)])
    assert timed.count_items() == {"pending": 3}


def test_an_error_from_an_inner_block_rolls_back_the_outer_one(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="inner"), ledger.transaction():
        ledger.insert_items([_row("c1", "k1")])
        with ledger.transaction():
            ledger.insert_items([_row("c2", "k2")])
            raise ValueError("inner")
    assert ledger.count_items() == {} and ledger.events() == []


def test_nested_transactions_commit_at_the_outermost_block(ledger: Ledger) -> None:
    with ledger.transaction():
        ledger.insert_items([_row("c1", "k1")])
        with ledger.transaction():
            ledger.insert_items([_row("c2", "k2")])
        ledger.transition_items(["c1", "c2"], ItemStatus.SUBMITTED)
    assert ledger.count_items() == {"submitted": 2}


def test_other_threads_wait_for_an_open_transaction(ledger: Ledger) -> None:
    seen: list[dict[str, int]] = []
    opened = threading.Event()

    def reader() -> None:
        opened.wait()
        seen.append(ledger.count_items())

    thread = threading.Thread(target=reader)
    thread.start()
    with ledger.transaction():
        ledger.insert_items([_row("c1", "k1")])
        opened.set()
        time.sleep(0.2)  # the reader is blocked meanwhile
        ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    thread.join()
    assert seen == [{"submitted": 1}]  # never the half-done state


# -- runs -----------------------------------------------------------------------------------------------------
def test_open_run_resumes_until_finished(ledger: Ledger) -> None:
    run_id, resumed = ledger.open_run("job", "h", "emulator")
    assert not resumed
    assert ledger.open_run("job", "h", "emulator") == (run_id, True)
    ledger.finish_run(run_id, "finished")
    other, resumed = ledger.open_run("job", "h", "emulator")
    assert other != run_id and not resumed


def test_open_runs_lists_the_built_running_runs_oldest_first(timed: Ledger, clock: Clock) -> None:
    first, _ = timed.open_run("a", "h", "emulator")
    clock.now += 1
    second, _ = timed.open_run("b", "h", "emulator")
    clock.now += 1
    unbuilt, _ = timed.open_run("c", "h", "emulator")
    assert timed.open_runs() == []  # not built yet: nothing for a worker to join
    timed.finish_build(second, [])
    timed.finish_build(first, [])
    assert timed.open_runs() == [first, second]
    timed.finish_run(first, "finished")
    assert timed.open_runs() == [second]
    assert unbuilt not in timed.open_runs()


def test_runs_are_named_and_remembered(timed: Ledger, clock: Clock) -> None:
    start = clock.now
    first, _ = timed.open_run("job", "h1", "emulator", output_dir="/out", trust="emulator", spec_path="/j.toml")
    assert first == "job-20231114T221320"
    info = timed.run_info(first)
    assert info == {
        "run_id": first,
        "job": "job",
        "spec_hash": "h1",
        "api": "emulator",
        "output_dir": "/out",
        "trust": "emulator",
        "spec_path": "/j.toml",
        "status": "running",
        "started_at": clock.now,
        "finished_at": None,
        "built_at": None,
    }
    timed.finish_run(first, "stopped")
    clock.now += 0.5
    second, resumed = timed.open_run("job", "h2", "openai")  # same second: a suffix keeps ids apart
    assert second == "job-20231114T221320-2" and not resumed
    clock.now += 1
    other, _ = timed.open_run("other", "h3", "openai")
    stopped = timed.run_info(first)
    assert stopped is not None and stopped["status"] == "stopped" and stopped["finished_at"] == start
    latest = timed.latest_run()
    assert latest is not None and latest["run_id"] == other
    latest_job = timed.latest_run("job")
    assert latest_job is not None and latest_job["run_id"] == second
    assert timed.latest_run("none") is None and timed.run_info("none") is None
    timed.finish_run(first, "finished")  # a run that is not running stays as it is
    again = timed.run_info(first)
    assert again is not None and again["status"] == "stopped"
    assert [(e["entity_id"], e["from_status"], e["to_status"]) for e in timed.events(entity="run")] == [
        (first, None, "running"),
        (first, "running", "stopped"),
        (second, None, "running"),
        (other, None, "running"),
        (first, "running", "finished"),
    ]


def test_resuming_a_run_changes_nothing(timed: Ledger, clock: Clock) -> None:
    run_id, _ = timed.open_run("job", "h", "emulator")
    clock.now += 10
    assert timed.open_run("job", "h2", "openai") == (run_id, True)
    latest = timed.latest_run("job")
    assert latest is not None and latest["spec_hash"] == "h"  # resuming changes nothing


# -- shards ---------------------------------------------------------------------------------------------------
def test_shard_intents_are_guarded(ledger: Ledger) -> None:
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


def test_a_forbidden_shard_transition_changes_nothing(timed: Ledger, clock: Clock) -> None:
    timed.insert_shard(_shard("s1"))
    timed.transition_shard("s1", "uploading", fields={"intent_at": 1.0}, note="why")
    before = _state(timed)
    clock.now += 60
    for to_status in ("uploading", "created", "done", "creating", "bogus"):  # uploading may go back to built
        with pytest.raises(TransitionError):
            timed.transition_shard("s1", to_status, fields={"input_file_id": "file-x"}, note="no")
    assert _state(timed) == before
    with pytest.raises(LedgerError):
        timed.transition_shard("ghost", "uploading")


def test_shard_transitions_set_fields_and_notes_and_log_events(timed: Ledger, clock: Clock) -> None:
    timed.insert_shard(_shard("s1"))
    clock.now += 1
    timed.transition_shard("s1", "uploading", fields={"intent_at": 7}, note="upload 1")
    timed.transition_shard("s1", "indeterminate", note="timeout")
    timed.transition_shard("s1", "uploaded", fields={"input_file_id": "file-1"})  # no note: cleared
    shard = timed.shard("s1")
    assert shard is not None
    assert (shard.status, shard.intent_at, shard.input_file_id, shard.note) == ("uploaded", 7.0, "file-1", None)
    assert (shard.created_at, shard.updated_at) == (clock.now - 1, clock.now)
    assert [(e["from_status"], e["to_status"], e["detail"]) for e in timed.events(entity="shard", entity_id="s1")] == [
        (None, "built", None),
        ("built", "uploading", "upload 1"),
        ("uploading", "indeterminate", "timeout"),
        ("indeterminate", "uploaded", None),
    ]


def test_shards_are_unique_ordered_and_filtered(timed: Ledger, clock: Clock) -> None:
    timed.insert_shard({**_shard("s2"), "status": "done"})  # a given status is ignored: new shards are built
    clock.now += 1
    timed.insert_shard(_shard("s3", run_id="r2"))
    timed.insert_shard(_shard("s1", run_id="r2"))
    with pytest.raises(LedgerError):
        timed.insert_shard(_shard("s1"))
    with pytest.raises(LedgerError):
        timed.insert_shard({k: v for k, v in _shard("s4").items() if k != "path"})
    timed.transition_shard("s3", "uploading")
    assert [s.name for s in timed.shards()] == ["s2", "s1", "s3"]  # by created_at, then name
    assert [s.name for s in timed.shards(run_id="r2")] == ["s1", "s3"]
    assert [s.name for s in timed.shards(statuses=["built"])] == ["s2", "s1"]
    assert [s.name for s in timed.shards(run_id="r1", statuses=["built", "uploading"])] == ["s2"]
    assert timed.shards(statuses=[]) == []
    assert timed.shard("s4") is None
    assert len(timed.events(entity="shard")) == 4


# -- batches --------------------------------------------------------------------------------------------------
def test_batch_records_are_idempotent_and_changes_are_logged(ledger: Ledger) -> None:
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
    assert ledger.batches()[0].created_at == 100


def test_batch_rows_keep_the_services_view_and_collection_progress(timed: Ledger, clock: Clock) -> None:
    assert timed.record_batch(
        {"id": "b1", "status": "validating", "input_file_id": "f1"}, shard="s1", run_id="r1", model="m"
    )
    row = timed.batch("b1")
    assert row == BatchRow(
        batch_id="b1",
        shard="s1",
        run_id="r1",
        model="m",
        status="validating",
        input_file_id="f1",
        output_file_id=None,
        error_file_id=None,
        request_counts_json=None,
        errors_json=None,
        created_at=clock.now,  # the service gave none: now
        ended_at=None,
        output_offset=0,
        error_offset=0,
        output_done=0,
        error_done=0,
        reconciled=0,
        updated_at=clock.now,
    )
    assert (
        timed.record_batch({"id": "b1", "status": "failed", "input_file_id": "f9"}, shard="x", run_id="x", model="x")
        is False
    )
    assert timed.batch("b1") == row  # a known batch is left as it is
    clock.now += 10
    counts = {"total": 2, "completed": 2, "failed": 0}
    previous = timed.update_batch(
        {"id": "b1", "status": "completed", "output_file_id": "out", "request_counts": counts, "completed_at": 111}
    )
    assert previous == "validating"
    later = {"id": "b1", "status": "completed", "errors": {"data": [{"code": "x"}]}, "expired_at": 222}
    assert timed.update_batch(later) is None
    done = timed.batch("b1")
    assert done is not None
    assert (done.status, done.ended_at, done.updated_at) == ("completed", 111.0, clock.now)  # first end kept
    assert done.output_file_id is None and done.request_counts_json == "null"  # as the service said last
    assert done.errors_json == '{"data":[{"code":"x"}]}'
    with pytest.raises(LedgerError):
        timed.update_batch({"id": "ghost", "status": "completed"})
    timed.set_batch_progress("b1", output_offset=1024, error_offset=7, output_done=1, error_done=1)
    progressed = timed.batch("b1")
    assert progressed is not None
    assert [getattr(progressed, k) for k in ("output_offset", "error_offset", "output_done", "error_done")] == [
        1024,
        7,
        1,
        1,
    ]
    for bad in ({}, {"status": "failed"}, {"output_offset": 1, "shard": "s2"}):
        with pytest.raises(LedgerError):
            timed.set_batch_progress("b1", **bad)
    timed.set_batch_progress("ghost", reconciled=1)  # an unknown batch changes nothing
    assert timed.batch("ghost") is None


#: Where each known batch status stands, by hand (FACTS §2.2): the statuses it may still reach.
_LATER: dict[str, set[str]] = {
    "validating": {"in_progress", "finalizing", "cancelling", "completed", "failed", "expired", "cancelled"},
    "in_progress": {"finalizing", "cancelling", "completed", "failed", "expired", "cancelled"},
    "finalizing": {"cancelling", "completed", "failed", "expired", "cancelled"},
    "cancelling": {"completed", "failed", "expired", "cancelled"},
    "completed": set(),
    "failed": set(),
    "expired": set(),
    "cancelled": set(),
}


def test_batch_statuses_only_move_forward(timed: Ledger, clock: Clock) -> None:
    assert set(_LATER) == {str(s) for s in BatchStatus}
    wrong: list[tuple[str, str, object]] = []
    for n, (stored, reported) in enumerate((a, b) for a in _LATER for b in _LATER):
        batch_id = f"b{n}"
        timed.record_batch(_batch(batch_id, stored), shard="s", run_id="r", model="m")
        before = timed.batch(batch_id)
        previous = timed.update_batch(_batch(batch_id, reported, output_file_id="file-out", completed_at=150))
        row = timed.batch(batch_id)
        assert row is not None and before is not None
        if reported in _LATER[stored]:
            ok = previous == stored and row.status == reported and row.output_file_id == "file-out"
        elif reported == stored:
            ok = previous is None and row.status == stored and row.output_file_id == "file-out"
        else:  # backwards or sideways: nothing stored
            ok = previous is None and row == before
        if not ok:
            wrong.append((stored, reported, previous))
    assert wrong == []


def test_a_stale_batch_status_changes_nothing_and_is_logged_once(timed: Ledger, clock: Clock) -> None:
    timed.record_batch(_batch("b1"), shard="s1", run_id="r1", model="m")
    done = _batch("b1", "completed", output_file_id="file-out", request_counts={"total": 2}, completed_at=150)
    assert timed.update_batch(done) == "validating"
    before = _state(timed)
    clock.now += 60
    lagging = _batch("b1", "in_progress", request_counts={"total": 2, "completed": 1}, errors={"data": []})
    with capture_logs() as logs:
        assert timed.update_batch(lagging) is None  # e.g. a list page or a CDN serving the older object
        assert timed.update_batch(lagging) is None
        assert timed.update_batch(_batch("b1", "failed", failed_at=160)) is None  # terminal never changes
        assert timed.update_batch(_batch("b1", "mystery_new_status")) is None  # nor to a status we do not know
    assert _state(timed) == before  # status, fields, ended_at, updated_at, events: as they were
    stale = [e for e in logs if e["event"] == "ledger.stale_batch_status"]
    assert [(e["batch_id"], e["stored"], e["reported"], e["log_level"]) for e in stale] == [
        ("b1", "completed", "in_progress", "warning"),  # once, though served twice
        ("b1", "completed", "failed", "warning"),
        ("b1", "completed", "mystery_new_status", "warning"),
    ]
    # the same status still brings newer fields (an output file id that appears after completed)
    assert timed.update_batch({**done, "error_file_id": "file-err"}) is None
    row = timed.batch("b1")
    assert row is not None and (row.status, row.error_file_id, row.updated_at) == (
        "completed",
        "file-err",
        clock.now,
    )
    assert len(timed.events(entity="batch")) == 2


def test_a_backwards_batch_status_inside_a_transaction_keeps_the_newer_one(ledger: Ledger) -> None:
    ledger.record_batch(_batch("b1", "finalizing"), shard="s1", run_id="r1", model="m")
    with ledger.transaction():
        assert ledger.update_batch(_batch("b1", "in_progress")) is None
        assert ledger.update_batch(_batch("b1", "cancelling")) == "finalizing"
        assert ledger.update_batch(_batch("b1", "finalizing")) is None
        assert ledger.update_batch(_batch("b1", "cancelled", cancelled_at=170)) == "cancelling"
    row = ledger.batch("b1")
    assert row is not None and (row.status, row.ended_at) == ("cancelled", 170.0)
    assert [(e["from_status"], e["to_status"]) for e in ledger.events(entity="batch")] == [
        (None, "finalizing"),
        ("finalizing", "cancelling"),
        ("cancelling", "cancelled"),
    ]


def test_an_unknown_batch_status_is_stored_unless_the_batch_ended(ledger: Ledger) -> None:
    ledger.record_batch(_batch("b1", "in_progress"), shard="s1", run_id="r1", model="m")
    assert ledger.update_batch(_batch("b1", "paused_for_review")) == "in_progress"  # a status the service added
    assert ledger.update_batch(_batch("b1", "paused_again")) == "paused_for_review"
    assert ledger.update_batch(_batch("b1", "in_progress")) == "paused_again"  # it cannot be placed: not terminal
    assert ledger.update_batch(_batch("b1", "paused_for_review")) == "in_progress"
    assert ledger.update_batch(_batch("b1", "completed", completed_at=150)) == "paused_for_review"
    assert ledger.update_batch(_batch("b1", "paused_for_review")) is None  # never after a terminal status
    row = ledger.batch("b1")
    assert row is not None and row.status == "completed"
    ledger.record_batch(_batch("b2", "brand_new"), shard="s2", run_id="r1", model="m")  # recorded as reported
    assert ledger.update_batch(_batch("b2", "validating")) == "brand_new"


def test_batches_are_ordered_and_filtered(ledger: Ledger) -> None:
    ledger.record_batch(_batch("b2", created_at=200), shard="s2", run_id="r1", model="m")
    ledger.record_batch(_batch("b1", created_at=100), shard="s1", run_id="r1", model="m")
    ledger.record_batch(_batch("b3", created_at=300), shard="s3", run_id="r2", model="m")
    assert [b.batch_id for b in ledger.batches()] == ["b1", "b2", "b3"]
    assert [b.batch_id for b in ledger.batches(run_id="r1")] == ["b1", "b2"]
    ledger.set_batch_progress("b1", reconciled=1)
    assert [b.batch_id for b in ledger.batches(unfinished=True)] == ["b2", "b3"]
    assert [b.batch_id for b in ledger.batches(run_id="r2", unfinished=True)] == ["b3"]
    copy = ledger.batches()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.status = "changed by the caller"  # type: ignore[misc]
    assert ledger.batches()[0].status == "validating"  # rows are values: a caller cannot change the ledger's


# -- files ----------------------------------------------------------------------------------------------------
def test_files_are_recorded_once_and_deleted_once(timed: Ledger, clock: Clock) -> None:
    obj = {"id": "file-1", "purpose": "batch", "filename": "a.jsonl", "bytes": 10, "created_at": 50, "expires_at": 99}
    timed.record_file(obj, role="input", sha256="aa")
    timed.record_file({**obj, "filename": "other"}, role="output", sha256="bb")  # known: left as it is
    timed.record_file({"id": "file-2"}, role="reference")
    assert sorted(timed.files(), key=lambda f: str(f["file_id"])) == [
        {
            "file_id": "file-1",
            "role": "input",
            "purpose": "batch",
            "filename": "a.jsonl",
            "bytes": 10,
            "sha256": "aa",
            "created_at": 50.0,
            "expires_at": 99.0,
            "deleted_at": None,
        },
        {
            "file_id": "file-2",
            "role": "reference",
            "purpose": "",
            "filename": None,
            "bytes": None,
            "sha256": None,
            "created_at": clock.now,
            "expires_at": None,
            "deleted_at": None,
        },
    ]
    timed.mark_file_deleted("file-1")
    first = clock.now
    clock.now += 5
    timed.mark_file_deleted("file-1")  # the first deletion time is kept
    timed.mark_file_deleted("ghost")
    assert [f["deleted_at"] for f in timed.files(file_ids=["file-1"])] == [first]
    assert [f["file_id"] for f in timed.files(deleted=True)] == ["file-1"]
    assert [f["file_id"] for f in timed.files(deleted=False)] == ["file-2"]
    assert [f["file_id"] for f in timed.files(role="reference")] == ["file-2"]
    assert timed.files(role="input", deleted=False) == []
    assert timed.files(file_ids=[]) == []
    assert timed.events() == []  # files are not status changes


def test_file_by_sha256_finds_the_newest_live_file(ledger: Ledger) -> None:
    ref = "reference"
    ledger.record_file({"id": "old", "created_at": 10, "expires_at": 1000}, role=ref, sha256="s")
    ledger.record_file({"id": "new", "created_at": 20, "expires_at": 1000}, role=ref, sha256="s")
    ledger.record_file({"id": "forever", "created_at": 5}, role=ref, sha256="t")
    ledger.record_file({"id": "input", "created_at": 30}, role="input", sha256="s")
    found = ledger.file_by_sha256("s", role=ref, not_expired_at=500)
    assert found is not None and found["file_id"] == "new"
    assert ledger.file_by_sha256("s", role=ref, not_expired_at=1000) is None  # expiring at that time is too soon
    forever = ledger.file_by_sha256("t", role=ref, not_expired_at=1e12)
    assert forever is not None and forever["file_id"] == "forever"
    ledger.mark_file_deleted("new")
    older = ledger.file_by_sha256("s", role=ref, not_expired_at=500)
    assert older is not None and older["file_id"] == "old"
    assert ledger.file_by_sha256("s", role="output", not_expired_at=0) is None
    assert ledger.file_by_sha256("zz", role=ref, not_expired_at=0) is None


# -- events ---------------------------------------------------------------------------------------------------
def test_events_are_an_ordered_append_only_log(timed: Ledger, clock: Clock) -> None:
    run_id, _ = timed.open_run("job", "h", "emulator")
    clock.now += 1
    timed.insert_shard(_shard("s1", run_id=run_id))
    timed.insert_items([_row("c1", "k1", run_id=run_id)])  # inserting items logs nothing
    clock.now += 1
    timed.record_batch(_batch("b1"), shard="s1", run_id=run_id, model="m")
    timed.transition_items(["c1"], ItemStatus.SUBMITTED)
    events = timed.events()
    assert [e["event_id"] for e in events] == sorted(e["event_id"] for e in events)
    assert len({e["event_id"] for e in events}) == 4
    assert [(e["entity"], e["entity_id"], e["to_status"], e["at"]) for e in events] == [
        ("run", run_id, "running", clock.now - 2),
        ("shard", "s1", "built", clock.now - 1),
        ("batch", "b1", "validating", clock.now),
        ("item", "c1", "submitted", clock.now),
    ]
    assert events[2]["detail"] == "s1"  # a new batch names its shard
    assert set(events[0]) == {"event_id", "at", "entity", "entity_id", "from_status", "to_status", "detail"}
    assert [e["entity"] for e in timed.events(entity="shard")] == ["shard"]
    assert timed.events(entity_id="b1") == [events[2]]
    assert timed.events(entity="run", entity_id="b1") == []


# -- claims (owner + lease) -------------------------------------------------------------------------------------
def test_of_two_workers_racing_for_a_key_exactly_one_wins(workers: tuple[Ledger, Ledger]) -> None:
    keys = [f"shard-{i:03d}" for i in range(100)]
    won: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def worker(name: str, ledger: Ledger) -> None:
        start.wait()
        for key in keys:
            if ledger.claim("shard", key, owner=name, lease_s=60):
                won[name].append(key)

    threads = [threading.Thread(target=worker, args=(name, ledger)) for name, ledger in zip("ab", workers, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won["a"] + won["b"]) == keys  # every key won, none twice
    for name, taken in won.items():
        for key in taken:
            holder = workers[0].claim_holder("shard", key)
            assert holder is not None and holder[0] == name


def test_a_claim_is_seen_by_every_worker_and_taken_over_when_its_lease_expires(
    workers: tuple[Ledger, Ledger], clock: Clock
) -> None:
    a, b = workers
    t0 = clock.now
    assert a.claim("shard", "s1", owner="worker-a", lease_s=30)
    assert b.claim_holder("shard", "s1") == ("worker-a", t0 + 30)  # the other connection sees it
    assert not b.claim("shard", "s1", owner="worker-b", lease_s=30)
    clock.now = t0 + 29.5
    assert not b.claim("shard", "s1", owner="worker-b", lease_s=30)
    assert a.claim_holder("shard", "s1") == ("worker-a", t0 + 30)  # a refused claim changes nothing
    clock.now = t0 + 30  # expired at its expiry time
    assert b.claim_holder("shard", "s1") is None
    assert b.claim("shard", "s1", owner="worker-b", lease_s=10)
    assert a.claim_holder("shard", "s1") == ("worker-b", t0 + 40)
    assert not a.claim("shard", "s1", owner="worker-a", lease_s=30)  # the old holder lost it


def test_the_holder_renews_its_claim(workers: tuple[Ledger, Ledger], clock: Clock) -> None:
    a, b = workers
    t0 = clock.now
    assert a.claim("output", "batch_1:output", owner="worker-a", lease_s=30)
    clock.now = t0 + 20
    assert a.claim("output", "batch_1:output", owner="worker-a", lease_s=30)  # renewed: now + 30
    assert b.claim_holder("output", "batch_1:output") == ("worker-a", t0 + 50)
    clock.now = t0 + 40  # past the first lease, within the renewed one
    assert not b.claim("output", "batch_1:output", owner="worker-b", lease_s=30)
    clock.now = t0 + 60
    assert a.claim("output", "batch_1:output", owner="worker-a", lease_s=5)  # its own expired claim: taken again
    assert b.claim_holder("output", "batch_1:output") == ("worker-a", t0 + 65)


def test_only_the_holder_releases_a_claim(workers: tuple[Ledger, Ledger], clock: Clock) -> None:
    a, b = workers
    assert a.claim("shard", "s1", owner="worker-a", lease_s=30)
    assert not b.release("shard", "s1", owner="worker-b")  # refused
    assert a.claim_holder("shard", "s1") == ("worker-a", clock.now + 30)
    assert not b.release("shard", "s2", owner="worker-a")  # no such claim
    assert b.release("shard", "s1", owner="worker-a")  # the holder, from either connection
    assert a.claim_holder("shard", "s1") is None
    assert not a.release("shard", "s1", owner="worker-a")  # already released
    assert b.claim("shard", "s1", owner="worker-b", lease_s=30)  # free at once, no wait for the lease
    clock.now += 31
    assert b.release("shard", "s1", owner="worker-b")  # its own claim, though expired


def test_claims_are_per_kind_and_key(ledger: Ledger) -> None:
    assert ledger.claim("shard", "x", owner="a", lease_s=60)
    assert ledger.claim("output", "x", owner="b", lease_s=60)  # another kind: another claim
    assert ledger.claim("shard", "y", owner="b", lease_s=60)
    assert ledger.claim("output", "batch_1:error", owner="c", lease_s=60)
    holders = {(k, key): ledger.claim_holder(k, key) for k, key in [("shard", "x"), ("output", "x"), ("shard", "y")]}
    assert {where: h[0] for where, h in holders.items() if h is not None} == {
        ("shard", "x"): "a",
        ("output", "x"): "b",
        ("shard", "y"): "b",
    }
    assert ledger.claim_holder("output", "batch_1:output") is None
    assert ledger.events() == []  # claims are not status changes


@pytest.mark.parametrize("lease_s", [0, -1.0, float("nan"), float("inf")])
def test_a_lease_must_be_a_positive_number_of_seconds(ledger: Ledger, lease_s: float) -> None:
    with pytest.raises(ValueError, match="lease"):
        ledger.claim("shard", "s1", owner="a", lease_s=lease_s)
    assert ledger.claim_holder("shard", "s1") is None


def test_a_claim_is_rolled_back_with_its_transaction(workers: tuple[Ledger, Ledger]) -> None:
    a, b = workers
    assert a.claim("shard", "kept", owner="a", lease_s=60)
    with pytest.raises(RuntimeError), a.transaction():
        assert a.claim("shard", "s1", owner="a", lease_s=60)
        assert a.release("shard", "kept", owner="a")
        raise RuntimeError("crash")
    assert b.claim_holder("shard", "s1") is None
    kept = b.claim_holder("shard", "kept")
    assert kept is not None and kept[0] == "a"
    with a.transaction():
        assert a.claim("shard", "s1", owner="a", lease_s=60)
    assert b.claim("shard", "s1", owner="b", lease_s=60) is False


# -- builds in chunks: finish_build / discard_build ---------------------------------------------------------------
def test_finish_build_records_shards_supersedes_earlier_attempts_and_marks_the_run_built(
    timed: Ledger, clock: Clock
) -> None:
    first, _ = timed.open_run("job", "h", "emulator")
    timed.insert_items([_row("c1", "k1", run_id=first), _row("c2", "k2", run_id=first), _row("c3", "k3", run_id=first)])
    assert timed.finish_build(first, [_shard("s1", run_id=first)]) == 0
    timed.transition_items(["c1", "c2", "c3"], ItemStatus.SUBMITTED, fields={"batch_id": "b1"})
    timed.transition_items(["c1"], ItemStatus.FAILED)
    timed.transition_items(["c2"], ItemStatus.SUCCEEDED)  # c3 stays submitted: a later attempt never hides it
    timed.finish_run(first, "finished")
    second, _ = timed.open_run("job", "h", "emulator")
    assert (timed.run_info(second) or {}).get("built_at") is None
    clock.now += 5
    timed.insert_items(
        [
            _row(f"{c}-2", k, attempt=2, run_id=second, previous_custom_id=c)
            for c, k in (("c1", "k1"), ("c2", "k2"), ("c3", "k3"))
        ]
    )
    assert [s.name for s in timed.shards(run_id=second)] == []  # shards appear only when the build finishes
    assert timed.finish_build(second, [_shard("s2", run_id=second), _shard("s3", run_id=second)]) == 2
    statuses = {cid: row.status for cid in ("c1", "c2", "c3") if (row := timed.item(cid)) is not None}
    assert statuses == {"c1": "superseded", "c2": "superseded", "c3": "submitted"}
    assert [e["to_status"] for e in timed.item_history("c1")][-1] == "superseded"
    assert (timed.run_info(second) or {}).get("built_at") == clock.now
    assert [(s.name, s.status) for s in timed.shards(run_id=second)] == [("s2", "built"), ("s3", "built")]
    before = _state(timed)
    for run_id in (second, "no-such-run"):
        with pytest.raises(LedgerError):
            timed.finish_build(run_id, [_shard("s9", run_id=run_id)])
    assert _state(timed) == before


def test_discard_build_removes_what_an_unfinished_build_wrote(timed: Ledger, clock: Clock) -> None:
    done, _ = timed.open_run("done-job", "h", "emulator")
    timed.insert_items([_row("d1", "kd", run_id=done)])
    timed.finish_build(done, [_shard("sd", run_id=done)])
    run_id, _ = timed.open_run("job", "h", "emulator")
    timed.insert_items([_row("c1", "k1", run_id=run_id), _row("c2", "k2", run_id=run_id, status="invalid")])
    timed.transition_items(["c1"], ItemStatus.FAILED)  # an event of the unfinished build
    assert timed.discard_build(run_id) == 2
    assert [r.custom_id for r in timed.items(run_id=run_id)] == [] and timed.item_history("c1") == []
    assert not [e for e in timed.events(entity="item") if e["entity_id"] in ("c1", "c2")]
    assert timed.discard_build(run_id) == 0  # idempotent
    # the same keys can be built again from the start, attempt 1
    timed.insert_items([_row("c1", "k1", run_id=run_id)])
    assert timed.finish_build(run_id, []) == 0
    before = _state(timed)
    for built in (done, run_id, "no-such-run"):
        with pytest.raises(LedgerError):
            timed.discard_build(built)
    assert _state(timed) == before
    assert [r.custom_id for r in timed.items(run_id=done)] == ["d1"]


def test_finish_build_is_all_or_nothing(timed: Ledger) -> None:
    run_id, _ = timed.open_run("job", "h", "emulator")
    timed.insert_items([_row("c1", "k1", run_id=run_id)])
    timed.insert_shard(_shard("taken", run_id="other"))
    before = {**_state(timed), "run": timed.run_info(run_id)}
    with pytest.raises(LedgerError):
        timed.finish_build(run_id, [_shard("s1", run_id=run_id), _shard("taken", run_id=run_id)])
    assert {**_state(timed), "run": timed.run_info(run_id)} == before


# -- the async face --------------------------------------------------------------------------------------------
def test_the_async_ledger_offers_each_ledger_method_it_names_with_the_same_parameters() -> None:
    protocol = _public_methods(Ledger)
    plumbing = ("call", "atomic", "submit")  # how calls reach the ledger thread, not ledger methods
    offered = {name: params for name, params in _public_methods(AsyncLedger).items() if name not in plumbing}
    assert len(offered) >= 25
    for name, params in offered.items():
        if name == "close":
            continue
        expected = protocol[name]
        if name == "items":  # the same filters, passed on as keywords
            assert [p[0] for p in params] == ["self", "filters"]
            continue
        if name == "insert_items":  # a sequence, not any iterable: it crosses to the ledger thread as it is
            assert [p[0] for p in params] == [p[0] for p in expected]
            continue
        assert params == expected, name


async def test_the_async_ledger_runs_every_call_off_the_event_loop_and_atomic_rolls_back(ledger: Ledger) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    db = AsyncLedger(ledger)
    try:
        run_id, resumed = await db.open_run("job", "h", "emulator")
        assert not resumed
        await db.insert_items([_row("c1", "k1", run_id=run_id)])

        def crash(inner: Ledger) -> None:
            seen.append(threading.get_ident())
            inner.transition_items(["c1"], ItemStatus.FAILED)
            raise RuntimeError("crash")

        with pytest.raises(RuntimeError, match="crash"):
            await db.atomic(crash)
        assert (await db.count_items(run_id=run_id)) == {"pending": 1}  # rolled back
        seen.append(await db.call(lambda _: threading.get_ident()))
        assert seen and loop_thread not in seen and len(set(seen)) == 1  # one ledger thread, never the loop's
    finally:
        db.close()
