"""Issue 14, reprocessing that closes the loop, through the real CLI on the emulator: final failures are not sent
again unchanged, unknown filters are refused, `retry` goes back to the run's API, an exported-edited-run manifest
supersedes the originals, a new attempt never overwrites an earlier attempt's file, and `retry` asks before
spending in a terminal."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import orjson
import pytest
from cli_helpers import invoke_merged, teapot_manifest

from batchpipe.adapters.s3_store import open_s3_store
from batchpipe.adapters.sqlite_ledger import open_ledger
from batchpipe.domain.records import ITEM_COLUMNS, ItemRow
from batchpipe.runtime.reprocess import is_final_failure, manifest_retry_jobs, split_final_failures

REPO = Path(__file__).resolve().parents[1]
POLL = ("--poll-interval", "0.05")


_manifest = teapot_manifest
_invoke = invoke_merged


def _status(workdir: str = ".batchpipe") -> dict[str, Any]:
    code, out = _invoke("status", "--json", "--workdir", workdir)
    assert code == 0, out
    result: dict[str, Any] = orjson.loads(out)
    return result


def _records(*extra: str) -> list[dict[str, Any]]:
    code, out = _invoke("ledger", "export", "--format", "jsonl", *extra)
    assert code == 0, out
    return [orjson.loads(line) for line in out.splitlines()]


def _row(key: str, status: str, code: str | None, retryable: int | None) -> ItemRow:
    fields: dict[str, Any] = dict.fromkeys(ITEM_COLUMNS)
    fields.update(
        custom_id=f"bp-{key}-a1", job="tea", item_key=key, attempt=1, run_id="r", endpoint="/v1/images/generations",
        model="gpt-image-2", request_hash="", body_json='{"model":"gpt-image-2","prompt":"a pot","quality":"low"}',
        metadata_json="{}", source="m.jsonl:1", input_tokens_est=1, status=status, retryable=retryable,
        error_code=code, created_at=0.0, updated_at=0.0,
    )  # fmt: skip
    return ItemRow(**fields)


def test_which_failures_are_final_for_retry(tmp_path: Path) -> None:
    blocked, bad = _row("a", "failed", "moderation_blocked", 0), _row("b", "failed", "invalid_value", 0)
    photo, fault = _row("c", "failed", "invalid_image_url", 0), _row("d", "failed", "invalid_image", 0)
    server, expired = _row("e", "failed", "server_error", 1), _row("f", "expired", "batch_expired", 1)
    assert [is_final_failure(r) for r in (blocked, bad, photo, fault, server, expired)] == [
        True, True, False, False, False, False,
    ]  # fmt: skip
    rows = [blocked, bad, photo, server]
    assert split_final_failures(rows, {}) == ([photo, server], [blocked, bad])
    assert split_final_failures(rows, {"quality": "low"}) == ([photo, server], [blocked, bad])  # no change
    assert split_final_failures(rows, {"quality": "high"}) == (rows, [])
    assert split_final_failures(rows, {}, force=True) == (rows, [])

    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        b'{"key":"a","prompt":"x","metadata":{"retry_job":"tea","retry_of":"bp-a-a1"}}\n'
        b"not json\n"
        b'{"key":"b","prompt":"x","metadata":{"retry_job":"tea"}}\n{"key":"c","prompt":"x"}\n'
    )
    assert manifest_retry_jobs(manifest) == {"tea": 2}
    assert manifest_retry_jobs(tmp_path / "missing.jsonl") == {} and manifest_retry_jobs(tmp_path) == {}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "BATCHPIPE_LEDGER", "BATCHPIPE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("BATCHPIPE_CONFIRM_ABOVE_USD", raising=False)
    return tmp_path


@pytest.mark.slow
def test_final_failures_are_left_out_unless_the_request_changes_or_force(workspace: Path) -> None:
    manifest = _manifest(workspace / "m.jsonl", 3, blocked={1})
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", *POLL)
    assert code == 1, out

    # unknown filters are refused before anything is selected or sent, with what the ledger does hold
    code, out = _invoke("retry", "--error-code", "moderation_blockd")
    assert code == 2 and "unknown --error-code 'moderation_blockd'" in out, out
    assert "error codes in the ledger: moderation_blocked" in out and "Traceback" not in out
    code, out = _invoke("retry", "--job", "tea", "--error-code", "moderation_blocked", "--error-code", "nope")
    assert code == 2 and "'nope'" in out and "error codes of job 'tea': moderation_blocked" in out, out
    code, out = _invoke("retry", "--job", "tea", "--status", "faild")
    assert code == 2 and "unknown --status 'faild'" in out and "failed" in out, out
    code, out = _invoke("retry", "--c2pa-state", "trustd")
    assert code == 2 and "unknown --c2pa-state 'trustd'" in out and "trusted" in out, out

    # a plain retry: the moderation block is final, so it is left out, said so, with the flags that include it
    code, out = _invoke("retry", *POLL)
    assert code == 0, out
    assert "left out 1 item(s) whose failure is final (moderation_blocked 1)" in out
    assert "--set FIELD=VALUE" in out and "--force" in out
    assert "estimated cost" not in out and len(open_ledger(workspace / ".batchpipe").batches()) == 1  # nothing sent
    # a --set that changes nothing (the item already asked for low quality) is still the same request
    code, out = _invoke("retry", "--set", "quality=low", *POLL)
    assert code == 0 and "left out 1 item(s)" in out, out

    # --force sends it unchanged: blocked again, as a new attempt
    code, out = _invoke("retry", "--force", *POLL)
    assert code == 1, out
    assert "left out" not in out and "estimated cost: $" in out and "for 1 request(s)" in out
    row = {r["key"]: r for r in _records()}["sku-1"]
    assert row["attempt"] == 2 and row["status"] == "failed" and row["error_code"] == "moderation_blocked"

    # a changed request is sent: it succeeds and supersedes the failures
    code, out = _invoke("retry", "--set", "prompt=Product shot number 1 of a blue teapot", *POLL)
    assert code == 0, out
    assert "left out" not in out
    records = {r["key"]: r for r in _records()}
    assert records["sku-1"]["attempt"] == 3 and records["sku-1"]["status"] == "succeeded"
    assert _status()["current_items"] == {"succeeded": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def standalone_emulator(tmp_path: Path) -> Iterator[str]:
    """``batchpipe emulator serve`` in a process of its own; yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchpipe", "emulator", "serve", "--port", str(port),
         "--state-dir", str(tmp_path / "standalone-state")],
        stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base_url}/files", headers={"Authorization": "Bearer x"})
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base_url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def _batches_on(base_url: str) -> int:
    listed = httpx.get(f"{base_url}/batches", params={"limit": 100}, headers={"Authorization": "Bearer x"}).json()
    return len(listed["data"])


@pytest.mark.slow
def test_retry_goes_back_to_the_api_of_the_run_it_retries(
    workspace: Path, standalone_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url = standalone_emulator
    # a fake key made here (as tests/test_secrets.py does), so no key-shaped literal sits in the repository
    secret = "-".join(("sk", "test", secrets.token_hex(20)))
    outputs: list[str] = []

    def call(*args: str) -> tuple[int, str]:
        code, out = _invoke(*args)
        outputs.append(out)
        return code, out

    manifest = _manifest(workspace / "m.jsonl", 2, blocked={1})
    code, out = call("run", "--manifest", str(manifest), "--job-name", "tea", "--api", base_url, *POLL)
    assert code == 1, out
    assert _batches_on(base_url) == 1

    # a plain retry goes to the standalone emulator again, not to a new embedded one
    code, out = call("retry", "--set", "prompt=Product shot number 1 of a blue teapot", *POLL)
    assert code == 0, out
    assert f"api: {base_url}, as run tea-" in out and "embedded emulator" not in out
    assert _batches_on(base_url) == 2
    ledger = open_ledger(workspace / ".batchpipe")
    assert ledger.latest_run("tea") is not None and ledger.latest_run("tea")["api"] == base_url  # type: ignore[index]
    ledger.close()
    # --api still chooses: the embedded emulator this time
    code, out = call("retry", "--status", "succeeded", "--set", "quality=medium", "--api", "emulator", *POLL)
    assert code == 0 and "embedded emulator" in out and "api: " not in out, out
    assert _batches_on(base_url) == 2

    # a run against "openai" (here the standalone emulator through OPENAI_BASE_URL, with a key): the retry uses
    # openai again; without the key it refuses (exit 2) rather than quietly rendering on an emulator
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    other = _manifest(workspace / "o.jsonl", 1, blocked={0})
    code, out = call("run", "--manifest", str(other), "--job-name", "pot", "--api", "openai", *POLL)
    assert code == 1, out
    monkeypatch.delenv("OPENAI_API_KEY")
    code, out = call("retry", "--job", "pot", "--set", "prompt=a teapot", *POLL)
    assert code == 2, out
    assert "used the API 'openai'" in out and "OPENAI_API_KEY" in out and "--api" in out
    assert _batches_on(base_url) == 3  # nothing sent
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code, out = call("retry", "--job", "pot", "--set", "prompt=a teapot", *POLL)
    assert code == 0, out
    assert f"api: {base_url}, as run pot-" in out and _batches_on(base_url) == 4

    # a URL with credentials (refused when given, so only a hand-edited ledger holds one) is never repeated
    import sqlite3

    with sqlite3.connect(workspace / ".batchpipe" / "ledger.sqlite") as db:
        db.execute("UPDATE runs SET api = 'http://me:hunter2@127.0.0.1:9/v1' WHERE job = 'pot'")
    code, out = _invoke("retry", "--job", "pot", "--status", "succeeded", "--set", "quality=high", *POLL)
    assert code == 2 and "hunter2" not in out and "pass --api" in out, out
    with sqlite3.connect(workspace / ".batchpipe" / "ledger.sqlite") as db:
        db.execute("UPDATE runs SET api = 'openai' WHERE job = 'pot'")

    # the key is never echoed nor recorded: only labels and base URLs
    with sqlite3.connect(workspace / ".batchpipe" / "ledger.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert secret not in dump and not any(secret in out for out in outputs)
    assert {row[0] for row in sqlite3.connect(workspace / ".batchpipe" / "ledger.sqlite").execute(
        "SELECT DISTINCT api FROM runs")} == {base_url, "emulator", "openai"}  # fmt: skip


@pytest.mark.slow
def test_an_exported_edited_manifest_supersedes_the_originals(workspace: Path) -> None:
    manifest = _manifest(workspace / "m.jsonl", 4, blocked={1, 3})
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", *POLL)
    assert code == 1, out

    code, out = _invoke("retry", "--job", "tea", "--export", "week.jsonl")
    assert code == 0, out
    assert "2 of them failed for good (moderation_blocked)" in out and "batchpipe run --manifest week.jsonl" in out
    lines = [orjson.loads(line) for line in Path("week.jsonl").read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == ["sku-1", "sku-3"]
    assert all(
        line["metadata"]["retry_job"] == "tea" and line["metadata"]["retry_of"].endswith("-a1") for line in lines
    )
    edited = [{**line, "prompt": line["prompt"].replace(" EMULATOR_BLOCK", "")} for line in lines]
    Path("week.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in edited))

    # under another job name they would be new items of another job: said so before anything is spent
    code, out = _invoke("run", "--manifest", "week.jsonl", "--job-name", "week-retry", "--max-cost", "0.000001")
    assert code == 2, out
    assert "exported from job 'tea'" in out and "--job-name tea (or without --job-name)" in out

    # without --job-name the job comes from the file: new attempts, the originals superseded
    code, out = _invoke("run", "--manifest", "week.jsonl", *POLL)
    assert code == 0, out
    assert "job tea: named by the manifest's lines" in out
    status = _status()
    assert status["current_items"] == {"succeeded": 4}  # each product once
    assert status["items"] == {"succeeded": 4, "superseded": 2}
    records = {r["key"]: r for r in _records()}
    for key in ("sku-1", "sku-3"):
        assert records[key]["attempt"] == 2 and records[key]["previous_custom_id"].endswith("-a1")
        assert records[key]["status"] == "succeeded"

    # a manifest naming several jobs needs --job-name
    mixed = [edited[0], {**edited[1], "metadata": {**edited[1]["metadata"], "retry_job": "pot"}}]
    Path("mixed.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in mixed))
    code, out = _invoke("run", "--manifest", "mixed.jsonl")
    assert code == 2 and "several jobs: pot (1 line(s)), tea (1 line(s))" in out, out


def _check_every_attempt_file(records: list[dict[str, Any]], read: Any) -> set[str]:
    """Every recorded image still matches its row's sha256; returns the locations."""
    locations = set()
    for record in records:
        if record["output_uri"] is None:
            continue
        data = read(record["output_uri"])
        assert hashlib.sha256(data).hexdigest() == record["sha256"], record["custom_id"]
        locations.add(record["output_uri"])
    return locations


@pytest.mark.slow
def test_a_new_attempt_never_overwrites_an_earlier_attempts_file(workspace: Path) -> None:
    manifest = _manifest(workspace / "m.jsonl", 2, blocked=set())
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", *POLL)
    assert code == 0, out
    code, out = _invoke("retry", "--job", "tea", "--status", "succeeded", "--set", "quality=high", *POLL)
    assert code == 0, out

    records = _records("--all-attempts")
    assert sorted((r["key"], r["attempt"], r["status"]) for r in records) == [
        ("sku-0", 1, "superseded"), ("sku-0", 2, "succeeded"), ("sku-1", 1, "superseded"), ("sku-1", 2, "succeeded"),
    ]  # fmt: skip
    locations = _check_every_attempt_file(records, lambda uri: Path(uri.removeprefix("file://")).read_bytes())
    assert len(locations) == 4
    assert all(r["output_path"].endswith("-a2.png") for r in records if r["attempt"] == 2)

    code, out = _invoke("verify", "--trust", "emulator", "--json", ".batchpipe/out")
    reports = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and len(reports) == 4 and {r["c2pa_state"] for r in reports} == {"trusted"}


@pytest.mark.slow
def test_a_new_attempt_never_overwrites_an_earlier_attempts_object_in_s3(
    workspace: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store_url = s3_server.new_prefix()
    manifest = _manifest(workspace / "m.jsonl", 2, blocked=set())
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", "--store", store_url, *POLL)
    assert code == 0, out
    code, out = _invoke(
        "retry", "--job", "tea", "--status", "succeeded", "--set", "quality=high", "--store", store_url, *POLL
    )
    assert code == 0, out
    store = open_s3_store(store_url, dict(s3_server.env()))
    records = _records("--all-attempts")
    assert len(records) == 4 and all(str(r["output_uri"]).startswith(store_url + "/") for r in records)
    assert len(_check_every_attempt_file(records, store.read)) == 4
    listed = obstore.list(store.objects, prefix=store_url.partition("//")[2].partition("/")[2]).collect()
    assert len(listed) == 4  # one object per attempt's image


def _in_a_terminal(args: list[str], answer: bytes, cwd: Path) -> tuple[int, str]:
    """Run ``batchpipe ARGS`` with stdin a pseudo-terminal (so it may ask) and ``answer`` typed into it."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchpipe", "--log-json", "--log-level", "warning", *args],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
        )  # fmt: skip
        os.write(master, answer)
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, (out + err).decode()


@pytest.mark.slow
def test_retry_asks_before_spending_in_a_terminal(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _manifest(workspace / "m.jsonl", 2, blocked=set())
    code, out = _invoke("run", "--manifest", str(manifest), "--job-name", "tea", *POLL)
    assert code == 0, out
    retry = ["retry", "--status", "succeeded", "--set", "quality=high", *POLL]

    # above the threshold in a terminal: the estimate, then the question; "n" submits nothing
    code, out = _in_a_terminal([*retry, "--confirm-above", "0.01"], b"n\n", workspace)
    assert code == 2, out
    estimate = re.search(r"estimated cost: \$([0-9.]+) for 2 request\(s\)", out)
    assert estimate and float(estimate.group(1)) > 0.01, out
    assert out.index("estimated cost") < out.index("spend about $") and "[y/N]" in out
    assert "not confirmed; nothing was submitted" in out
    assert len(open_ledger(workspace / ".batchpipe").batches()) == 1 and _status()["items"] == {"succeeded": 2}

    # the threshold from the environment too; below it no question is asked
    monkeypatch.setenv("BATCHPIPE_CONFIRM_ABOVE_USD", "1000")
    code, out = _in_a_terminal(["retry", "--status", "succeeded", "--set", "quality=medium", *POLL], b"", workspace)
    assert code == 0 and "spend about" not in out, out
    monkeypatch.delenv("BATCHPIPE_CONFIRM_ABOVE_USD")

    # --yes: no question, it runs
    code, out = _in_a_terminal([*retry, "--confirm-above", "0.01", "--yes"], b"", workspace)
    assert code == 0 and "spend about" not in out and "estimated cost" in out, out
    assert len(open_ledger(workspace / ".batchpipe").batches()) == 3
