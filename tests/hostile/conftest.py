"""Fixtures: the hostile server on a real loopback port (uvicorn in a thread), and a runner for the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from hostile.server import HostileState, Scenario, create_app

REPO = Path(__file__).resolve().parents[2]
#: The fake key: it must never reach the workdir, stdout or stderr.
SECRET = "sk-hostile-SECRET123-" + "Zq7Xw2Vb9Nn4Kk1Lm8Pp"


@dataclass
class HostileServer:
    """A running hostile server: ``base_url`` ends in ``/v1``; ``state`` holds its objects and counters."""

    state: HostileState
    host: str
    port: int

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"


@pytest.fixture
def hostile() -> Iterator[Callable[[Scenario], HostileServer]]:
    """``hostile(scenario)`` starts a server for that scenario; every server started is stopped at teardown."""
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(scenario: Scenario) -> HostileServer:
        state = HostileState(scenario=scenario)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(state), log_level="critical", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("hostile server did not start")
            time.sleep(0.02)
        started.append((server, thread))
        return HostileServer(state=state, host="127.0.0.1", port=port)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class CliResult:
    """One CLI run: exit code (None if it was killed at the timeout), output and the wall time it took."""

    code: int | None
    stdout: str
    stderr: str
    elapsed_s: float

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.text.splitlines()[-lines:])


def run_cli(args: list[str], *, cwd: Path, timeout_s: float = 120.0, env: dict[str, str] | None = None) -> CliResult:
    """``python -m batchpipe ARGS`` in ``cwd`` with the fake key set; killed (code None) after ``timeout_s``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCHPIPE_"))}
    full_env.update({"OPENAI_API_KEY": SECRET, "PYTHONPATH": str(REPO), "NO_COLOR": "1"})
    full_env.update(env or {})
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "batchpipe", "--log-text", "--log-level", "info", *args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return CliResult(None, out, err, time.monotonic() - started)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
