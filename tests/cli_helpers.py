"""Helpers shared by the tests that drive the real CLI (imported as ``cli_helpers``: pytest puts ``tests/`` on
``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from batchpipe.cli.main import main


def teapot_manifest(path: Path, n: int, *, blocked: set[int], model: str = "gpt-image-2.5-flare") -> Path:
    """A plain JSONL manifest of ``n`` teapot prompts (keys ``sku-0``...); the prompts of ``blocked`` carry the
    emulator's moderation trigger (``EMULATOR_BLOCK``), so those items fail with ``moderation_blocked``."""
    lines = []
    for i in range(n):
        prompt = f"Product shot number {i} of a blue teapot"
        if i in blocked:
            prompt += " EMULATOR_BLOCK"
        lines.append(orjson.dumps({"key": f"sku-{i}", "prompt": prompt, "model": model, "quality": "low"}))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def invoke_merged(*args: str) -> tuple[int, str]:
    """``batchpipe --log-json --log-level warning ARGS`` in process: ``(exit code, stdout + stderr)``."""
    result = CliRunner().invoke(main, ["--log-json", "--log-level", "warning", *args], catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr
