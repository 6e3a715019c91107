"""End to end over real HTTP: the main job on the embedded emulator, then status, export and verify."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner

from batchpipe.adapters.sqlite_ledger import open_ledger
from batchpipe.cli.main import main
from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped nightly job and its catalog, with the API key removed from the environment."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--log-json", "--log-level", "warning", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_catalog_job_end_to_end_on_the_emulator(workspace: Path) -> None:
    code, _, err = _invoke("run", "jobs/catalog-nightly.toml", "--limit", "40", "--poll-interval", "0.1")
    assert code == 0, err
    assert "embedded emulator" in err

    code, out, _ = _invoke("status", "--json")
    status = orjson.loads(out)
    assert code == 0 and status["current_items"] == {"succeeded": 40}
    assert status["cost_usd"] > 0

    code, out, _ = _invoke("ledger", "export", "--format", "jsonl")
    records = [orjson.loads(line) for line in out.splitlines()]
    assert len(records) == 40 and len({r["key"] for r in records}) == 40
    for record in records:
        assert record["status"] == "succeeded" and record["error_code"] is None
        data = Path(record["output_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert record["c2pa_state"] == "trusted"

    code, out, _ = _invoke("verify", "--trust", "emulator", "--json", ".batchpipe/out")
    reports = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and len(reports) == 40
    assert {r["c2pa_state"] for r in reports} == {"trusted"}
    code, out, _ = _invoke("verify", "--trust", "default", "--json", records[0]["output_path"])
    assert orjson.loads(out)["c2pa_state"] == "valid"  # the emulator root is not on the real trust lists

    # clean-up: every file the run created on the Files API is deleted once collected (gotchas #6)
    with EmbeddedEmulator(EmulatorConfig(state_dir=workspace / ".batchpipe" / "emulator")) as emulator:
        listed = httpx.get(f"{emulator.base_url}/files", headers={"Authorization": "Bearer x"}).json()
    assert listed["data"] == []
    ledger = open_ledger(workspace / ".batchpipe")
    files = ledger.files()
    assert {f["role"] for f in files} == {"input", "output"} and all(f["deleted_at"] for f in files)
    ledger.close()

    # the same command again resumes the finished job as a new nightly run: nothing changed, nothing sent
    code, _, err = _invoke("run", "jobs/catalog-nightly.toml", "--limit", "40", "--poll-interval", "0.1")
    assert code == 0, err
    assert "skipped 40 item(s)" in err
    code, out, _ = _invoke("status", "--json")
    assert orjson.loads(out)["batches"] == {"completed": 1}


def test_bad_spec_exits_2_with_file_line_and_field(workspace: Path) -> None:
    spec = workspace / "jobs" / "catalog-nightly.toml"
    spec.write_text(spec.read_text().replace('size = "1024x1024"', 'size = "999x999"'))
    code, _, err = _invoke("run", "jobs/catalog-nightly.toml", "--limit", "5")
    assert code == 2
    assert "catalog-nightly.toml" in err and "defaults.size" in err
    assert "Traceback" not in err
    assert not (workspace / ".batchpipe" / "ledger.sqlite").exists() or "submitted" not in err
    assert not (workspace / ".batchpipe").exists()  # refused before any ledger, shard or emulator existed


def test_skip_invalid_records_each_invalid_item_once_and_submits_the_rest(workspace: Path) -> None:
    manifest = workspace / "items.jsonl"
    manifest.write_bytes(
        b'{"key": "ok", "prompt": "a mug", "model": "gpt-image-2.5-flare"}\n'
        b'{"key": "bad", "prompt": "a mug", "model": "gpt-image-2.5-flare", "size": "9x9", "quality": "ultra"}\n'
    )
    code, _, err = _invoke(
        "run", "--manifest", str(manifest), "--job-name", "skip", "--skip-invalid", "--poll-interval", "0.1"
    )
    assert code == 1, err  # not every item succeeded
    code, out, _ = _invoke("ledger", "export", "--format", "jsonl")
    records = {r["key"]: r for r in map(orjson.loads, out.splitlines())}
    assert records["ok"]["status"] == "succeeded"
    assert records["bad"]["status"] == "invalid" and records["bad"]["error_code"] == "invalid_item"
    assert "size" in records["bad"]["error_message"] and "quality" in records["bad"]["error_message"]
