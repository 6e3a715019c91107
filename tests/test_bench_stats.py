"""The benchmarks' pairing and statistics (``scripts/bench_common.py``): run order, per-round ratios,
min / median / max and target verdicts. No timing: contenders are plain functions returning fixed numbers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_common.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_common", module)
    spec.loader.exec_module(module)
    return module


def test_two_contenders_run_a_b_b_a(bench: ModuleType) -> None:
    order = bench.interleaved_order(["A", "B"], 4)
    assert [name for _, name in order] == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert [r for r, _ in order] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_three_contenders_reverse_every_other_round(bench: ModuleType) -> None:
    order = [name for _, name in bench.interleaved_order(["A", "B", "C"], 3)]
    assert order == ["A", "B", "C", "C", "B", "A", "A", "B", "C"]


@pytest.mark.parametrize("rounds", [0, -1])
def test_no_rounds_is_an_error(bench: ModuleType, rounds: int) -> None:
    with pytest.raises(ValueError, match="at least one round"):
        bench.interleaved_order(["A", "B"], rounds)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0], (3.0, 3.0, 3.0)),
        ([5.0, 1.0, 3.0], (1.0, 3.0, 5.0)),
        ([4.0, 1.0, 2.0, 10.0], (1.0, 3.0, 10.0)),  # even count: mean of the middle two
    ],
)
def test_spread_min_median_max(bench: ModuleType, values: list[float], expected: tuple[float, ...]) -> None:
    spread = bench.Spread.of(values)
    assert (spread.min, spread.median, spread.max) == expected
    assert spread.values == tuple(values)


def test_run_interleaved_calls_in_order_and_pairs_each_round(bench: ModuleType) -> None:
    calls: list[tuple[str, int]] = []
    speed = {"A": [10.0, 20.0, 30.0], "B": [5.0, 5.0, 10.0]}

    def contender(name: str) -> Any:
        def run(r: int) -> dict[str, Any]:
            calls.append((name, r))
            return {"items_per_s": speed[name][r]}

        return run

    seen: list[str] = []
    paired = bench.run_interleaved(
        {"A": contender("A"), "B": contender("B")}, 3, show=lambda r, name, result: seen.append(name)
    )
    assert calls == [("A", 0), ("B", 0), ("B", 1), ("A", 1), ("A", 2), ("B", 2)]
    assert seen == ["A", "B", "B", "A", "A", "B"]
    assert paired.rounds == 3 and len(paired.loads) == 6
    assert [run["order"] for run in paired.runs["B"]] == [1, 2, 5]
    ratio = paired.ratio("A", "B", "items_per_s")  # per round: 10/5, 20/5, 30/10
    assert ratio.values == (2.0, 4.0, 3.0)
    assert (ratio.min, ratio.median, ratio.max) == (2.0, 3.0, 4.0)
    assert paired.spread("B", "items_per_s").median == 5.0


@pytest.mark.parametrize(
    ("op", "value", "on", "met"),
    [
        (">=", 3.0, "median", True),
        (">=", 3.01, "median", False),
        ("<=", 4.0, "max", True),
        ("<=", 3.5, "max", False),
        ("<=", 3.5, "median", True),
    ],
)
def test_target_judges_the_chosen_value(bench: ModuleType, op: str, value: float, on: str, met: bool) -> None:
    assert bench.Target(op, value, on).met(bench.Spread.of([2.0, 3.0, 4.0])) is met


def test_final_line_quotes_every_figure(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    report = bench.Report("demo")
    report.add_loads([1.0, 2.0, 3.0])
    report.figure("x_vs_y", bench.Spread.of([0.3, 0.4, 0.5]), bench.Target(">=", 0.35))
    report.figure("rss_mb", bench.Spread.of([100.0, 400.0, 120.0]), bench.Target("<=", 300.0, "max"))
    report.value("items", 7)
    line = report.final()
    assert line == capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("FINAL bench=demo ")
    fields = dict(pair.split("=", 1) for pair in line.removeprefix("FINAL ").split())
    assert fields["x_vs_y"] == "0.300/0.400/0.500" and fields["x_vs_y_met"] == "met"
    assert fields["x_vs_y_target"] == ">=0.350"
    assert fields["rss_mb"] == "100.0/120.0/400.0" and fields["rss_mb_met"] == "missed"
    assert fields["load1"] == "1.000/2.000/3.000" and fields["items"] == "7"
