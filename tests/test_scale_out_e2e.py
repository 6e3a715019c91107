"""End to end with state off this machine: ``batchpipe run`` on the embedded emulator with ``--ledger
postgresql://...`` (the session's embedded PostgreSQL) and ``--store s3://...`` (the session's SeaweedFS), then
``status`` and ``ledger export`` from the same URLs; every image is read back from S3 and matches its ledger row."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import obstore
import orjson
import pytest
from click.testing import CliRunner

from batchpipe.adapters.postgres_ledger import PostgresLedger
from batchpipe.adapters.s3_store import open_s3_store
from batchpipe.cli.main import main
from batchpipe.runtime.runner import shard_location

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--log-json", "--log-level", "warning", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("BATCHPIPE_LEDGER", raising=False)
    monkeypatch.delenv("BATCHPIPE_STORE", raising=False)
    return tmp_path


@pytest.mark.slow
def test_a_job_runs_on_a_postgres_ledger_and_an_s3_store(
    workspace: Path,
    fresh_postgres_url: Callable[[], str],
    s3_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    ledger_url, store_url = fresh_postgres_url(), s3_server.new_prefix()

    code, _, err = _invoke("ledger", "init", "--ledger", ledger_url)
    assert code == 0, err
    code, _, err = _invoke(
        "run",
        "jobs/catalog-nightly.toml",
        "--limit",
        "12",
        "--poll-interval",
        "0.1",
        "--ledger",
        ledger_url,
        "--store",
        store_url,
    )
    assert code == 0, err
    assert f"images in {store_url}" in err
    assert not (workspace / ".batchpipe" / "ledger.sqlite").exists()  # the ledger is the server's
    assert not any((workspace / ".batchpipe" / "out").rglob("*.png"))  # the images are the bucket's

    monkeypatch.setenv("BATCHPIPE_LEDGER", ledger_url)  # the variable serves as well as the option
    code, out, _ = _invoke("status", "--json")
    assert code == 0 and orjson.loads(out)["current_items"] == {"succeeded": 12}

    code, out, _ = _invoke("ledger", "export", "--format", "jsonl")
    records = [orjson.loads(line) for line in out.splitlines()]
    assert len(records) == 12
    store = open_s3_store(store_url, dict(s3_server.env()))
    for record in records:
        assert record["status"] == "succeeded" and record["c2pa_state"] == "trusted"
        assert str(record["output_uri"]).startswith(store_url + "/")
        data = store.read(record["output_uri"])
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
    listed = obstore.list(store.objects, prefix=store_url.partition("//")[2].partition("/")[2]).collect()
    shard_objects = [o for o in listed if "/_batchpipe/shards/" in o["path"]]
    assert len(listed) - len(shard_objects) == 12  # one object per image, and besides them only the shard files
    ledger = PostgresLedger(ledger_url)
    try:  # the shard files travel through the store (workers on other machines upload them): one per shard, whole
        shards = ledger.shards()
        assert len(shard_objects) == len(shards) >= 1
        for shard in shards:
            data = store.read(shard_location(store, shard.name))
            assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes
    finally:
        ledger.close()

    # the same command again: a new nightly run on the shared ledger, nothing changed, nothing sent
    code, _, err = _invoke(
        "run", "jobs/catalog-nightly.toml", "--limit", "12", "--poll-interval", "0.1", "--store", store_url
    )
    assert code == 0, err
    assert "skipped 12 item(s)" in err
    ledger = PostgresLedger(ledger_url)
    try:
        assert len(ledger.batches()) == 1
    finally:
        ledger.close()


@pytest.mark.slow
def test_verify_and_report_read_the_images_back_from_s3(
    workspace: Path,
    fresh_postgres_url: Callable[[], str],
    s3_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ledger verify` reads every recorded s3:// object back (sha256, size, C2PA again) and names one that was
    replaced; `report` makes its thumbnails from the bucket's bytes and links each to a presigned URL that
    serves the image."""
    import httpx

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    ledger_url, store_url = fresh_postgres_url(), s3_server.new_prefix()
    monkeypatch.setenv("BATCHPIPE_LEDGER", ledger_url)
    code, _, err = _invoke(
        "run", "jobs/catalog-nightly.toml", "--limit", "6", "--poll-interval", "0.1", "--store", store_url
    )
    assert code == 0, err

    code, out, err = _invoke("ledger", "verify", "--json")
    assert code == 0, err
    summary = orjson.loads(out)
    assert summary["checked"] == summary["matched"] == 6 and summary["c2pa"] == {"trusted": 6} and summary["ok"]
    assert summary["trust"] == "emulator"  # the setting the run verified with

    # someone replaces one object in the bucket: verify names it and exits 1
    code, out, _ = _invoke("ledger", "export", "--format", "jsonl")
    victim = orjson.loads(out.splitlines()[0])
    store = open_s3_store(store_url, dict(s3_server.env()))
    obstore.put(store.objects, store._key(victim["output_uri"]), b"not the image")
    code, out, _ = _invoke("ledger", "verify", "--json")
    assert code == 1
    summary = orjson.loads(out)
    assert summary["matched"] == 5 and [p["key"] for p in summary["problems"]] == [victim["key"]]
    assert "other bytes" in summary["problems"][0]["problem"]
    code, out, _ = _invoke("ledger", "verify")
    assert code == 1 and f"{victim['key']} ({victim['custom_id']}) {victim['output_uri']}: other bytes" in out

    code, out, err = _invoke("report", "--output", str(workspace / "r"))
    assert code == 0, err
    assert "thumbnails: 5 made, 0 reused, 1 unreadable" in err  # the replaced object is not an image
    thumbs = list((workspace / "r" / "thumbs").rglob("*.webp"))
    assert len(thumbs) == 5
    items_js = (workspace / "r" / "items.js").read_text(encoding="utf-8")
    links = sorted(set(re.findall(r"https?://127\.0\.0\.1:\d+/[^\"\\]+", items_js)))
    assert len(links) == 6 and all("X-Amz-Signature" in link for link in links)
    bodies = [httpx.get(link.replace("\\u0026", "&")) for link in links]
    assert all(b.status_code == 200 for b in bodies)
    assert sorted(b.content[:4] for b in bodies) == sorted([b"\x89PNG"] * 5 + [b"not "])  # the bucket's bytes
