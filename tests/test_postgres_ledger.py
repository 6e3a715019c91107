"""What only the PostgreSQL ledger does (the shared behaviour is in tests/contracts/test_ledger_contract.py): the
versioned schema, and races between separate connections (two workers), which the contract's one-handle thread
tests cannot show because one ledger object runs its calls one at a time."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import psycopg
import pytest
from ledger_reads import every_read_the_code_makes, populate

from batchpipe.adapters.postgres_ledger import MIGRATIONS, SCHEMA_VERSION, PostgresLedger
from batchpipe.domain.items import ItemStatus
from batchpipe.errors import LedgerError


@pytest.fixture
def url(fresh_postgres_url: Callable[[], str]) -> str:
    return fresh_postgres_url()


@pytest.fixture
def handles(url: str) -> Iterator[list[PostgresLedger]]:
    """Four workers' ledgers on one schema: four pools, four connections."""
    opened = [PostgresLedger(url) for _ in range(4)]
    yield opened
    for ledger in opened:
        ledger.close()


def _row(custom_id: str) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "job": "job",
        "item_key": custom_id,
        "attempt": 1,
        "run_id": "r1",
        "endpoint": "/v1/images/generations",
        "model": "gpt-image-2",
        "request_hash": "h",
        "body_json": "{}",
        "metadata_json": "{}",
        "source": "m.jsonl:1",
        "status": "pending",
    }


def _race(workers: list[Callable[[], object]]) -> list[object]:
    """Run each callable on its own thread, released together; their results in order."""
    results: list[object] = [None] * len(workers)
    start = threading.Barrier(len(workers))

    def run(index: int) -> None:
        start.wait()
        results[index] = workers[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_the_schema_is_versioned_and_made_once(url: str) -> None:
    first = PostgresLedger(url)
    second = PostgresLedger(url)  # opening again applies nothing
    first.close()
    second.close()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert rows == [(version,) for version, _ in MIGRATIONS] and rows[-1] == (SCHEMA_VERSION,)  # each step once


def test_workers_opening_a_new_database_together_make_the_schema_once(url: str) -> None:
    opened = _race([lambda: PostgresLedger(url) for _ in range(4)])
    for ledger in opened:
        assert isinstance(ledger, PostgresLedger)
        ledger.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (len(MIGRATIONS),)


def test_a_version_1_schema_gains_the_source_hash_column_and_keeps_its_rows(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:  # the schema as batchpipe made it before version 2
        conn.execute(MIGRATIONS[0][1].encode())
        conn.execute("CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        columns = ", ".join(_row("old"))
        values = ", ".join(["%s"] * len(_row("old")))
        conn.execute(
            f"INSERT INTO items ({columns}, created_at, updated_at) VALUES ({values}, 0, 0)",
            list(_row("old").values()),
        )
    ledger = PostgresLedger(url)
    try:
        assert [(r.custom_id, r.source_hash) for r in ledger.items()] == [("old", None)]
        ledger.insert_items([{**_row("new"), "source_hash": "s"}])
        ledger.transition_items(["old", "new"], ItemStatus.SUBMITTED)
        ledger.transition_items(["old", "new"], ItemStatus.SUCCEEDED)
        assert ledger.succeeded_with("job", [("old", "s"), ("new", "s")], by="source_hash") == {"new"}
    finally:
        ledger.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)


def test_a_version_2_schema_gains_the_ordered_indexes_and_keeps_its_rows(url: str) -> None:
    """Version 3 replaces the indexes that could not serve a page in order (see ``_V3``) on a ledger with rows."""
    with psycopg.connect(url, autocommit=True) as conn:  # the schema as batchpipe made it before version 3
        for _version, sql in MIGRATIONS[:2]:
            conn.execute(sql.encode())
        conn.execute("CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1, 0), (2, 0)")
        columns = ", ".join(_row("old"))
        values = ", ".join(["%s"] * len(_row("old")))
        row = {**_row("old"), "batch_id": "batch-1", "shard": "s1"}
        conn.execute(
            f"INSERT INTO items ({columns}, batch_id, shard, created_at, updated_at) VALUES ({values}, %s, %s, 0, 0)",
            list(row.values()),
        )

    def indexes() -> dict[str, str]:
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            ).fetchall()
        return {str(name): str(definition).split(" USING btree ", 1)[1] for name, definition in found}

    before = indexes()
    assert before["items_run_status"] == "(run_id, status)" and before["items_batch"] == "(batch_id)"
    ledger = PostgresLedger(url)
    try:
        assert [r.custom_id for r in ledger.items(batch_id="batch-1")] == ["old"]
        assert [r.custom_id for r in ledger.items(shard="s1")] == ["old"]
    finally:
        ledger.close()
    after = indexes()
    gone = {"items_run_status", "items_batch", "items_shard", "events_entity", "shards_run", "batches_run", "files_sha"}
    assert not gone & set(after)
    assert after["items_run"] == "(run_id, custom_id)"
    assert after["items_batch_custom"] == "(batch_id, custom_id)"
    assert after["items_shard_custom"] == "(shard, custom_id)"
    assert after["events_entity_order"] == "(entity_id, entity, event_id)"
    assert after["shards_run_order"] == "(run_id, created_at, name)"
    assert after["batches_run_order"] == "(run_id, created_at)" and after["batches_created"] == "(created_at)"
    assert after["runs_started"] == "(started_at)" and after["runs_job"] == "(job, started_at)"
    assert after["files_sha_created"] == "(sha256, role, created_at)"


def test_a_schema_newer_than_the_code_is_refused(url: str) -> None:
    PostgresLedger(url).close()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match="newer than this batchpipe"):
        PostgresLedger(url)


def test_an_unreachable_server_is_a_ledger_error_without_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(LedgerError, match="cannot open ledger") as caught:
        PostgresLedger("postgresql://me:hunter2@127.0.0.1:1/db", connect_timeout_s=2)
    assert "hunter2" not in str(caught.value)
    assert time.monotonic() - started < 10


def test_workers_racing_to_move_the_same_items_move_each_once(handles: list[PostgresLedger]) -> None:
    ids = [f"c{i:04d}" for i in range(1500)]  # two chunks of the guarded statement
    handles[0].insert_items([_row(cid) for cid in ids])
    move = partial(PostgresLedger.transition_items, custom_ids=ids, to_status=ItemStatus.SUBMITTED, strict=False)
    moved = _race([partial(move, ledger, from_statuses=[ItemStatus.PENDING]) for ledger in handles])
    assert sum(int(str(n)) for n in moved) == 1500
    assert handles[1].count_items() == {"submitted": 1500}
    events = handles[2].events(entity="item")
    assert sorted(e["entity_id"] for e in events) == ids  # each item moved, and was logged, exactly once


def test_workers_racing_for_claims_win_each_key_once(handles: list[PostgresLedger]) -> None:
    keys = [f"batch_{i}:output" for i in range(60)]

    def grab(ledger: PostgresLedger, owner: str) -> list[str]:
        return [key for key in keys if ledger.claim("output", key, owner=owner, lease_s=60)]

    won = _race([partial(grab, ledger, f"w{n}") for n, ledger in enumerate(handles)])
    taken = [key for keys_won in won if isinstance(keys_won, list) for key in keys_won]
    assert sorted(taken) == sorted(keys)


def test_workers_opening_the_same_job_share_one_run(handles: list[PostgresLedger]) -> None:
    opened = [r for r in _race([partial(ledger.open_run, "nightly", "h", "emulator") for ledger in handles])]
    assert len({str(r[0]) for r in opened if isinstance(r, tuple)}) == 1
    assert sorted(bool(r[1]) for r in opened if isinstance(r, tuple)) == [False, True, True, True]


def test_a_transaction_holds_its_rows_until_it_commits(handles: list[PostgresLedger]) -> None:
    a, b = handles[0], handles[1]
    a.insert_items([_row("c1")])
    entered = threading.Event()
    result: list[int] = []

    def other() -> None:
        entered.wait()
        result.append(b.transition_items(["c1"], ItemStatus.SUBMITTED, strict=False))  # waits on the row lock

    thread = threading.Thread(target=other)
    thread.start()
    with a.transaction():
        a.transition_items(["c1"], ItemStatus.SUBMITTED)
        entered.set()
        time.sleep(0.3)
        a.transition_items(["c1"], ItemStatus.SUCCEEDED)
    thread.join()
    assert result == [0]  # the other worker saw the committed row (succeeded), not the one in between
    row = b.item("c1")
    assert row is not None and row.status == "succeeded"


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an ``EXPLAIN (FORMAT JSON)`` plan, depth first."""
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


def _recorded_statements(
    monkeypatch: pytest.MonkeyPatch, keep: Callable[[str], bool], calls: Callable[[], None]
) -> dict[str, object]:
    """The SQL texts (with their first parameters) that ``calls()`` sends through psycopg and ``keep`` accepts."""
    statements: dict[str, object] = {}
    execute = psycopg.Cursor.execute

    def recording(self: psycopg.Cursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.decode() if isinstance(query, bytes) else str(query)
        if keep(text):
            statements.setdefault(text, params)
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recording)
    try:
        calls()
    finally:
        monkeypatch.undo()
    return statements


#: The filters whose rows are a small part of a ledger (a run, a batch, a shard, one item's events): each page of
#: them must come from an index that starts with the column, never from a walk of a bigger index that tests it.
_SELECTIVE: Final = (("items", "run_id"), ("items", "batch_id"), ("items", "shard"), ("events", "entity_id"))


def test_every_read_is_served_in_index_order_without_a_sort_or_a_scan_of_the_ledger(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PostgreSQL ledger's reads stay linear as the SQLite ledger's do (issue 12): every SELECT the code makes,
    planned with sorts and sequential scans priced out (``enable_sort``, ``enable_seqscan`` off: the planner then
    sorts or scans only when no index can do it), has no Sort node when it has ORDER BY, never scans ``items`` or
    ``events`` whole (aggregates excepted), and reads a run's, a batch's or a shard's items and an item's events
    through an index that starts with that column (its ``Index Cond``), not by walking the primary key and
    testing every row of the ledger on each page. The ledger is shaped like a real one: 6 runs, 36 batches, and
    ``custom_id`` values that are hashes."""
    ledger = PostgresLedger(url)
    runs = populate(ledger, runs=6, items=600, batch_items=100, hashed_ids=True)
    item = next(ledger.items(run_id=runs[0])).custom_id
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    statements = _recorded_statements(
        monkeypatch,
        lambda text: text.lstrip().upper().startswith(("SELECT", "WITH")) and "pg_advisory" not in text,
        lambda: every_read_the_code_makes(ledger, runs[0], item),
    )
    ledger.close()
    ordered = [sql for sql in statements if "ORDER BY" in sql.upper()]
    assert len(statements) >= 25 and len(ordered) >= 15, list(statements)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET enable_sort = off")
        conn.execute("SET enable_seqscan = off")
        for sql, params in statements.items():
            (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}".encode(), params).fetchone()  # type: ignore[misc]
            nodes = list(_plan_nodes(plan[0]["Plan"]))
            kinds = [node["Node Type"] for node in nodes]
            if "ORDER BY" in sql.upper():
                assert "Sort" not in kinds and "Incremental Sort" not in kinds, (sql, kinds)
            aggregate = "GROUP BY" in sql.upper() or "SUM(" in sql.upper()
            for node in nodes:
                table = node.get("Relation Name")
                if table in ("items", "events") and not aggregate:
                    assert node["Node Type"] != "Seq Scan", (sql, kinds)
                for selective_table, column in _SELECTIVE:
                    if node.get("Alias") == selective_table and re.search(rf"\b{column} = %s", sql):  # the outer scan
                        found = str(node.get("Index Cond", "")) + str(node.get("Recheck Cond", ""))  # a bitmap's
                        assert column in found, (sql, node)


def test_a_runs_pages_are_planned_in_index_order_as_the_server_plans_them_right_after_its_build(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no planner setting changed and no ANALYZE but the ledger's own after each build, a page of a run's rows
    and of each item's latest attempt (``ledger export``, ``--run``) is the next rows of an index in ``custom_id``
    order, each latest attempt one index probe: never a sort of every remaining row on each page. Two ways this went
    quadratic, each planned here: a run just built, before autovacuum's analyze, looked like a few rows to the
    planner (a bitmap and a sort per page); and ``attempt = (SELECT MAX(...))`` as a filter was guessed to keep
    0.5 % of rows (the same sort, 168 ms a page at 50,000 items). Planned from the middle of a 20,000-item run, as a
    later page is (on a much smaller ledger the server would read it whole either way: a sort of a few thousand rows
    costs it less than an index)."""
    ledger = PostgresLedger(url)
    runs = populate(ledger, runs=2, items=20000, batch_items=5000, hashed_ids=True)
    with psycopg.connect(url) as conn:
        analyzed = conn.execute(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = 'items'"
        ).fetchone()
    assert analyzed is not None and analyzed[0] is not None  # finish_build refreshed the statistics

    def reads() -> None:
        for read in (
            lambda: ledger.items(run_id=runs[1]),
            lambda: ledger.export_jsonl(),
            lambda: ledger.export_jsonl(run_id=runs[1]),  # run 1 retried every item of run 0
        ):
            assert sum(1 for _ in read()) > 0

    statements = _recorded_statements(monkeypatch, lambda text: "LIMIT 1000" in text, reads)
    middle = sorted(row.custom_id for row in ledger.items(run_id=runs[1]))[10000]
    ledger.close()
    assert len(statements) == 3, list(statements)
    with psycopg.connect(url, autocommit=True) as conn:
        for sql, params in statements.items():
            assert isinstance(params, list) and params[-1] == ""  # the first page's keyset bound
            params = [*params[:-1], middle]
            (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}".encode(), params).fetchone()  # type: ignore[misc]
            nodes = list(_plan_nodes(plan[0]["Plan"]))
            kinds = [node["Node Type"] for node in nodes]
            unordered = {"Sort", "Incremental Sort", "Seq Scan", "Bitmap Heap Scan", "Hash Join", "Hash"}
            assert not unordered & set(kinds), (sql, kinds)
            assert kinds[:2] == ["Limit", "Index Scan"] or kinds[:3] == ["Limit", "Result", "Index Scan"], (sql, kinds)
            if "NOT EXISTS" in sql:  # the latest attempt: a probe of the UNIQUE index per row of the page
                probes = [node for node in nodes if node.get("Parent Relationship") == "SubPlan"]
                assert probes and "items_job_item_key_attempt_key" in str(probes), (sql, kinds)
