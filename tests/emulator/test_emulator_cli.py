"""``batchpipe emulator serve`` flags become an EmulatorConfig (the server itself is stubbed)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import batchpipe.emulator.cli as emulator_cli
from batchpipe.emulator.config import EmulatorConfig


def test_serve_flags_build_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    seen: dict[str, Any] = {}

    def fake_run(config: EmulatorConfig, *, host: str, port: int) -> None:
        seen.update(config=config, host=host, port=port)

    monkeypatch.setattr(emulator_cli, "run_server", fake_run)
    result = CliRunner().invoke(
        emulator_cli.emulator_group,
        [
            "serve",
            "--port",
            "9001",
            "--state-dir",
            str(tmp_path),
            "--speed",
            "realistic",
            "--first-429",
            "batches.create=2",
            "--fault-5xx",
            "*=0.25",
            "--expire-after-lines",
            "3",
            "--expire-first-n",
            "1",
            "--shuffle-output",
            "--rpm-limit",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    config: EmulatorConfig = seen["config"]
    assert seen["port"] == 9001 and config.state_dir == tmp_path and config.speed.mode == "realistic"
    assert config.faults.routes["batches.create"].first_n_429 == 2
    assert config.faults.routes["*"].share_5xx == 0.25
    assert config.faults.expire_after_lines == 3 and config.faults.expire_first_n_batches == 1
    assert config.faults.shuffle_output and config.rpm_limit == 50


def test_serve_rejects_unknown_route(tmp_path) -> None:
    result = CliRunner().invoke(
        emulator_cli.emulator_group, ["serve", "--state-dir", str(tmp_path), "--fault-429", "nope=1"]
    )
    assert result.exit_code != 0 and "ROUTE=NUMBER" in result.output


def test_default_config_is_healthy_and_frozen() -> None:
    config = EmulatorConfig()
    assert config.faults.routes == {} and config.faults.expire_after_lines is None
    assert config.speed.delay("finalizing") == 0.0
    with pytest.raises(ValidationError, match="frozen"):
        config.rpm_limit = 1  # type: ignore[misc]
