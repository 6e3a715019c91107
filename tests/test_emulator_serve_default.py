"""`batchpipe emulator serve` without --state-dir, as the README's examples run it: a temporary state folder."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_without_state_dir_uses_a_temporary_folder(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from batchpipe.cli.main import main; main()", "emulator", "serve", "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        found = re.search(r"state in (\S+) \(temporary", first)
        assert found, first
        state = Path(found.group(1))
        for _ in range(100):
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": "Bearer x"})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert listed.status_code == 200 and state.is_dir()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as a person stops it
        proc.communicate(timeout=30)
    assert not state.exists()  # deleted at exit
    assert list(tmp_path.iterdir()) == []  # nothing left in the current folder
