"""``batchpipe ledger export``'s lines as the SQLite ledger builds them in SQL (``SqliteLedger.export_jsonl``): the
same bytes as ``orjson.dumps(row.export_record())`` for awkward values (times a hair below a whole second, costs
SQLite would print with 15 digits, file URIs that need decoding or normalising, control characters, non-ASCII text,
a redacted secret), the record's content pinned for a few representative rows, and the plan of its pages (the
table's B-tree, ``rowid``, in order: no temporary B-tree, no OFFSET)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.redact import forget_secrets, redact, remember_secret


def _row(custom_id: str, key: str, **extra: object) -> dict[str, object]:
    return {
        "custom_id": custom_id, "job": "job", "item_key": key, "attempt": 1, "run_id": "r1",
        "endpoint": "/v1/images/generations", "model": "gpt-image-2", "request_hash": "h-" + key,
        "body_json": orjson.dumps({"model": "gpt-image-2", "prompt": f"a lamp {key}"}).decode(),
        "metadata_json": orjson.dumps({"sku": key}).decode(), "source": "catalog.csv:2", "status": "pending",
        "created_at": 1_764_497_702.25, "updated_at": 1_764_497_702.25, **extra,
    }  # fmt: skip


def _lines(ledger: SqliteLedger, **options: object) -> list[str]:
    text = "".join(ledger.export_jsonl(**options))  # type: ignore[arg-type]
    return text.split("\n")[:-1]  # not splitlines(): a line may hold U+2028


def _python_lines(ledger: SqliteLedger, **options: object) -> list[str]:
    """The lines as Python writes them, in the order the SQLite export reads the rows (``rowid``: insertion)."""
    lines = {row.custom_id: orjson.dumps(row.export_record()).decode() for row in ledger.items(**options)}  # type: ignore[arg-type]
    order = [str(r[0]) for r in ledger._db.execute("SELECT custom_id FROM items ORDER BY rowid")]
    return [lines[custom_id] for custom_id in order if custom_id in lines]


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    store = SqliteLedger(tmp_path / "ledger.sqlite")
    yield store  # type: ignore[misc]
    store.close()


URIS = [
    "file:///srv/out/k/0.png",  # the common case: SQL alone
    "file:///srv/my%20images/caf%C3%A9.png",  # percent-encoded: decoded by local_path
    "file://localhost/srv/out/x.png",
    "file:///srv//out/./x.png",  # normalised by pathlib
    "file:///srv/out/dir/",
    "/srv/old/plain/path.png",  # ledgers written before URIs
    "/srv//old/plain/",
    "s3://bucket/key.png",
    "memory://images/k.png",
    "https://example.com/x.png",
    "",
    None,
]
COSTS = [None, 0.04, 0.1 + 0.2, 1e-05, 2.5e-07, 1e16, 123456789.123, 0.0, 1.0, 0.039999999999999994, 7]
TIMES = [1_764_497_702.0, 1_764_497_702.9999994, 1_764_497_702.9999995, 1_764_497_702.9999996, 0.0, 1, 86_399.5]
TEXTS = ["plain", "tab\there\nnew line \x01\x1f\x7f", 'quote " and \\ backslash /', "café 😀 \u2028 — ünïcode", ""]


def test_every_line_is_the_python_record_byte_for_byte(ledger: SqliteLedger) -> None:
    rows = []
    for i, uri in enumerate(URIS):
        rows.append(_row(f"u{i:02d}", f"uri-{i}", output_uri=uri))
    for i, cost in enumerate(COSTS):
        rows.append(_row(f"c{i:02d}", f"cost-{i}", cost_usd=cost))
    for i, at in enumerate(TIMES):
        rows.append(_row(f"t{i:02d}", f"time-{i}", created_at=at, updated_at=at))
    for i, text in enumerate(TEXTS):
        body = orjson.dumps({"prompt": text, "n": 1}).decode()
        meta = orjson.dumps({"note": text, "tags": [text, 1.5, None, True], "deep": {"x": [1e-7, 10**18]}}).decode()
        rows.append(_row(f"x{i:02d}", f"text-{i}", body_json=body, metadata_json=meta, error_message=text))
    rows.append(_row("b00", "no-prompt", body_json='{"model":"m"}', inputs_json=""))  # prompt: null
    rows.append(_row("b01", "number-prompt", body_json='{"prompt":3}', inputs_json='[{"uri":"file:///a"}]'))
    rows.append(_row("b02", "array-body", body_json="[1,2]", usage_json="null"))
    rows.append(_row("b03", "empty-body", body_json="", status="invalid"))
    ledger.insert_items(rows)
    for options in ({}, {"latest_only": False}, {"run_id": "r1"}, {"run_id": "nope"}):
        assert _lines(ledger, **options) == _python_lines(ledger, **options), options


def test_the_record_content_is_pinned(ledger: SqliteLedger) -> None:
    """What a consumer of the export reads: keys in this order, nulls, parsed JSON columns, ISO times, the prompt, a
    secret the collector redacted before it reached the ledger."""
    secret = "sk-" + "live" + "0123456789abcdefghijklmnop"
    remember_secret(secret)
    try:
        message = redact(f"upstream said: bad key {secret}")
    finally:
        forget_secrets()
    assert secret not in message
    ledger.insert_items([_row("a1", "sku-1"), _row("a2", "sku-2")])
    ledger.transition_items(["a1", "a2"], ItemStatus.SUBMITTED, fields={"batch_id": "batch_1", "shard": "s-0"})
    ledger.transition_items(
        ["a1"],
        ItemStatus.SUCCEEDED,
        fields={"output_uri": "file:///srv/out/sku-1/0.png", "sha256": "ab" * 32, "bytes": 1500, "format": "png",
                "width": 1024, "height": 1024, "c2pa_state": "Trusted",
                "c2pa_json": '{"state":"Trusted","issuer":"Example CA","failure_codes":[]}',
                "usage_json": '{"input_tokens":60,"output_tokens":4160}', "cost_usd": 0.04},
    )  # fmt: skip
    ledger.transition_items(["a2"], ItemStatus.FAILED, fields={"error_code": "invalid_api_key", "retryable": 0,
                                                                 "error_message": message})  # fmt: skip
    ledger._db.execute("UPDATE items SET updated_at = 1764497713.5")
    first, second = (orjson.loads(line) for line in _lines(ledger))
    assert list(first) == [
        "custom_id", "job", "key", "attempt", "run_id", "previous_custom_id", "endpoint", "model", "request_hash",
        "metadata", "source", "product_key", "variant", "inputs", "input_tokens_est", "shard", "batch_id", "status",
        "retryable", "error_code", "error_message", "output_uri", "output_path", "sha256", "bytes", "format", "width",
        "height", "c2pa_state", "c2pa", "usage", "cost_usd", "created_at", "updated_at", "prompt",
    ]  # fmt: skip
    assert first == {
        "custom_id": "a1", "job": "job", "key": "sku-1", "attempt": 1, "run_id": "r1", "previous_custom_id": None,
        "endpoint": "/v1/images/generations", "model": "gpt-image-2", "request_hash": "h-sku-1",
        "metadata": {"sku": "sku-1"}, "source": "catalog.csv:2", "product_key": None, "variant": None, "inputs": None,
        "input_tokens_est": 0, "shard": "s-0", "batch_id": "batch_1", "status": "succeeded", "retryable": None,
        "error_code": None, "error_message": None, "output_uri": "file:///srv/out/sku-1/0.png",
        "output_path": "/srv/out/sku-1/0.png", "sha256": "ab" * 32, "bytes": 1500, "format": "png", "width": 1024,
        "height": 1024, "c2pa_state": "Trusted",
        "c2pa": {"state": "Trusted", "issuer": "Example CA", "failure_codes": []},
        "usage": {"input_tokens": 60, "output_tokens": 4160}, "cost_usd": 0.04,
        "created_at": "2025-11-30T10:15:02Z", "updated_at": "2025-11-30T10:15:13Z", "prompt": "a lamp sku-1",
    }  # fmt: skip
    assert second["status"] == "failed" and second["error_code"] == "invalid_api_key" and second["retryable"] == 0
    assert second["error_message"] == message and secret not in "".join(_lines(ledger))
    assert second["output_path"] is None and second["c2pa"] is None and second["cost_usd"] is None


def test_export_pages_read_the_table_in_order(ledger: SqliteLedger) -> None:
    ledger.insert_items([_row(f"p{i:05d}", f"k{i}") for i in reversed(range(12_000))])  # three pages
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    for options in ({}, {"latest_only": False}, {"run_id": "r1"}, {"run_id": "r1", "latest_only": False}):
        lines = _lines(ledger, **options)
        assert [orjson.loads(line)["key"] for line in lines] == [f"k{i}" for i in reversed(range(12_000))]
    ledger._db.set_trace_callback(None)
    # each latest-only export kept its older attempts aside in a temporary table, and dropped it at its end
    assert not ledger._db.execute("SELECT name FROM sqlite_temp_master").fetchall()
    pages = [s for s in statements if "json_object" in s]
    assert len(pages) == 4 * 4  # three full pages and the empty one, per export
    older = sorted({name for sql in pages for name in re.findall(r"temp\.(export_older_\d+)", sql)})
    assert len(older) == 2  # the two latest-only exports, one table each
    for name in older:  # again (empty), to plan the pages that read it
        ledger._db.execute(f"CREATE TEMP TABLE {name} (id INTEGER PRIMARY KEY)")
    for sql in pages:
        assert "OFFSET" not in sql.upper()
        plan = [str(r[-1]) for r in ledger._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert "CORRELATED" not in " ".join(plan), plan  # no index search per row for "latest attempt"
        # pages run from the last rowid read to the largest when the export began
        expected = (
            "items_run (run_id=? AND rowid>? AND rowid<?)" if "run_id =" in sql else "PRIMARY KEY (rowid>? AND rowid<?)"
        )
        assert [p for p in plan if p.startswith("SEARCH items ") and p.endswith(expected)], plan
        assert not [p for p in plan if "TEMP B-TREE" in p], plan


def test_latest_attempts_across_jobs_runs_and_pages(ledger: SqliteLedger) -> None:
    """Items with one to three attempts, in two jobs with the same keys, over several pages: the latest-only export
    is Python's latest attempts line for line, whether the older attempts are before or after the latest in the
    table (attempt numbers inserted out of order)."""
    rows = []
    for i in range(7_000):
        key = f"k{(i * 7919) % 7_000:05d}"  # keys not in insertion order, as a real catalog's
        for job in ("job", "other"):
            attempts = 1 + (i % 3 if job == "job" else i % 2)
            for attempt in range(attempts, 0, -1) if i % 5 == 0 else range(1, attempts + 1):
                run = f"r{attempt}"
                rows.append(_row(f"{job}-{key}-{attempt}", key, job=job, attempt=attempt, run_id=run))
    ledger.insert_items(rows)
    for run_id in (None, "r1", "r2", "r3"):
        for latest in (True, False):
            options = {"run_id": run_id, "latest_only": latest}
            assert _lines(ledger, **options) == _python_lines(ledger, **options), options
    latest = {orjson.loads(line)["custom_id"] for line in _lines(ledger)}
    assert len(latest) == 14_000  # row i = 2: key k01838, three attempts in "job" and one in "other"
    assert {"job-k01838-3", "other-k01838-1"} <= latest and not {"job-k01838-1", "job-k01838-2"} & latest


def test_an_export_lists_the_rows_there_when_it_began_and_leaves_nothing_behind(ledger: SqliteLedger) -> None:
    ledger.insert_items([_row(f"a{i:05d}", f"k{i}") for i in range(12_000)])  # three pages
    chunks = ledger.export_jsonl()
    first = next(chunks)
    # while it runs: a new item, and a second attempt of an item on a page not read yet
    ledger.insert_items([_row("new-1", "new"), _row("a11999-2", "k11999", attempt=2, run_id="r2")])
    rest = "".join(chunks)
    keys = [orjson.loads(line)["custom_id"] for line in (first + rest).splitlines()]
    assert keys == [f"a{i:05d}" for i in range(12_000)]  # the latest attempts as the export began
    assert [orjson.loads(line)["custom_id"] for line in _lines(ledger)][-3:] == ["a11998", "new-1", "a11999-2"]
    abandoned = ledger.export_jsonl()
    next(abandoned)
    assert ledger._db.execute("SELECT COUNT(*) FROM sqlite_temp_master").fetchone()[0] == 1
    abandoned.close()  # a reader that stops part way (a closed pipe) drops the export's table too
    assert not ledger._db.execute("SELECT name FROM sqlite_temp_master").fetchall()
