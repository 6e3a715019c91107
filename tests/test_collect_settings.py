"""Collector concurrency is settable: ``[run] collect_workers`` / ``collect_concurrency`` in the job spec and
``--collect-workers`` on ``batchpipe run`` and ``batchpipe retry`` (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpipe.cli.main import main as cli
from batchpipe.errors import JobSpecError
from batchpipe.input.jobspec import JobSpec, RunSection
from batchpipe.runtime import wiring
from batchpipe.runtime.settings import RunOptions, options_from_spec


def _job(tmp_path: Path, run_section: str) -> Path:
    (tmp_path / "items.jsonl").write_text('{"key": "a", "prompt": "x"}\n')
    path = tmp_path / "job.toml"
    path.write_text(f'[job]\nname = "p"\n[manifest]\npath = "items.jsonl"\n[run]\n{run_section}\n')
    return path


def test_defaults_match_run_options(tmp_path: Path) -> None:
    options = options_from_spec(RunSection(), workdir=tmp_path)
    assert (options.collect_workers, options.collect_concurrency) == (4, 2)
    assert (RunOptions(workdir=tmp_path).collect_workers, RunOptions(workdir=tmp_path).collect_concurrency) == (4, 2)


def test_job_spec_sets_both(tmp_path: Path) -> None:
    spec = JobSpec.load(_job(tmp_path, "collect_workers = 8\ncollect_concurrency = 3"))
    assert (spec.run.collect_workers, spec.run.collect_concurrency) == (8, 3)
    options = options_from_spec(spec.run, workdir=tmp_path)
    assert (options.collect_workers, options.collect_concurrency) == (8, 3)
    # the command line's value comes in as an override and wins
    assert options_from_spec(spec.run, workdir=tmp_path, collect_workers=2).collect_workers == 2


@pytest.mark.parametrize("line", ["collect_workers = 0", "collect_workers = 65", "collect_concurrency = 0"])
def test_job_spec_rejects_out_of_range(tmp_path: Path, line: str) -> None:
    with pytest.raises(JobSpecError) as info:
        JobSpec.load(_job(tmp_path, line))
    assert "collect_" in str(info.value.field)


def test_run_passes_collect_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_execute(request: Any, **_: Any) -> int:
        seen["options"] = request.options
        return 0

    monkeypatch.setattr(wiring, "execute", fake_execute)
    job = _job(tmp_path, "collect_workers = 8")
    args = ["run", str(job), "--api", "emulator", "--workdir", str(tmp_path / "w")]
    result = CliRunner().invoke(cli, [*args, "--collect-workers", "6"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["options"].collect_workers == 6
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen["options"].collect_workers == 8  # the job spec's value when the option is absent
    result = CliRunner().invoke(cli, [*args, "--collect-workers", "0"])
    assert result.exit_code == 2


def test_retry_accepts_collect_workers() -> None:
    result = CliRunner().invoke(cli, ["retry", "--help"])
    assert "--collect-workers" in result.output
