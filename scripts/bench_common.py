"""Shared helpers of the four benchmarks (``scripts/bench_*.py``): peak RSS per contender, a standalone
emulator in a subprocess, the catalog and its prompts, and the FINAL summary line.

Peak RSS: every contender runs in a fresh child process (``multiprocessing`` *spawn*, or a plain
subprocess) and its own ``ru_maxrss`` is reported (Linux: KiB → MB of 10^6 bytes), so contenders never
inherit or pollute each other's peak. For subprocesses the rusage comes from ``os.wait4`` on that one pid.

The emulator runs as ``batchpipe emulator serve`` (``batchpipe.emulator.cli``) in a subprocess on a free
loopback port; its request log goes to a file, never to the terminal. Readiness is a TCP connect, not an
HTTP request, so rate-limited phases start with a full window.

Run ``python scripts/bench_common.py serve-emulator --image-detail realistic <serve flags>`` to start the
standalone server with an ``image_detail`` the ``serve`` command has no flag for (it is the real ``serve``
command with only ``EmulatorConfig.image_detail`` replaced).
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

__all__ = [
    "BENCH_API_KEY",
    "CATALOG_CSV",
    "NIGHTLY_SPEC",
    "REPO",
    "ChildResult",
    "StandaloneEmulator",
    "catalog_rows",
    "final_line",
    "fmt",
    "free_port",
    "nightly_prompt",
    "peak_rss_mb",
    "run_child",
    "run_subprocess",
]

REPO: Path = Path(__file__).resolve().parent.parent
CATALOG_CSV: Path = REPO / "jobs" / "data" / "flipkart-products-20k.csv"
NIGHTLY_SPEC: Path = REPO / "jobs" / "catalog-nightly.toml"
#: The emulator accepts any bearer token; this one is a placeholder, not a secret.
BENCH_API_KEY = "bench-local-no-key"


# ----------------------------------------------------------------------------------------------- peak RSS


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (10^6 bytes): ``getrusage(RUSAGE_SELF).ru_maxrss``
    (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def _child_entry(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any]:
    result = dict(fn(*args))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh *spawn* child process; returns its dict with ``peak_rss_mb`` added
    (the child's own ``ru_maxrss``). ``fn`` must be a module-level function (picklable by reference);
    exceptions in the child are re-raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_child_entry, fn, args).result()


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A finished subprocess: ``returncode``, ``wall_s`` (seconds, start to reap), ``peak_rss_mb`` (its
    ``ru_maxrss`` from ``os.wait4``; MB of 10^6 bytes), ``cpu_s`` (user + system seconds)."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    cpu_s: float


def run_subprocess(
    cmd: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, log: Path | None = None
) -> ChildResult:
    """Run ``cmd`` to completion (stdout+stderr to ``log`` or /dev/null) and measure it with ``os.wait4``."""
    out = open(log, "wb") if log is not None else open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        began = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        out.close()
    return ChildResult(
        returncode=proc.returncode,
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss * 1024 / 1e6,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


# ------------------------------------------------------------------------------------------------ emulator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batchpipe_exe() -> str:
    exe = Path(sys.executable).with_name("batchpipe")
    return str(exe) if exe.exists() else (shutil.which("batchpipe") or "batchpipe")


def _serve_has_flag(flag: str) -> bool:
    out = subprocess.run(
        [_batchpipe_exe(), "emulator", "serve", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    return flag in out.stdout


@dataclass
class StandaloneEmulator:
    """``batchpipe emulator serve`` in a subprocess on a free loopback port (use as a context manager).

    ``state_dir``: the server's state (files, database); ``flags``: extra ``serve`` flags (e.g.
    ``["--rpm-limit", "60"]``); ``image_detail``: ``fast`` or ``realistic`` (uses ``--image-detail`` when
    ``serve`` has it, else this module's ``serve-emulator`` launcher); ``log``: the request log file.
    ``base_url`` is ``http://127.0.0.1:PORT/v1``. :meth:`restart` keeps the state directory (and the port),
    optionally with other flags. Raises ``RuntimeError`` if the server does not accept connections in 60 s.
    """

    state_dir: Path
    flags: list[str] = field(default_factory=list)
    image_detail: str = "fast"
    log: Path | None = None
    port: int = 0
    launcher: str = ""
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The API root the clients use."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _command(self) -> list[str]:
        serve = ["--host", "127.0.0.1", "--port", str(self.port), "--state-dir", str(self.state_dir), *self.flags]
        if self.image_detail == "fast":
            self.launcher = "batchpipe emulator serve"
            return [_batchpipe_exe(), "emulator", "serve", *serve]
        if _serve_has_flag("--image-detail"):
            self.launcher = "batchpipe emulator serve --image-detail"
            return [_batchpipe_exe(), "emulator", "serve", "--image-detail", self.image_detail, *serve]
        self.launcher = "bench_common serve-emulator (serve has no --image-detail flag)"
        return [sys.executable, __file__, "serve-emulator", "--image-detail", self.image_detail, *serve]

    def start(self) -> None:
        """Start the server and wait until its port accepts connections."""
        if self.port == 0:
            self.port = free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.log or (self.state_dir.parent / f"emulator-{self.port}.log")
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60.0
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self._proc.returncode}; see {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator did not start within 60 s; see {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Ask the server to exit (SIGTERM: uvicorn shuts down gracefully), kill it after 20 s."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self, flags: list[str] | None = None) -> None:
        """Stop, then start again on the same state directory and port (``flags`` replace the old ones)."""
        self.stop()
        if flags is not None:
            self.flags = flags
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_emulator(argv: list[str]) -> None:
    """``serve-emulator --image-detail D <serve flags>``: the real ``serve`` command, ``image_detail`` = D."""
    from batchpipe.emulator import cli as emulator_cli

    detail = "fast"
    if argv[:1] == ["--image-detail"]:
        detail, argv = argv[1], argv[2:]
    original = emulator_cli.build_config

    def build_config(**options: Any) -> Any:
        return original(**options).model_copy(update={"image_detail": detail})

    emulator_cli.build_config = build_config
    emulator_cli.emulator_group(["serve", *argv], prog_name="batchpipe emulator")


# -------------------------------------------------------------------------------------------------- data


def catalog_rows(path: Path = CATALOG_CSV) -> Iterator[dict[str, str]]:
    """The catalog's rows as dicts (``csv.DictReader``, UTF-8)."""
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def nightly_prompt(row: dict[str, str]) -> str:
    """``jobs/catalog-nightly.toml``'s prompt for ``row``, written the plain way a user script would:
    ``"... of {product_name}{? by {brand}}, ..."`` (the optional part dropped when brand is blank)."""
    brand = row.get("brand") or ""
    by = f" by {brand}" if brand.strip() else ""
    return (
        f"Studio product photo of {row['product_name']}{by}, centered on a plain white background, "
        "soft even lighting, no text, no watermark."
    )


# ----------------------------------------------------------------------------------------------- output


def fmt(value: object) -> str:
    """A summary value: floats with 3 significant decimals (2 for >= 100), others as ``str``."""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def final_line(pairs: dict[str, object]) -> str:
    """The FINAL summary line: ``name=value`` pairs separated by spaces (values without spaces)."""
    return " ".join(f"{k}={fmt(v).replace(' ', '_')}" for k, v in pairs.items())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-emulator"]:
        _serve_emulator(sys.argv[2:])
    else:
        sys.exit("usage: bench_common.py serve-emulator [--image-detail fast|realistic] <serve flags>")
