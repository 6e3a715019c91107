"""A ledger filled like a real one, and every read the code makes of it: shared by the plan tests of the SQLite
ledger (tests/test_ledger.py) and of the PostgreSQL ledger (tests/test_postgres_ledger.py), so both are held to the
same reads."""

from __future__ import annotations

from batchpipe.domain.items import ItemStatus, make_custom_id
from batchpipe.ports import Ledger


def item_row(
    custom_id: str, key: str, *, attempt: int = 1, run_id: str = "r1", status: str = "pending", **extra: object
) -> dict[str, object]:
    """An item row of job ``job`` for :meth:`Ledger.insert_items` (``extra``: more columns)."""
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
        **extra,
    }


def shard_row(name: str, run_id: str) -> dict[str, object]:
    """A built shard's row for :meth:`Ledger.finish_build`."""
    return {
        "name": name, "run_id": run_id, "job": "job", "endpoint": "/v1/images/generations", "model": "gpt-image-2",
        "path": f"shards/{name}.jsonl", "requests": 200, "bytes": 1, "sha256": "0" * 64, "input_tokens": 1,
    }  # fmt: skip


def populate(
    ledger: Ledger, *, runs: int = 3, items: int = 600, batch_items: int = 600, hashed_ids: bool = False
) -> list[str]:
    """Fill ``ledger`` as runs fill it; returns the run ids, oldest first (one more, open and empty, at the end).

    Run 0 and run 1 are job ``job`` (run 1 retries run 0's keys: attempt 2), run 2 is job ``other``, later runs jobs
    ``other-<n>``. Each run: ``items`` items in shards of 200 (``<run_id>-s<n>``) and batches of ``batch_items``
    (``batch-<run>`` the first, then ``batch-<run>-<n>``); the first 5/6 of each batch succeeded (C2PA ``Trusted``,
    $0.04 each), the rest failed (``server_error``, retryable); one batch record and one input file per run, every
    run finished. Item ``i`` of run ``r`` is ``r<r>-c<i:04d>``, or with ``hashed_ids`` a hash as real ``custom_id``
    values are (:func:`batchpipe.domain.items.make_custom_id`), so the primary key's order is not the table's."""
    built: list[str] = []
    for run in range(runs):
        run_id, _ = ledger.open_run("job", "spec", "api")
        built.append(run_id)
        job = "job" if run < 2 else "other" if run == 2 else f"other-{run}"
        rows = []
        for i in range(items):
            attempt = 2 if run == 1 else 1
            custom_id = make_custom_id(job, f"k{i}", attempt) if hashed_ids else f"r{run}-c{i:04d}"
            row = {**item_row(custom_id, f"k{i}"), "run_id": run_id, "job": job, "shard": f"{run_id}-s{i // 200}"}
            row["attempt"] = attempt
            rows.append(row)
        ledger.insert_items(rows)
        ledger.finish_build(run_id, [shard_row(f"{run_id}-s{s}", run_id) for s in range(-(-items // 200))])
        for start in range(0, items, batch_items):
            number = start // batch_items
            ids = [str(r["custom_id"]) for r in rows[start : start + batch_items]]
            batch_id = f"batch-{run}" if number == 0 else f"batch-{run}-{number}"
            done = len(ids) * 5 // 6
            ledger.transition_items(ids, ItemStatus.SUBMITTED, fields={"batch_id": batch_id})
            succeeded = {"c2pa_state": "Trusted", "cost_usd": 0.04}
            ledger.transition_items(ids[:done], ItemStatus.SUCCEEDED, fields=succeeded)
            ledger.transition_items(
                ids[done:], ItemStatus.FAILED, fields={"error_code": "server_error", "retryable": 1}
            )
        batch = {"id": f"batch-{run}", "status": "completed", "input_file_id": f"file-{run}", "created_at": 100 + run}
        ledger.record_batch(batch, shard=f"{run_id}-s0", run_id=run_id, model="gpt-image-2")
        ledger.record_file({"id": f"file-{run}", "purpose": "batch", "created_at": 100 + run}, role="input")
        ledger.finish_run(run_id, "finished")
    open_id, _ = ledger.open_run("job", "spec", "api")
    return [*built, open_id]


def every_read_the_code_makes(ledger: Ledger, some: str, item: str = "r0-c0001") -> None:
    """Each read of the ledger with the filter combinations the runner, the stages and the CLI use (``some``: the
    first run of :func:`populate`; ``item``: one of its items)."""
    reads = [
        lambda: ledger.items(),  # ledger export (all attempts)
        lambda: ledger.items(latest_only=True),  # ledger export
        lambda: ledger.items(run_id=some),  # ledger export --run --all-attempts
        lambda: ledger.items(run_id=some, latest_only=True),  # ledger export --run
        lambda: ledger.items(run_id=some, statuses=["failed", "expired", "cancelled", "missing"]),  # follow-up
        lambda: ledger.items(shard=f"{some}-s0", statuses=["pending"]),  # submit
        lambda: ledger.items(batch_id="batch-0"),  # collect: the batch's targets
        lambda: ledger.items(batch_id="batch-0", statuses=["succeeded", "failed"]),  # collect: decided rows
        lambda: ledger.items(statuses=["pending", "submitted"]),  # references still in use
        lambda: ledger.items(job="job"),
        lambda: ledger.items(  # retry: select_rows
            job="job",
            statuses=["failed"],
            error_codes=["server_error"],
            c2pa_states=None,
            since=0.0,
            until=2e9,
            latest_only=True,
        ),
        lambda: [ledger.latest_attempts("job", [f"k{i}" for i in range(600)])],
        lambda: [ledger.succeeded_with("job", [(f"k{i}", "h") for i in range(600)])],
        lambda: [ledger.count_items(), ledger.count_items(run_id=some), ledger.count_items(latest_only=True)],
        lambda: [ledger.cost_usd(), ledger.cost_usd(run_id=some)],
        lambda: [ledger.item_summary(["failed", "missing"]), ledger.item_summary(["failed"], job="job")],  # status
        lambda: ledger.export_jsonl(),  # ledger export (jsonl)
        lambda: ledger.export_jsonl(latest_only=False),  # ledger export --all-attempts
        lambda: ledger.export_jsonl(run_id=some),  # ledger export --run
        lambda: ledger.shards(run_id=some),
        lambda: ledger.shards(run_id=some, statuses=["built", "uploaded"]),
        lambda: ledger.batches(),
        lambda: ledger.batches(run_id=some),
        lambda: ledger.batches(run_id=some, unfinished=True),
        lambda: ledger.events(entity="item", entity_id=item),
        lambda: ledger.item_history(item),
        lambda: [ledger.latest_run(), ledger.latest_run("job"), ledger.open_run("job", "spec", "api")],
        lambda: [ledger.file_by_sha256("0" * 64, role="reference", not_expired_at=0.0)],
        lambda: ledger.files(role="input", deleted=False),
    ]
    for read in reads:
        list(read())
