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


def test_the_tally_prices_each_body_as_the_model_table_does() -> None:
    """CostTally remembers a cost per request shape; every body still costs what estimate_usage and
    request_cost_usd give it, whatever shapes repeat or differ (sizes, qualities, n, prompt lengths, images,
    an unpriced model, a field that cannot be a dictionary key)."""
    from batchpipe.domain.spec import estimate_usage, request_cost_usd
    from batchpipe.runtime.costguard import CostTally

    bodies: list[dict[str, object]] = []
    for i in range(400):
        body: dict[str, object] = {
            "model": ("gpt-image-2", "gpt-image-1.5", "no-such-model")[i % 3],
            "prompt": "a mug " * (1 + i % 7),
            "size": ("1024x1024", "1536x1024", "1024x1536", "auto")[i % 4],
            "quality": ("low", "medium", "high", "auto")[(i // 4) % 4],
            "n": 1 + i % 3,
        }
        if i % 11 == 0:
            body["images"] = [{"image_url": "https://example.com/a.png"}] * (1 + i % 2)
            body["input_fidelity"] = "high"
        if i % 37 == 0:
            body["size"] = ["1024x1024"]  # unhashable: priced without the memo
        bodies.append(body)
    tally = CostTally()
    expected = 0.0
    unpriced = 0
    for body in bodies * 2:  # every shape twice: the second time from the memo
        tally.add(str(body["model"]), body)
        cost = request_cost_usd(str(body["model"]), estimate_usage(body))
        if cost is None:
            unpriced += 1
        else:
            expected += cost
    estimate = tally.estimate(skipped=3)
    assert estimate.requests == 800 and estimate.skipped == 3 and estimate.unpriced == unpriced > 0
    assert estimate.cost_usd == pytest.approx(expected, rel=1e-12) and expected > 0


@pytest.mark.slow
def test_without_a_cap_the_estimate_is_summed_while_the_run_builds(workspace: Path) -> None:
    """No cap: the manifest is read once, and the estimate printed after the build is the one a capped run
    prints before it (same items, same prices); a no-change re-run is estimated at nothing."""
    spec = workspace / "jobs" / "catalog-nightly.toml"
    fast = ("--poll-interval", "0.1")
    code, out = _invoke("run", str(spec), "--limit", "20", "--max-cost", "5", "--workdir", "w1", *fast)
    assert code == 0, out
    capped = _estimate(out)
    assert out.index("estimated cost") < out.index("built")  # capped: estimated before anything is built
    code, out = _invoke("run", str(spec), "--limit", "20", "--workdir", "w2", "--poll-interval", "0.1")
    assert code == 0, out
    assert "no cap (set [run] max_cost_usd or --max-cost)" in out and "for 20 request(s)" in out
    assert _estimate(out) == pytest.approx(capped) and capped > 0
    code, out = _invoke("run", str(spec), "--limit", "20", "--workdir", "w2", "--poll-interval", "0.1")
    assert code == 0 and "estimated cost: $0.0000 for 0 request(s)" in out and "20 already succeeded" in out, out
