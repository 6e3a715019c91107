"""Bad input through the real command line: a located message, exit code 2, no traceback, nothing submitted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = b'{"key": "a", "prompt": "a red mug", "model": "gpt-image-2.5-flare"}\n'
CASES = {
    "not json": (GOOD + b"{not json\n", ":2"),
    "wrong type": (GOOD + b'{"key": "b", "prompt": "x", "model": "gpt-image-2.5-flare", "n": "two"}\n', "n"),
    "duplicate key": (GOOD + GOOD, "key"),
    "unknown field": (GOOD + b'{"key": "b", "prompt": "x", "model": "gpt-image-2.5-flare", "colour": 1}\n', "colour"),
    "empty prompt": (GOOD + b'{"key": "b", "prompt": "  ", "model": "gpt-image-2.5-flare"}\n', "prompt"),
    "size refused": (
        GOOD + b'{"key": "b", "prompt": "x", "model": "gpt-image-2.6-flare", "size": "2048x2048"}\n',
        "size",
    ),
    "path key": (GOOD + b'{"key": "../../etc/x", "prompt": "x", "model": "gpt-image-2.5-flare"}\n', "key"),
    "non utf-8": (GOOD + b'{"key": "b", "prompt": "caf\xe9", "model": "gpt-image-2.5-flare"}\n', ":2"),
    "empty file": (b"", "empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_manifests_exit_2_with_a_located_message(tmp_path: Path, case: str) -> None:
    data, expected = CASES[case]
    manifest = tmp_path / "items.jsonl"
    manifest.write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-m", "batchpipe", "--log-json", "run", "--manifest", str(manifest), "--job-name", "bad",
         "--workdir", str(tmp_path / "w"), "--api", "emulator"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "items.jsonl" in proc.stderr and expected in proc.stderr
    assert "nothing was submitted" in proc.stderr or case == "empty file"
    assert not list((tmp_path / "w").glob("shards/*.jsonl"))  # no shard survives
    assert not (tmp_path / "w" / "emulator").exists() or not any((tmp_path / "w" / "emulator").rglob("files/*"))
