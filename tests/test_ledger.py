"""What only the SQLite ledger does: the WAL file on disk, reopening it, migrating an older file, claims across
processes, refusing a file it cannot open; and the domain's transition tables.

The behaviour every ledger shares (guarded transitions, item history, forward-only batches, claims, idempotent batch
records, streaming queries, transaction atomicity) is in tests/contracts/test_ledger_contract.py, which runs it on
SqliteLedger and MemoryLedger.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledger_reads import every_read_the_code_makes, item_row, populate

from batchpipe.adapters import sqlite_ledger
from batchpipe.adapters.sqlite_ledger import SqliteLedger, open_ledger
from batchpipe.domain.items import BatchStatus, ItemStatus
from batchpipe.domain.records import (
    BATCH_TRANSITIONS,
    ITEM_TRANSITIONS,
    batch_may_move,
    batch_status_is_terminal,
    new_item_params,
)
from batchpipe.errors import LedgerError


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
    ledger.insert_items([item_row("c1", "k1"), item_row("c2", "k2")])
    ledger.transition_items(["c1"], ItemStatus.SUBMITTED)
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.insert_items([item_row("c3", "k3")])
        raise RuntimeError("crash")
    ledger.close()
    ledger.close()  # idempotent
    with sqlite3.connect(tmp_path / "work" / "ledger.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again = SqliteLedger(tmp_path / "work" / "ledger.sqlite")
    assert again.count_items() == {"pending": 1, "submitted": 1}  # committed rows only
    assert [(e["entity"], e["entity_id"]) for e in again.events()] == [("item", "c1")]
    again.close()


def test_only_a_chunk_insert_of_its_own_skips_the_disk_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build's chunk inserts commit with synchronous=NORMAL (their open group, see _GROUP_ROWS) and the next
    other write puts FULL back, even when a chunk fails; inside a caller's transaction (a follow-up attempt with its
    shards) the caller's FULL commit stands."""
    monkeypatch.setattr(sqlite_ledger, "_GROUP_S", 60.0)  # no timer commit in the middle, however slow the machine
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    seen: list[int] = []
    ledger._db.set_trace_callback(lambda sql: seen.append(0) if "synchronous=NORMAL" in sql else None)

    def synchronous() -> int:
        return int(ledger._db.execute("PRAGMA synchronous").fetchone()[0])

    assert synchronous() == 2  # FULL
    ledger.insert_items([item_row("c1", "k1")])
    assert synchronous() == 1 and len(seen) == 1  # NORMAL while the build's group is open
    with pytest.raises(LedgerError):
        ledger.insert_items([item_row("c1", "k1")])  # a duplicate: nothing inserted, the group goes on
    assert synchronous() == 1 and len(seen) == 1
    with ledger.transaction():  # any other write commits the group first and puts FULL back
        assert synchronous() == 2
        ledger.insert_items([item_row("c2", "k2")])
    assert len(seen) == 1 and synchronous() == 2
    assert ledger.count_items() == {"pending": 2}
    ledger.close()


def _committed(path: Path) -> list[str]:
    """The custom_ids another connection sees in the ledger file at ``path``."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        return [str(r[0]) for r in other.execute("SELECT custom_id FROM items ORDER BY custom_id")]


def test_a_builds_chunks_share_a_transaction_until_it_is_full_old_or_another_write_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks inserted on their own join one open transaction; other connections see them when it commits: when
    it holds _GROUP_ROWS rows, when it is _GROUP_S old (no chunk needed), at the next other write, or at close."""
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setattr(sqlite_ledger, "_GROUP_ROWS", 3)
    monkeypatch.setattr(sqlite_ledger, "_GROUP_S", 60.0)  # the timer commits only where the test lowers this
    ledger = SqliteLedger(path)
    ledger.insert_items([item_row("c1", "k1"), item_row("c2", "k2")])
    assert _committed(path) == [] and ledger.count_items() == {"pending": 2}  # this connection sees its own rows
    ledger.insert_items([item_row("c3", "k3")])  # 3 rows: the group is full
    assert _committed(path) == ["c1", "c2", "c3"]
    ledger.insert_items([item_row("c4", "k4")])
    assert _committed(path) == ["c1", "c2", "c3"]
    ledger.claim("build", "r1", owner="w", lease_s=60)  # another write
    assert _committed(path) == ["c1", "c2", "c3", "c4"]
    monkeypatch.setattr(sqlite_ledger, "_GROUP_S", 0.2)
    ledger.insert_items([item_row("c5", "k5")])  # and then no chunk: the build pauses
    deadline = time.monotonic() + 10
    while _committed(path)[-1:] != ["c5"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _committed(path) == ["c1", "c2", "c3", "c4", "c5"]
    assert int(ledger._db.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL again
    monkeypatch.setattr(sqlite_ledger, "_GROUP_S", 60.0)
    ledger.insert_items([item_row("c6", "k6")])
    time.sleep(0.4)
    assert _committed(path) == ["c1", "c2", "c3", "c4", "c5"]
    ledger.close()
    assert _committed(path) == ["c1", "c2", "c3", "c4", "c5", "c6"]


def test_a_refused_chunk_leaves_the_groups_other_chunks_and_a_rolled_back_group_is_an_error(tmp_path: Path) -> None:
    """A chunk the schema refuses is undone alone (its SAVEPOINT); if SQLite rolls the whole open transaction back
    (disk full, I/O error: here a trigger's RAISE(ROLLBACK)), insert_items says so and the next chunk starts a
    new group."""
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path)
    ledger.insert_items([item_row("c1", "k1")])
    with pytest.raises(LedgerError, match="duplicate"):
        ledger.insert_items([item_row("c2", "k2"), item_row("c1", "k9")])  # c2 is undone with the refused c1
    ledger.insert_items([item_row("c3", "k3")])
    ledger.close()
    assert _committed(path) == ["c1", "c3"]

    ledger = SqliteLedger(path)
    ledger._db.execute(
        "CREATE TEMP TRIGGER boom BEFORE INSERT ON items WHEN NEW.item_key = 'boom'"
        " BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END"
    )
    ledger.insert_items([item_row("c4", "k4")])
    with pytest.raises(LedgerError, match="uncommitted chunks were rolled back"):
        ledger.insert_items([item_row("c5", "boom")])
    assert int(ledger._db.execute("PRAGMA synchronous").fetchone()[0]) == 2
    ledger.insert_items([item_row("c6", "k6")])
    ledger.close()
    assert _committed(path) == ["c1", "c3", "c6"]  # c4 went with its group, and the error said so


def test_an_older_ledger_file_gains_claims_and_the_events_index(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path)
    ledger.insert_items([item_row("c1", "k1")])
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


# -- a ledger that stays linear: every sorted query is served by an index -------------------------------------
_ITEM_INDEXES = {
    "sqlite_autoindex_items_1": ["custom_id"],
    "sqlite_autoindex_items_2": ["job", "item_key", "attempt"],
    "items_run": ["run_id"],
    "items_shard": ["shard"],
    "items_batch_set": ["batch_id"],
}


def _indexes(db: sqlite3.Connection, table: str) -> dict[str, list[str]]:
    names = [str(r[1]) for r in db.execute(f"PRAGMA index_list({table})")]
    return {name: [str(c[2]) for c in db.execute(f"PRAGMA index_info({name})")] for name in names}


def _populated(path: Path, *, analyze: bool) -> SqliteLedger:
    """A ledger with two jobs, three runs, retries, shards, batches, files and events (``ledger_reads.populate``)."""
    ledger = SqliteLedger(path)
    populate(ledger)
    if not analyze:
        ledger._db.execute("DROP TABLE IF EXISTS sqlite_stat1")
        ledger._db.execute("ANALYZE sqlite_schema")  # the planner forgets the statistics
    return ledger


def _every_read_the_code_makes(ledger: SqliteLedger) -> None:
    """Each read of the ledger with the filter combinations the runner, the stages and the CLI use."""
    built = [r["run_id"] for r in ledger._db.execute("SELECT run_id FROM runs ORDER BY started_at")]
    every_read_the_code_makes(ledger, str(built[0]))


def _recreate_export_tables(ledger: SqliteLedger, statements: list[str]) -> None:
    """Make again (empty) the temporary tables of older attempts that the exports among ``statements`` made and
    dropped at their end, so their page queries can be planned."""
    for name in sorted({n for sql in statements for n in re.findall(r"temp\.(export_older_\d+)", sql)}):
        ledger._db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (id INTEGER PRIMARY KEY)")


@pytest.mark.parametrize("analyze", [True, False], ids=["analyzed", "no-statistics"])
@pytest.mark.parametrize("run_rows", ["one-query", "paged"])
def test_no_read_of_the_ledger_sorts_a_temporary_b_tree(
    tmp_path: Path, analyze: bool, run_rows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every query the ledger runs with ORDER BY (each page of items(), batches, shards, events...) reads its
    rows in index order: EXPLAIN QUERY PLAN has no ``USE TEMP B-TREE``, so no page sorts every matching row.
    ``paged``: a run's rows are more than one query reads (``_ONE_QUERY_ROWS`` set to -1), so they come in pages."""
    if run_rows == "paged":
        monkeypatch.setattr(sqlite_ledger, "_ONE_QUERY_ROWS", -1)
    ledger = _populated(tmp_path / "ledger.sqlite", analyze=analyze)
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    _every_read_the_code_makes(ledger)
    ledger._db.set_trace_callback(None)
    selects = list(dict.fromkeys(s for s in statements if s.lstrip().upper().startswith("SELECT")))
    sorted_reads = [s for s in selects if "ORDER BY" in s.upper()]
    assert len(sorted_reads) >= 12
    _recreate_export_tables(ledger, selects)
    for sql in selects:
        plan = [str(r[-1]) for r in ledger._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        if "ORDER BY" in sql.upper():
            assert not [p for p in plan if "TEMP B-TREE" in p], (sql, plan)
        if " items " in f" {sql} " and "GROUP BY" not in sql.upper() and "SUM(" not in sql.upper():
            assert not [p for p in plan if p.startswith("SCAN items") and "INDEX" not in p], (sql, plan)
    ledger.close()


def test_a_runs_rows_are_the_same_read_in_one_query_or_in_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``items(run_id=...)`` reads a run's rows through its index when at most ``_ONE_QUERY_ROWS`` match, else in
    pages of the primary key: the same rows in the same (``custom_id``) order either way, every filter kept."""
    ledger = _populated(tmp_path / "ledger.sqlite", analyze=True)
    runs = [str(r[0]) for r in ledger._db.execute("SELECT run_id FROM runs ORDER BY started_at")]
    reads = [
        {"run_id": run, **filters}
        for run in runs
        for filters in (
            {},
            {"latest_only": True},
            {"statuses": ["failed", "expired", "cancelled", "missing"]},
            {"statuses": ["succeeded"], "c2pa_states": ["Trusted"], "since": 0.0},
            {"job": "other", "error_codes": ["server_error"]},
        )
    ]

    def read_all() -> list[list[str]]:
        return [[row.custom_id for row in ledger.items(**read)] for read in reads]  # type: ignore[arg-type]

    one_query = read_all()
    monkeypatch.setattr(sqlite_ledger, "_ONE_QUERY_ROWS", -1)
    assert read_all() == one_query
    assert [len(ids) for ids in one_query[:5]] == [600, 0, 100, 500, 0]  # the first run: superseded by the second
    assert all(ids == sorted(ids) for ids in one_query)
    monkeypatch.setattr(sqlite_ledger, "_ONE_QUERY_ROWS", 100)  # the 100 failed rows fit; the run's 600 do not
    assert read_all() == one_query
    ledger.close()


def test_the_bounded_and_the_incremental_reads_are_index_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _populated(tmp_path / "ledger.sqlite", analyze=True)

    def plan_of(read: object) -> str:
        statements: list[str] = []
        ledger._db.set_trace_callback(statements.append)
        list(read())  # type: ignore[operator]
        ledger._db.set_trace_callback(None)
        _recreate_export_tables(ledger, statements)
        planned = [s for s in statements if not s.lstrip().upper().startswith(("CREATE", "DROP"))]  # no plan
        return " | ".join(str(r[-1]) for s in planned for r in ledger._db.execute(f"EXPLAIN QUERY PLAN {s}"))

    some = str(ledger._db.execute("SELECT run_id FROM runs ORDER BY started_at").fetchone()[0])
    assert "items_batch_set (batch_id=?)" in plan_of(lambda: ledger.items(batch_id="batch-0"))
    assert "items_shard (shard=?)" in plan_of(lambda: ledger.items(shard=f"{some}-s0", statuses=["pending"]))
    # a run's rows, when no more than one query reads: its index, counted first, then read (sorted in Python)
    run_rows = plan_of(lambda: ledger.items(run_id=some, statuses=["failed", "expired", "cancelled", "missing"]))
    assert run_rows.count("SEARCH items USING INDEX items_run (run_id=?)") == 2, run_rows
    assert "SCAN items" not in run_rows and "TEMP B-TREE" not in run_rows, run_rows
    monkeypatch.setattr(sqlite_ledger, "_ONE_QUERY_ROWS", -1)  # more than that (any count): pages
    run_pages = plan_of(lambda: ledger.items(run_id=some, latest_only=True))  # the primary key, in custom_id order
    assert "sqlite_autoindex_items_1 (custom_id>?)" in run_pages and "TEMP B-TREE" not in run_pages
    monkeypatch.undo()
    assert "items_run (run_id=?)" in plan_of(lambda: [ledger.count_items(run_id=some)])
    # status: one pass over the items; the retried items' highest attempts come from the UNIQUE index's entries
    # in its order (covering: no table row, no sort), the rows they supersede from one search of it per retried
    # item, and no row of the pass looks anything up in the big index
    for summary in (plan_of(lambda: [ledger.item_summary(["failed"], job="job")]), plan_of(
        lambda: [ledger.item_summary(["failed"])])):  # fmt: skip
        assert "CORRELATED" not in summary and summary.count("TEMP B-TREE") == 2, summary  # the two GROUP BYs only
        assert "SEARCH i USING INDEX sqlite_autoindex_items_2 (job=? AND item_key=? AND attempt<?)" in summary, summary
        reads = [p for p in summary.split(" | ") if p.startswith(("SCAN items", "SEARCH items"))]
        assert len(reads) == 2 and reads[0] == "SCAN items", summary
        assert reads[1] in (  # the retried items: the UNIQUE index's entries alone (a job's: from its first entry)
            "SCAN items USING COVERING INDEX sqlite_autoindex_items_2",
            "SEARCH items USING COVERING INDEX sqlite_autoindex_items_2 (job=?)",
        ), summary
    # export: pages of the table in rowid order, up to the largest rowid when it began (a run's: items_run, whose
    # entries are in rowid order); each item's latest attempt without a search per row: the older attempts are
    # found once (the retried items from the UNIQUE index's entries, then a search per retried item) and kept aside
    everything = plan_of(lambda: ledger.export_jsonl())
    assert "SEARCH items USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in everything, everything
    assert "USING ROWID SEARCH ON TABLE export_older_" in everything, everything
    assert "SCAN items USING COVERING INDEX sqlite_autoindex_items_2" in everything, everything
    assert "SEARCH i USING COVERING INDEX sqlite_autoindex_items_2 (job=? AND item_key=? AND attempt<?)" in everything
    assert "CORRELATED" not in everything and "TEMP B-TREE" not in everything, everything
    assert "items_run (run_id=? AND rowid>? AND rowid<?)" in plan_of(lambda: ledger.export_jsonl(run_id=some))
    every_attempt = plan_of(lambda: ledger.export_jsonl(latest_only=False))
    assert "export_older" not in every_attempt and "sqlite_autoindex_items_2" not in every_attempt, every_attempt
    check = plan_of(lambda: [ledger.succeeded_with("job", [("k1", "h"), ("k2", "h")])])
    assert "sqlite_autoindex_items_2 (job=? AND item_key=?)" in check, check
    # the only scan is of the pairs given (one JSON parameter), never of the items table
    assert [step for step in check.split(" | ") if "SCAN" in step] == ["SCAN p VIRTUAL TABLE INDEX 1:"], check
    ledger.close()


def test_items_has_no_redundant_index_and_an_older_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = SqliteLedger(path)
    ledger.insert_items([item_row("c1", "k1")])
    ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # the indexes as batchpipe made them before
        for name in ("items_run", "items_shard", "items_batch_set", "files_sha_created"):
            db.execute(f"DROP INDEX {name}")
        db.execute("CREATE INDEX items_job_key ON items (job, item_key)")
        db.execute("CREATE INDEX items_run_status ON items (run_id, status)")
        db.execute("CREATE INDEX items_shard ON items (shard)")
        db.execute("CREATE INDEX items_batch ON items (batch_id)")
        db.execute("CREATE INDEX files_sha ON files (sha256, role)")
    for _ in range(2):  # idempotent
        again = SqliteLedger(path)
        indexes = _indexes(again._db, "items")
        assert indexes == _ITEM_INDEXES
        assert _indexes(again._db, "files") == {
            "files_sha_created": ["sha256", "role", "created_at"],
            "sqlite_autoindex_files_1": ["file_id"],
        }
        for name, columns in indexes.items():  # no index is a prefix of another (it would only slow writes)
            assert not [o for o, other in indexes.items() if o != name and other[: len(columns)] == columns], name
        assert [r.custom_id for r in again.items(run_id="r1")] == ["c1"]
        again.close()


def test_an_older_file_gains_the_source_hash_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # items as batchpipe made them before
        db.execute("ALTER TABLE items DROP COLUMN source_hash")
        db.execute(
            "INSERT INTO items (custom_id, job, item_key, attempt, run_id, endpoint, model, request_hash, body_json,"
            " metadata_json, source, status, created_at, updated_at) VALUES"
            " ('old', 'job', 'k0', 1, 'r1', '/v1/images/generations', 'm', 'h', '{}', '{}', 'm.csv:2', 'succeeded',"
            " 0, 0)"
        )
    for _ in range(2):  # idempotent
        again = SqliteLedger(path)
        assert [(r.custom_id, r.source_hash) for r in again.items()] == [("old", None)]
        assert again.succeeded_with("job", [("k0", "h")]) == {"k0"}
        assert again.succeeded_with("job", [("k0", "h")], by="source_hash") == set()
        again.close()


def test_a_build_refreshes_the_planners_statistics(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    run_id, _ = ledger.open_run("job", "spec", "api")
    ledger.insert_items([{**item_row(f"c{i}", f"k{i}"), "run_id": run_id} for i in range(50)])
    ledger.finish_build(run_id, [])
    stats = {str(r[0]): str(r[2]) for r in ledger._db.execute("SELECT tbl, idx, stat FROM sqlite_stat1")}
    assert stats["items"].startswith("50 ")
    ledger.close()


def test_status_counts_with_aggregates_and_never_reads_item_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from batchpipe.cli.main import main

    _populated(tmp_path / "ledger.sqlite", analyze=True).close()
    expected = SqliteLedger(tmp_path / "ledger.sqlite")
    current = {}
    for row in expected.items(latest_only=True):
        current[row.status] = current.get(row.status, 0) + 1
    expected.close()

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("status read every item row")

    monkeypatch.setattr(SqliteLedger, "items", refuse)
    result = CliRunner().invoke(main, ["status", "--json", "--workdir", str(tmp_path)], catch_exceptions=False)
    report = json.loads(result.output)
    assert report["current_items"] == current == {"succeeded": 1000, "failed": 200}
    assert report["items"] == {"succeeded": 1500, "failed": 300}


def _stored(path: Path) -> list[tuple[object, ...]]:
    """Every items row of the ledger at ``path`` with each value's SQLite type, in rowid order."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        columns = [str(r[1]) for r in db.execute("PRAGMA table_info(items)")]
        select = ", ".join(f"{c}, typeof({c})" for c in columns)
        return [tuple(r) for r in db.execute(f"SELECT {select} FROM items ORDER BY rowid")]


@pytest.mark.parametrize(
    "case",
    ["plain", "times_differ", "nul_in_text", "integer_past_53_bits"],
)
def test_a_chunk_is_stored_as_executemany_would_store_it_value_for_value(tmp_path: Path, case: str) -> None:
    """insert_items writes a chunk as one JSON statement when the JSON carries it exactly and row by row otherwise;
    either way every value and its SQLite type are what plain executemany stores (text of every kind, NULL, integers,
    booleans, and the REAL times bound as parameters)."""
    texts = ["plain", 'q"uo\\te', "é\u2028\u2029😀", "tab\tnew\nline\r", "\x01\x1f\x7f", '{"json": [1, 2.5]}', ""]
    rows = []
    for i, text in enumerate(texts * 3):
        row = item_row(f"c{i:03d}", f"k{i}")
        row.update(
            metadata_json=text,
            source=f"m.jsonl:{i}",
            product_key=None if i % 2 else text,
            input_tokens_est=i * 7,
            retryable=bool(i % 3),
            created_at=1_764_550_800.123_456_7,
            updated_at=1_764_550_800.123_456_7 + 1e-6,
        )
        rows.append(row)
    if case == "times_differ":
        rows[5]["created_at"] = 1_764_550_801.987_654_3
    elif case == "nul_in_text":
        rows[4]["source"] = "before\x00after"
    elif case == "integer_past_53_bits":
        rows[3]["input_tokens_est"] = 2**53 + 1
    statements: list[str] = []
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger._db.set_trace_callback(statements.append)
    ledger.insert_items(rows)
    ledger.close()
    one_step = any("json_each" in sql and sql.startswith("INSERT") for sql in statements)
    assert one_step is (case == "plain")

    plain = SqliteLedger(tmp_path / "plain.sqlite")
    columns, params = new_item_params(rows, 0.0)
    plain._db.executemany(
        f"INSERT INTO items ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})", params
    )
    plain.close()
    stored = _stored(tmp_path / "ledger.sqlite")
    assert len(stored) == len(rows)
    assert stored == _stored(tmp_path / "plain.sqlite")
