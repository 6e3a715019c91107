"""Shared helpers of the benchmarks (``scripts/bench_*.py``): interleaved paired runs and their
statistics, peak RSS per contender, a standalone emulator in a subprocess, the catalog and its prompts, and
the FINAL summary line.

Paired runs (:func:`run_interleaved`): the contenders run in rounds, in order in even rounds and reversed in
odd ones (two contenders: A, B, B, A, A, B, ...), so a load that rises or falls during the benchmark does
not favour one side. A ratio is computed per round from that round's two runs, and reported as
min / median / max over the rounds (:class:`Spread`) with the machine's 1-minute load average sampled
before every run (``os.getloadavg``). A target (:class:`Target`) is judged on the median (``on="max"`` for
ceilings such as peak RSS) and printed as ``met`` or ``missed``. :class:`Report` prints one line per figure
and, last, the FINAL line ``FINAL bench=NAME figure=min/median/max figure_target=>=X figure_met=met ...``.

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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

__all__ = [
    "BENCH_API_KEY",
    "CATALOG_CSV",
    "NIGHTLY_SPEC",
    "REPO",
    "ChildResult",
    "Paired",
    "Report",
    "Spread",
    "StandaloneEmulator",
    "Target",
    "catalog_rows",
    "final_line",
    "fmt",
    "free_port",
    "interleaved_order",
    "machine_load",
    "nightly_prompt",
    "peak_rss_mb",
    "run_child",
    "run_interleaved",
    "run_subprocess",
]

REPO: Path = Path(__file__).resolve().parent.parent
CATALOG_CSV: Path = REPO / "jobs" / "data" / "flipkart-products-20k.csv"
NIGHTLY_SPEC: Path = REPO / "jobs" / "catalog-nightly.toml"
#: The emulator accepts any bearer token; this one is a placeholder, not a secret.
BENCH_API_KEY = "bench-local-no-key"

# Every child (spawned interpreter, ``batchpipe`` subprocess, emulator) imports this checkout's code, not
# whatever ``batchpipe`` the interpreter has installed.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO))]
)


# ------------------------------------------------------------------------------------------ paired runs


def machine_load() -> float:
    """The machine's 1-minute load average (``os.getloadavg()[0]``; runnable processes, all users)."""
    return os.getloadavg()[0]


def interleaved_order(names: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """``(round, name)`` in run order: ``names`` in order in even rounds, reversed in odd rounds.

    ``interleaved_order(["A", "B"], 3)`` → A, B, B, A, A, B (rounds 0, 0, 1, 1, 2, 2)."""
    if rounds < 1 or not names:
        raise ValueError("need at least one round and one contender")
    order: list[tuple[int, str]] = []
    for r in range(rounds):
        order.extend((r, name) for name in (names if r % 2 == 0 else list(reversed(names))))
    return order


@dataclass(frozen=True, slots=True)
class Spread:
    """Values of one figure over the rounds: ``values`` (in round order), ``min``, ``median``, ``max``."""

    values: tuple[float, ...]
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one); the median of an even count is the mean of the middle two."""
        if not values:
            raise ValueError("no values")
        vals = tuple(float(v) for v in values)
        return cls(vals, min(vals), statistics.median(vals), max(vals))

    def text(self) -> str:
        """``min/median/max`` with :func:`fmt` (no spaces: quotable in the FINAL line)."""
        return "/".join(fmt(v) for v in (self.min, self.median, self.max))


@dataclass(frozen=True, slots=True)
class Target:
    """A target: ``op`` (``>=`` or ``<=``) ``value``, judged on the spread's ``on`` (``median`` by default;
    ``max`` for a ceiling that every run must keep, such as peak RSS)."""

    op: Literal[">=", "<="]
    value: float
    on: Literal["median", "min", "max"] = "median"

    def met(self, spread: Spread) -> bool:
        """Whether ``spread`` meets the target."""
        got = getattr(spread, self.on)
        return bool(got >= self.value) if self.op == ">=" else bool(got <= self.value)

    def text(self) -> str:
        """``>=0.35`` (plus ``(max)`` when judged on another value than the median)."""
        return f"{self.op}{fmt(self.value)}" + ("" if self.on == "median" else f"({self.on})")


@dataclass
class Paired:
    """What :func:`run_interleaved` measured: ``runs[name][round]`` (each contender's result dict, with
    ``load1`` (the 1-minute load before that run) and ``order`` (its position in the run order) added),
    and ``loads`` (every run's ``load1``, in run order)."""

    runs: dict[str, list[dict[str, Any]]]
    loads: list[float]

    @property
    def rounds(self) -> int:
        """How many rounds ran (every contender once per round)."""
        return min(len(v) for v in self.runs.values())

    def spread(self, name: str, key: str) -> Spread:
        """``runs[name][r][key]`` over the rounds."""
        return Spread.of([float(run[key]) for run in self.runs[name]])

    def ratio(self, num: str, den: str, key: str) -> Spread:
        """Per round, ``runs[num][r][key] / runs[den][r][key]`` (the pair of that round), over the rounds."""
        return Spread.of([float(a[key]) / float(b[key]) for a, b in zip(self.runs[num], self.runs[den], strict=True)])

    def load(self) -> Spread:
        """The 1-minute load average before each run."""
        return Spread.of(self.loads)


def run_interleaved(
    contenders: Mapping[str, Callable[[int], dict[str, Any]]],
    rounds: int,
    *,
    show: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> Paired:
    """Run every contender once per round in :func:`interleaved_order` (contender ``fn(round)`` returns a
    result dict; run it in a fresh child with :func:`run_child` / :func:`run_subprocess` inside ``fn``
    where peak RSS matters). ``show(round, name, result)`` is called after each run (e.g. to print it).

    Before each run the file system is synced (``os.sync``, outside the timing), so the writeback of what the
    previous run wrote (``bench_build``'s build phase of ``run`` and its floor each leave a 1 GB ledger) is not
    charged to the next one."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    loads: list[float] = []
    for position, (r, name) in enumerate(interleaved_order(list(contenders), rounds)):
        os.sync()
        load = machine_load()
        result = dict(contenders[name](r))
        result["load1"] = load
        result["order"] = position
        runs[name].append(result)
        loads.append(load)
        if show is not None:
            show(r, name, result)
    return Paired(runs, loads)


@dataclass
class Report:
    """The figures of one benchmark: :meth:`figure` prints a line per figure (min / median / max, target,
    met/missed, load) and :meth:`final` prints the FINAL line, last."""

    bench: str
    loads: list[float] = field(default_factory=list)
    pairs: dict[str, object] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)

    def add_loads(self, loads: Sequence[float]) -> None:
        """Fold in the loads of another set of runs (the load shown is over every run of the benchmark)."""
        self.loads.extend(loads)

    def figure(self, name: str, spread: Spread, target: Target | None = None, *, unit: str = "") -> None:
        """Print ``name  min / median / max unit  target X  met|missed  (load ...)`` and remember it."""
        self.pairs[name] = spread.text()
        line = f"{name:28s} min {fmt(spread.min)} / median {fmt(spread.median)} / max {fmt(spread.max)}"
        line += f" {unit}" if unit else ""
        line += f"  (n={len(spread.values)})"
        if target is not None:
            ok = target.met(spread)
            self.verdicts[name] = ok
            self.pairs[f"{name}_target"] = target.text()
            self.pairs[f"{name}_met"] = "met" if ok else "missed"
            line += f"  target {target.text()}  {'met' if ok else 'MISSED'}"
        if self.loads:
            line += f"  load {self.load_text()}"
        print(line, flush=True)

    def value(self, name: str, value: object) -> None:
        """A plain ``name=value`` for the FINAL line (counts, sizes, settings)."""
        self.pairs[name] = value

    def load_text(self) -> str:
        """The 1-minute load over the runs as ``min/median/max``."""
        return Spread.of(self.loads).text() if self.loads else "n/a"

    def final(self) -> str:
        """Print and return ``FINAL bench=NAME <figures> load1=min/median/max cores=N``."""
        head = {"bench": self.bench}
        tail = {"load1": self.load_text(), "cores": os.cpu_count() or 0}
        line = "FINAL " + final_line({**head, **self.pairs, **tail})
        print(line, flush=True)
        return line


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
    """A summary value: floats with 3 decimals below 10, 2 below 100, 1 below 1,000, none above; others as
    ``str``."""
    if isinstance(value, float):
        size = abs(value)
        digits = 3 if size < 10 else 2 if size < 100 else 1 if size < 1000 else 0
        return f"{value:.{digits}f}"
    return str(value)


def final_line(pairs: dict[str, object]) -> str:
    """The FINAL summary line: ``name=value`` pairs separated by spaces (values without spaces)."""
    return " ".join(f"{k}={fmt(v).replace(' ', '_')}" for k, v in pairs.items())


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-emulator"]:
        _serve_emulator(sys.argv[2:])
    else:
        sys.exit("usage: bench_common.py serve-emulator [--image-detail fast|realistic] <serve flags>")
