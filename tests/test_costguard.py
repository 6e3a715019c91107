"""The cost guard: the estimate printed before `run` and `retry` spend, and the cap that refuses (exit 2)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchpipe.cli.main import main
from batchpipe.domain.items import Item
from batchpipe.runtime.costguard import CostCapError, SpendEstimate, check_cap, estimate_items

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-json", "--log-level", "warning", *args], catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def _estimate(out: str) -> float:
    found = re.search(r"estimated cost: \$([0-9.]+) for (\d+) request", out)
    assert found, out
    return float(found.group(1))


def test_estimate_and_cap_are_pure() -> None:
    item = Item(key="a", endpoint="/v1/images/generations", body={"prompt": "a mug", "model": "gpt-image-2"})
    one = estimate_items([item, "a problem"])
    assert one.requests == 1 and one.cost_usd > 0
    assert estimate_items([item], succeeded={("a", "x")}).requests == 1
    check_cap(one, None, source="s", field="f", raise_hint="h")
    check_cap(one, one.cost_usd, source="s", field="f", raise_hint="h")
    with pytest.raises(CostCapError, match=r"above the cap \$0.00.*nothing was submitted"):
        check_cap(one, 0.000001, source="s", field="f", raise_hint="h")
    assert "no cap" in SpendEstimate().line(None)


@pytest.mark.slow
def test_run_prints_the_estimate_and_the_cap_refuses(workspace: Path) -> None:
    spec = workspace / "jobs" / "catalog-nightly.toml"
    code, out = _invoke("run", str(spec), "--limit", "30", "--max-cost", "0.01")
    assert code == 2, out
    estimate = _estimate(out)
    assert estimate > 0.01
    assert "above the cap $0.01; nothing was submitted" in out and "--max-cost" in out
    assert not (workspace / ".batchpipe" / "ledger.sqlite").exists()  # nothing opened, nothing sent

    # the job spec's cap, raised on the command line
    text = spec.read_text(encoding="utf-8").replace("[run]\n", "[run]\nmax_cost_usd = 0.02\n", 1)
    spec.write_text(text, encoding="utf-8")
    code, out = _invoke("run", str(spec), "--limit", "30")
    assert code == 2 and "field 'run.max_cost_usd'" in out and "cap $0.02" in out
    code, out = _invoke("run", str(spec), "--limit", "30", "--max-cost", "5", "--poll-interval", "0.1")
    assert code == 0, out
    assert "cap $5.00" in out and _estimate(out) == pytest.approx(estimate)

    # nothing changed: the same run again is estimated at nothing (every item skipped as unchanged)
    code, out = _invoke("run", str(spec), "--limit", "30", "--max-cost", "5", "--poll-interval", "0.1")
    assert code == 0 and "estimated cost: $0.0000 for 0 request(s)" in out and "30 already succeeded" in out

    # retry at a higher quality: estimated first, refused above the cap, nothing submitted
    code, out = _invoke("retry", "--status", "succeeded", "--set", "quality=high", "--max-cost", "0.5")
    assert code == 2, out
    assert _estimate(out) > estimate and "nothing was submitted" in out
    code, out = _invoke("status", "--json")
    assert orjson.loads(out)["current_items"] == {"succeeded": 30}


def test_retry_refuses_an_unknown_status(tmp_path: Path) -> None:
    code, out = _invoke("retry", "--workdir", str(tmp_path), "--status", "failed", "--status", "faild")
    assert code == 2 and "unknown --status 'faild'" in out and "succeeded" in out
