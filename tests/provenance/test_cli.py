"""`batchpipe verify`: output forms and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from batchpipe.provenance.cli import iter_files, verify_command

from .conftest import FIXTURES, REAL_OPENAI_PNG


def test_unknown_trust_value_is_a_usage_error() -> None:
    result = CliRunner().invoke(verify_command, ["--trust", "bogus", str(REAL_OPENAI_PNG)])
    assert result.exit_code == 2
    assert "--trust" in result.output
    assert "unknown trust setting 'bogus'" in result.output
    assert "default, emulator, none" in result.output
    assert "Traceback" not in result.output


def test_nonexistent_path_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(verify_command, [str(tmp_path / "missing.png")])
    assert result.exit_code == 2


def test_all_good_exits_zero_with_table() -> None:
    generated = FIXTURES / "generated"
    result = CliRunner().invoke(
        verify_command,
        [
            str(REAL_OPENAI_PNG),
            str(generated / "openai-like_signed.png"),
            str(generated / "openai-like_signed.jpg"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trusted" in result.output
    assert "valid" in result.output
    assert "OpenAI OpCo" in result.output
    assert "3 file(s) checked with --trust default: 1 trusted, 2 valid" in " ".join(result.output.split())


def test_one_bad_file_exits_one(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("hello")
    result = CliRunner().invoke(verify_command, [str(REAL_OPENAI_PNG), str(tmp_path)])
    assert result.exit_code == 1
    assert "unreadable" in result.output


def test_json_lines_one_per_file_in_walk_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.png").write_bytes((FIXTURES / "generated" / "openai-like_stripped.png").read_bytes())
    (tmp_path / "a.png").write_bytes((FIXTURES / "generated" / "openai-like_signed.png").read_bytes())
    result = CliRunner().invoke(verify_command, ["--json", "--trust", "none", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [Path(r["path"]).name for r in records] == ["a.png", "z.png"]
    assert [r["c2pa_state"] for r in records] == ["valid", "missing"]
    assert records[0]["failure_codes"] == ["signingCredential.untrusted"]


def test_empty_directory_exits_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(verify_command, [str(tmp_path)])
    assert result.exit_code == 1
    assert "no files found" in result.output


def test_iter_files_walks_recursively_sorted(tmp_path: Path) -> None:
    for rel in ("b/2.png", "b/1.png", "a/c/3.jpg", "top.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_files([tmp_path])]
    assert found == ["top.webp", "a/c/3.jpg", "b/1.png", "b/2.png"]
    assert list(iter_files([tmp_path / "top.webp"])) == [tmp_path / "top.webp"]
