"""Follow-up attempts within a run, and the `batchpipe retry` workflows (run again, --set, --export)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cli_helpers import invoke_merged, teapot_manifest

from batchpipe.adapters.sqlite_ledger import open_ledger
from batchpipe.emulator.config import EmulatorConfig, FaultConfig
from batchpipe.runtime.wiring import run_job

_manifest = teapot_manifest
_invoke = invoke_merged


@pytest.mark.slow
def test_expired_rows_are_retried_automatically_and_blocked_ones_are_not(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", 8, blocked={3})
    workdir = tmp_path / "w"
    config = EmulatorConfig(
        state_dir=workdir / "emulator", faults=FaultConfig(expire_after_lines=3, expire_first_n_batches=1)
    )
    code = run_job(
        job_spec=None, manifest=manifest, job_name="tea", api_label="emulator", base_url=None, environ={},
        workdir=workdir, poll_interval_s=0.05, echo=lambda _: None, emulator_config=config,
    )  # fmt: skip
    assert code == 1  # the blocked item cannot succeed
    ledger = open_ledger(workdir)
    latest = {row.item_key: row for row in ledger.items(job="tea", latest_only=True)}
    assert len(latest) == 8
    assert latest["sku-3"].status == "failed" and latest["sku-3"].error_code == "moderation_blocked"
    # a moderation block is final: the blocked attempt is the item's last one (it may have expired first)
    assert latest["sku-3"].retryable == 0
    blocked_runs = [
        r for r in ledger.items(job="tea") if r.item_key == "sku-3" and r.error_code == "moderation_blocked"
    ]
    assert len(blocked_runs) == 1 and blocked_runs[0].custom_id == latest["sku-3"].custom_id
    succeeded = [row for key, row in latest.items() if key != "sku-3"]
    assert all(row.status == "succeeded" for row in succeeded)
    retried = [row for row in succeeded if row.attempt == 2]
    assert retried, "the expired batch's unfinished rows must come back as attempt 2"
    for row in retried:
        first = ledger.item(str(row.previous_custom_id))
        assert first is not None and first.status == "superseded" and first.error_code == "batch_expired"
    assert len(ledger.batches()) == 2  # the first batch, then one follow-up shard


@pytest.mark.slow
def test_retry_workflows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    manifest = _manifest(tmp_path / "m.jsonl", 5, blocked={1, 4})
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", "--poll-interval", "0.05")
    assert code == 1, out

    # export what failed as a manifest, then run it as a job of its own
    code, out = _invoke("retry", "--error-code", "moderation_blocked", "--export", "again.jsonl")
    assert code == 0, out
    lines = [orjson.loads(line) for line in Path("again.jsonl").read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == ["sku-1", "sku-4"]
    assert all(
        line["metadata"]["retry_of"].endswith("-a1") and line["model"] == "gpt-image-2.5-flare" for line in lines
    )
    fixed = [{**line, "prompt": line["prompt"].replace(" EMULATOR_BLOCK", "")} for line in lines]
    Path("fixed.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in fixed))
    code, out = _invoke("run", "--manifest", "fixed.jsonl", "--job-name", "tea-fixed", "--poll-interval", "0.05")
    assert code == 0, out

    # the succeeded ones again at another quality: new attempts linked to the originals
    code, out = _invoke(
        "retry", "--job", "tea", "--status", "succeeded", "--set", "quality=high", "--poll-interval", "0.05"
    )
    assert code == 0, out
    code, out = _invoke("ledger", "export", "--format", "jsonl")
    records = {r["key"]: r for r in map(orjson.loads, out.splitlines()) if r["job"] == "tea"}
    for key in ("sku-0", "sku-2", "sku-3"):
        assert records[key]["status"] == "succeeded" and records[key]["attempt"] == 2
        assert records[key]["previous_custom_id"].endswith("-a1")
    assert records["sku-1"]["status"] == "failed" and records["sku-1"]["attempt"] == 1
    ledger = open_ledger(tmp_path / ".batchpipe")
    row = next(ledger.items(job="tea", statuses=["succeeded"]))
    assert row.body["quality"] == "high"

    # a bad --set is refused before anything is sent
    code, out = _invoke("retry", "--job", "tea", "--set", "colour=red")
    assert code == 2 and "--set" in out


def _ledger_dump(workdir: Path) -> list[str]:
    """Every row of every table of the ledger, as SQL (what a refused command must leave untouched)."""
    import sqlite3

    with sqlite3.connect(workdir / "ledger.sqlite") as db:
        return list(db.iterdump())


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad_set",
    [
        "quality=ultra",  # a value the model refuses
        "size=12x12",
        "model=dall-e-2",  # not a GPT Image model
        "n=0",
    ],
)
def test_a_refused_retry_leaves_the_ledger_as_it_was_and_never_strands_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_set: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    manifest = _manifest(tmp_path / "m.jsonl", 3, blocked=set())
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", "--poll-interval", "0.05")
    assert code == 0, out
    before = _ledger_dump(tmp_path / ".batchpipe")

    code, out = _invoke("retry", "--job", "tea", "--status", "succeeded", "--set", bad_set, "--poll-interval", "0.05")
    assert code == 2, out
    assert "nothing was submitted" in out and "Traceback" not in out
    assert _ledger_dump(tmp_path / ".batchpipe") == before  # no run opened, no item touched

    # the job is not stranded: a good retry of the same items runs at once
    code, out = _invoke(
        "retry", "--job", "tea", "--status", "succeeded", "--set", "quality=high", "--poll-interval", "0.05"
    )
    assert code == 0, out
    ledger = open_ledger(tmp_path / ".batchpipe")
    latest = ledger.latest_run("tea")
    assert latest is not None and latest["status"] == "finished"
