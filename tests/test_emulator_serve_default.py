"""`batchpipe emulator serve` without --state-dir, as the README's examples run it: a default state folder under the
current directory (printed at start) that a restart keeps, like a real service keeps its files and batches."""

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


def _serve(cwd: Path, port: int) -> tuple[subprocess.Popen[str], Path]:
    """Start ``batchpipe emulator serve --port PORT`` in ``cwd``; returns it once it answers, and its state folder
    as printed on its first line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from batchpipe.cli.main import main; main()", "emulator", "serve", "--port", str(port)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()
    found = re.search(r"state in (\S+), the default", first)
    assert found, first
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": "Bearer x"})
            break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, Path(found.group(1))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)  # Ctrl-C, as a person stops it
    proc.communicate(timeout=30)


@pytest.mark.slow
def test_serve_without_state_dir_keeps_its_state_under_the_current_folder(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}/v1"
    auth = {"Authorization": "Bearer x"}
    proc, state = _serve(tmp_path, port)
    try:
        assert (tmp_path / state).resolve() == (
            tmp_path / ".batchpipe" / "emulator-server"
        ).resolve()  # not the embedded one's
        assert (tmp_path / state).is_dir()
        line = b'{"custom_id":"a","method":"POST","url":"/v1/images/generations","body":{}}\n'
        form = {"purpose": "batch"}
        uploaded = httpx.post(f"{base}/files", headers=auth, data=form, files={"file": ("in.jsonl", line)})
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["id"]
    finally:
        _stop(proc)
    assert (tmp_path / state).is_dir()  # kept at exit

    proc, again = _serve(tmp_path, port)  # a restart in the same folder finds the same files
    try:
        assert again == state
        listed = httpx.get(f"{base}/files", headers=auth)
        assert listed.status_code == 200
        assert file_id in [f["id"] for f in listed.json()["data"]]
    finally:
        _stop(proc)
