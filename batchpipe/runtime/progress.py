"""What a person (or a script) sees while a run goes and when it ends.

Three displays of one run, chosen by the command line (:func:`batchpipe.cli.main`):

* :class:`LiveDisplay`: a terminal. A rich ``Live`` block at the bottom of the screen, redrawn 4 times a second: each
  stage (built, submitted, in progress at the service, collected, verified) with counts and percent, items/s and
  the ETA, the cost so far against the estimate and the cap, C2PA states as they arrive and batch states. Log lines
  and messages are printed above it (they never scroll it away).
* :class:`PlainDisplay`: not a terminal (cron, a pipe): the ``progress: ...`` lines of
  :class:`~batchpipe.runtime.wiring.ProgressReporter`, at most one every 5 s, and plain messages.
* :class:`JsonDisplay`: ``--log-json``: every message and progress report is one JSON object on stderr, and the run
  ends with one JSON summary object on stdout (:func:`summary_record`).

Each display receives the runner's progress events (``built``, ``poll``), the C2PA state of every image checked
(through :class:`CountingVerifier`), messages (``echo``) and, at the end, the summary.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from batchpipe.domain.items import ItemStatus
from batchpipe.logs import write_json
from batchpipe.ports import Ledger, Verifier, VerifierReport
from batchpipe.runtime.reprocess import OUTSIDE_CAUSE_CODES

__all__ = [
    "FAILURE_STATUSES",
    "CountingVerifier",
    "ErrorCount",
    "JsonDisplay",
    "LiveDisplay",
    "PlainDisplay",
    "RunDisplay",
    "error_counts",
    "error_counts_of",
    "retry_command",
    "retry_hint",
    "summary_record",
]

#: Item statuses that carry an error code: an item that did not succeed and is not being worked on.
FAILURE_STATUSES: Final = (
    ItemStatus.FAILED,
    ItemStatus.EXPIRED,
    ItemStatus.CANCELLED,
    ItemStatus.MISSING,
    ItemStatus.INVALID,
)
#: The statuses ``batchpipe retry`` selects when no ``--status`` is given (``reprocess.DEFAULT_RETRY_STATUSES``).
_RETRY_DEFAULT_STATUSES: Final = frozenset(
    {ItemStatus.FAILED, ItemStatus.EXPIRED, ItemStatus.CANCELLED, ItemStatus.MISSING}
)
#: An example error message is cut to this many characters.
EXAMPLE_CHARS: Final = 160
#: The documented default work directory (``cli.main.DEFAULT_WORKDIR``), left out of printed commands.
_DEFAULT_WORKDIR: Final = Path(".batchpipe")


@dataclass
class ErrorCount:
    """One error code among a selection of items: how many items carry it, their statuses, whether the service
    said they may be retried, and one example (``example_key``, ``example_message`` cut to
    :data:`EXAMPLE_CHARS`)."""

    code: str
    count: int = 0
    statuses: set[str] = field(default_factory=set)
    retryable: bool = False
    example_key: str = ""
    example_message: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``code``, ``count``, ``statuses`` (sorted), ``retryable``, ``example_key``,
        ``example_message``."""
        return {
            "code": self.code,
            "count": self.count,
            "statuses": sorted(self.statuses),
            "retryable": self.retryable,
            "example_key": self.example_key,
            "example_message": self.example_message,
        }


def error_counts(
    ledger: Ledger, *, run_id: str | None = None, job: str | None = None, latest_only: bool = False
) -> list[ErrorCount]:
    """Items that did not succeed (:data:`FAILURE_STATUSES`) grouped by error code, most frequent first (then by
    code): of one run, of one job, or of the whole ledger; ``latest_only`` counts each item's latest attempt only.
    Superseded attempts (redone since) are never counted; an item with no code counts under its status. Counted by
    the ledger (:meth:`~batchpipe.ports.Ledger.error_counts`, an aggregate), plus one row read per code for its
    example: never every row."""
    return error_counts_of(
        ledger, ledger.error_counts(FAILURE_STATUSES, run_id=run_id, job=job, latest_only=latest_only)
    )


def error_counts_of(ledger: Ledger, groups: Iterable[Mapping[str, object]]) -> list[ErrorCount]:
    """:func:`error_counts` of groups the ledger already counted (:meth:`~batchpipe.ports.Ledger.error_counts`
    dicts, e.g. :attr:`~batchpipe.domain.records.ItemSummary.errors` of :meth:`~batchpipe.ports.Ledger.item_summary`):
    merged by code, most frequent first, each with an example key and message (one row read per code)."""
    found: dict[str, ErrorCount] = {}
    examples: dict[str, str] = {}
    for group in groups:
        code = str(group["code"])
        entry = found.setdefault(code, ErrorCount(code))
        entry.count += int(str(group["count"]))
        entry.statuses.add(str(group["status"]))
        entry.retryable = entry.retryable or bool(group["retryable"])
        examples.setdefault(code, str(group["example_custom_id"]))  # of the code's largest group
    for code, custom_id in examples.items():
        row = ledger.item(custom_id)
        if row is None:  # gone meanwhile (a discarded build)
            continue
        message = " ".join((row.error_message or "").split())
        if len(message) > EXAMPLE_CHARS:
            message = message[: EXAMPLE_CHARS - 1] + "…"
        found[code].example_key, found[code].example_message = row.item_key, message
    return sorted(found.values(), key=lambda e: (-e.count, e.code))


def retry_command(error: ErrorCount, *, job: str, workdir: Path | None = None) -> str:
    """The ``batchpipe retry`` command line that runs the items of ``error`` of ``job`` again, shell-quoted:
    ``batchpipe retry --job J --error-code X``, with ``--status S`` when some of them are in a status ``retry``
    does not select by default (``invalid``), and ``--workdir W`` unless ``workdir`` is the default
    ``.batchpipe`` of the current directory. (A ``--ledger`` URL is never repeated: it may hold a password.)"""
    args = ["batchpipe", "retry", "--job", job, "--error-code", error.code]
    if not error.statuses <= _RETRY_DEFAULT_STATUSES:
        for status in sorted(error.statuses):
            args += ["--status", status]
    if workdir is not None and workdir.resolve() != (Path.cwd() / _DEFAULT_WORKDIR).resolve():
        args += ["--workdir", str(workdir)]
    return shlex.join(args)


def retry_hint(error: ErrorCount) -> str | None:
    """For a code that ``batchpipe retry`` leaves out as final (failed, not retryable, and not caused outside the
    request: :data:`batchpipe.runtime.reprocess.OUTSIDE_CAUSE_CODES`), what to add to :func:`retry_command`:
    sent unchanged such items fail again. None for the others."""
    if error.retryable or ItemStatus.FAILED not in error.statuses or error.code in OUTSIDE_CAUSE_CODES:
        return None
    return (
        "final: sent unchanged it fails again, so retry leaves it out; change the request with --set FIELD=VALUE "
        "(or --export, edit, run), or add --force to send it as it is"
    )


def summary_record(
    summary: Any,
    *,
    errors: Sequence[ErrorCount],
    exit_code: int,
    workdir: Path | None,
    images_at: str | None = None,
    estimate_usd: float | None = None,
    cap_usd: float | None = None,
    c2pa: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """The JSON summary of a run (the last line of ``batchpipe --log-json run``): ``event`` ``"summary"``,
    ``run_id``, ``job``, ``exit_code``, ``finished``, ``items`` (counts by status), ``batches``, ``cost_usd`` (USD
    recorded), ``estimated_cost_usd`` and ``max_cost_usd`` (None when unknown or no cap), ``c2pa`` (states of the
    images checked by this process), ``errors`` (:meth:`ErrorCount.to_dict` plus ``retry_command`` and
    ``retry_hint``, most frequent first), ``images`` (where they are), ``report`` (the contact sheet's path,
    whether it exists, and the command that writes it) and ``unknown_batches``. ``summary``: a
    :class:`~batchpipe.runtime.runner.RunSummary`."""
    report_path = workdir / "reports" / summary.run_id / "index.html" if workdir is not None else None
    report_cmd = ["batchpipe", "report", "--run", summary.run_id]
    if workdir is not None and workdir.resolve() != (Path.cwd() / _DEFAULT_WORKDIR).resolve():
        report_cmd += ["--workdir", str(workdir)]
    return {
        "event": "summary",
        "run_id": summary.run_id,
        "job": summary.job,
        "exit_code": exit_code,
        "finished": summary.finished,
        "items": dict(sorted(summary.items.items())),
        "batches": summary.batches,
        "cost_usd": round(summary.cost_usd, 6),
        "estimated_cost_usd": None if estimate_usd is None else round(estimate_usd, 6),
        "max_cost_usd": cap_usd,
        "c2pa": dict(sorted((c2pa or {}).items())),
        "skipped_unchanged": summary.skipped_unchanged,
        "errors": [
            {
                **error.to_dict(),
                "retry_command": retry_command(error, job=summary.job, workdir=workdir),
                "retry_hint": retry_hint(error),
            }
            for error in errors
        ],
        "images": images_at,
        "report": {
            "path": str(report_path) if report_path is not None else None,
            "exists": bool(report_path is not None and report_path.exists()),
            "command": shlex.join(report_cmd),
        },
        "unknown_batches": summary.unknown_batches,
    }


class CountingVerifier:
    """A :class:`~batchpipe.ports.Verifier` that passes every check to ``inner`` and tells ``on_state`` the state
    of each report (``trusted``, ``valid``, ...) as it arrives. Called from the collector's worker threads:
    ``on_state`` must be thread-safe."""

    def __init__(self, inner: Verifier, on_state: Callable[[str], None]) -> None:
        self._inner = inner
        self._on_state = on_state

    def verify_bytes(self, data: bytes, mime: str | None = None) -> VerifierReport:
        """``inner.verify_bytes(data, mime)``, its state reported; raises whatever ``inner`` raises."""
        report = self._inner.verify_bytes(data, mime)
        self._on_state(report.state)
        return report


@dataclass
class _Snapshot:
    """The latest facts of a run, as the displays read them."""

    run_id: str = ""
    job: str = ""
    built: int = 0
    shards: int = 0
    total: int = 0
    items: dict[str, int] = field(default_factory=dict)
    batch_states: dict[str, int] = field(default_factory=dict)
    rendered: int = 0
    done: int = 0
    cost_usd: float = 0.0
    c2pa: Counter[str] = field(default_factory=Counter)
    done_at_poll: int = 0
    verified_at_poll: int = 0


class RunDisplay:
    """What every display shares: the run's latest facts (thread-safe), the estimate and the cap, and the rate.

    Subclasses render them. ``progress(event, data)`` is the runner's progress callback (``built``: ``items``,
    ``shards``; ``poll``: ``run_id``, ``job``, ``items`` (counts by status), ``batch_states``, ``rendered``
    (requests the service answered), ``items_done``, ``items_total``, ``cost_usd``); ``c2pa(state)`` is called
    for every image checked; ``echo(line)`` prints a message; ``active()`` is the context the run happens in;
    ``finish(lines, record)`` prints the end-of-run summary (human ``lines``, or the JSON ``record``).
    """

    def __init__(
        self,
        *,
        estimate_usd: float | None = None,
        cap_usd: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.estimate_usd = estimate_usd
        self.cap_usd = cap_usd
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _Snapshot()
        self._started = clock()
        self._samples: list[tuple[float, int, int]] = []
        #: True once :meth:`finish` printed the summary
        self.summarized = False

    # -- inputs ----------------------------------------------------------------------------------------
    def progress(self, event: str, data: dict[str, Any]) -> None:
        """Receive one runner event (``built`` or ``poll``, see the class doc)."""
        with self._lock:
            state = self._state
            if event == "built":
                state.run_id = str(data.get("run_id", state.run_id))
                state.built = int(data.get("items", 0))
                state.shards = int(data.get("shards", 0))
                state.total = max(state.total, state.built)
            elif event == "poll":
                state.run_id = str(data.get("run_id", state.run_id))
                state.job = str(data.get("job", state.job))
                state.items = dict(data.get("items", state.items))
                state.batch_states = dict(data.get("batch_states", {}))
                state.rendered = int(data.get("rendered", 0))
                state.done = int(data.get("items_done", 0))
                state.total = int(data.get("items_total", state.total))
                state.built = max(state.built, state.total - state.items.get(ItemStatus.INVALID, 0))
                state.cost_usd = float(data.get("cost_usd", state.cost_usd))
                state.done_at_poll = state.done
                state.verified_at_poll = sum(state.c2pa.values())
        self._sample()
        self._on_progress(event, data)

    def c2pa(self, state: str) -> None:
        """One image's C2PA state, as the collector checks it (any thread)."""
        with self._lock:
            self._state.c2pa[state] += 1

    def echo(self, line: str) -> None:
        """Print one message line (stderr)."""
        raise NotImplementedError

    @contextmanager
    def active(self) -> Iterator[None]:
        """The context the run happens in (the live block is shown while it is open)."""
        yield

    def finish(self, lines: Sequence[str], record: dict[str, object]) -> None:
        """Print the end of the run: the human ``lines`` (plain and live displays) or ``record`` (JSON)."""
        self.summarized = True
        for line in lines:
            self.echo(line)

    def _on_progress(self, event: str, data: dict[str, Any]) -> None:
        """Called after each runner event (for displays that print per event)."""

    # -- derived ---------------------------------------------------------------------------------------
    def snapshot(self) -> _Snapshot:
        """A copy of the latest facts."""
        with self._lock:
            state = self._state
            return _Snapshot(**{**state.__dict__, "c2pa": Counter(state.c2pa), "items": dict(state.items)})

    def finished_items(self, state: _Snapshot) -> int:
        """Items the run is done with: the ledger's count at the last poll, plus the images checked since (the
        collector verifies as it goes; the ledger count moves a whole output file at a time)."""
        live = state.done_at_poll + (sum(state.c2pa.values()) - state.verified_at_poll)
        return min(max(state.done, live), state.total) if state.total else state.done

    def _point(self, state: _Snapshot) -> tuple[float, int, int]:
        """``(now, items finished, requests the service answered)``."""
        return self._clock(), self.finished_items(state), min(state.rendered, state.total)

    def _sample(self) -> None:
        point = self._point(self.snapshot())
        with self._lock:
            self._samples.append(point)
            self._samples = [s for s in self._samples if point[0] - s[0] <= 30.0][-200:]

    def _rates(self) -> tuple[float | None, float | None]:
        """``(items finished per second, requests answered per second)`` over the last 30 s; None before two
        samples 0.5 s apart."""
        point = self._point(self.snapshot())
        with self._lock:
            first = self._samples[0] if self._samples else point
        seconds = point[0] - first[0]
        if seconds < 0.5:
            return None, None
        return max(0.0, (point[1] - first[1]) / seconds), max(0.0, (point[2] - first[2]) / seconds)

    def rate(self) -> float | None:
        """Items finished per second over the last 30 s (None before two samples 0.5 s apart)."""
        return self._rates()[0]

    def eta_s(self) -> float | None:
        """Seconds until every item is finished (None when unknown): while the service is still answering, the
        time it needs at its rate over the last 30 s (collection follows it and is faster); once collection moves,
        the larger of that and the time collection needs at its own rate."""
        state = self.snapshot()
        if not state.total:
            return None
        finished_rate, answer_rate = self._rates()
        left_to_answer = state.total - min(state.rendered, state.total)
        left_to_finish = state.total - self.finished_items(state)
        if left_to_finish <= 0:
            return 0.0
        estimates: list[float] = []
        if left_to_answer > 0 and answer_rate:
            estimates.append(left_to_answer / answer_rate)
        if finished_rate:
            estimates.append(left_to_finish / finished_rate)
        return max(estimates) if estimates else None

    def stages(self) -> list[tuple[str, int, int, str]]:
        """``(stage, done, total, note)`` for built, submitted, in progress, collected, verified."""
        state = self.snapshot()
        items = state.items
        total = state.total or state.built
        invalid = items.get(ItemStatus.INVALID, 0)
        pending = items.get(ItemStatus.PENDING, 0)
        at_service = items.get(ItemStatus.SUBMITTED, 0)
        submitted = max(0, total - pending - invalid) if items else 0
        answered = min(state.rendered, submitted)
        failures = sum(items.get(status, 0) for status in FAILURE_STATUSES)
        checked = sum(state.c2pa.values())
        batches = sum(state.batch_states.values())
        (rate, answer_rate), eta = self._rates(), self.eta_s()
        speed = f"{rate:.1f} items/s" if rate is not None else "- items/s"
        if not rate and answer_rate:  # nothing collected yet: how fast the service answers
            speed = f"{speed} (service answers {answer_rate:.1f}/s)"
        eta_text = f"ETA {_duration(eta)}" if eta is not None else "ETA -"
        c2pa = ", ".join(f"{k} {v}" for k, v in sorted(state.c2pa.items(), key=lambda kv: (-kv[1], kv[0])))
        return [
            ("built", state.built, total, f"{state.shards} shard(s)" if state.shards else ""),
            ("submitted", submitted, total, f"{batches} batch(es)" if batches else ""),
            ("in progress", answered, submitted, f"answered by the service; {at_service} at the service"),
            ("collected", self.finished_items(state), total, f"{speed} · {eta_text}"),
            ("verified", checked, max(checked, total - failures), c2pa or "no image checked yet"),
        ]

    def cost_line(self) -> str:
        """``cost $0.0310 so far · estimate $0.1240 · cap $5.00`` (the parts that are known)."""
        state = self.snapshot()
        parts = [f"cost ${state.cost_usd:.4f} so far"]
        if self.estimate_usd is not None:
            parts.append(f"estimate ${self.estimate_usd:.4f}")
        parts.append(f"cap ${self.cap_usd:.2f}" if self.cap_usd is not None else "no cap")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = 0 if total <= 0 else min(width, int(width * done / total))
    return "█" * filled + "░" * (width - filled)


class PlainDisplay(RunDisplay):
    """Not a terminal: messages as plain lines through ``echo``, and a ``progress: ...`` line at most every
    ``every_s`` seconds (``progress: built N items in S shard(s)`` always)."""

    def __init__(self, echo: Callable[[str], None], *, every_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._print = echo
        self._every_s = every_s
        self._last = -1e9

    def echo(self, line: str) -> None:
        """Print ``line`` as it is."""
        self._print(line)

    def _on_progress(self, event: str, data: dict[str, Any]) -> None:
        if event == "built":
            self._print(f"progress: built {data.get('items', 0)} items in {data.get('shards', 0)} shard(s)")
            return
        now = self._clock()
        if now - self._last < self._every_s:
            return
        self._last = now
        state = self.snapshot()
        states = ", ".join(f"{k} {v}" for k, v in sorted(state.batch_states.items()))
        c2pa = ", ".join(f"{k} {v}" for k, v in sorted(state.c2pa.items()))
        self._print(
            f"progress: batches {states or 'none'}; requests answered {state.rendered}; "
            f"items collected {state.done}/{state.total}; {self.cost_line()}" + (f"; C2PA {c2pa}" if c2pa else "")
        )


class JsonDisplay(RunDisplay):
    """``--log-json``: every message is ``{"event": "message", "level": ..., "message": ...}`` on stderr, progress
    is ``{"event": "progress", ...}`` (at most one per runner event kind every ``every_s`` seconds), and the run
    ends with the summary record (:func:`summary_record`) as one line on stdout."""

    def __init__(self, *, every_s: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._every_s = every_s
        self._last: dict[str, float] = {}

    def echo(self, line: str) -> None:
        """One ``message`` event on stderr (level from the line's ``error:`` / ``warning:`` / ``stopped:`` prefix)."""
        write_json("message", message=line, level=message_level(line))

    def _on_progress(self, event: str, data: dict[str, Any]) -> None:
        now = self._clock()
        if now - self._last.get(event, -1e9) < self._every_s:
            return
        self._last[event] = now
        state = self.snapshot()
        rate, eta = self.rate(), self.eta_s()
        write_json(
            "progress",
            stage_event=event,
            run_id=state.run_id or None,
            stages={name: {"done": done, "total": total} for name, done, total, _ in self.stages()},
            items=state.items,
            batch_states=state.batch_states,
            c2pa=dict(state.c2pa),
            items_per_s=None if rate is None else round(rate, 3),
            eta_s=None if eta is None else round(eta, 1),
            cost_usd=round(state.cost_usd, 6),
            estimated_cost_usd=self.estimate_usd,
            max_cost_usd=self.cap_usd,
        )

    def finish(self, lines: Sequence[str], record: dict[str, object]) -> None:
        """The human ``lines`` as ``message`` events on stderr, then the summary ``record`` as one JSON line on
        stdout (stderr flushed first, so it is the last line)."""
        self.summarized = True
        for line in lines:
            self.echo(line)
        sys.stderr.flush()
        write_json("summary", stream=sys.stdout, **{k: v for k, v in record.items() if k != "event"})


def message_level(line: str) -> str:
    """``error`` for ``error:`` or ``stopped:`` lines, ``warning`` for ``warning:`` ones, else ``info``."""
    head = line.lstrip().lower()
    if head.startswith(("error:", "stopped:")):
        return "error"
    if head.startswith("warning:"):
        return "warning"
    return "info"


class LiveDisplay(RunDisplay):
    """A terminal: a rich ``Live`` block on ``console`` (stderr) while the run is active, redrawn
    ``refresh_per_second`` times a second; messages and log lines (anything written to ``sys.stderr`` or
    ``sys.stdout`` meanwhile) are printed above it. Outside :meth:`active`, messages are printed plainly."""

    def __init__(self, console: Console | None = None, *, refresh_per_second: float = 4.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.console = console or Console(stderr=True)
        self._refresh = refresh_per_second
        self._live: Live | None = None
        self.title = ""

    def echo(self, line: str) -> None:
        """Print ``line`` (above the live block while it is shown)."""
        self.console.print(Text(line), soft_wrap=True)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Show the live block (stdout and stderr redirected above it) until the context ends; the last frame
        stays on the screen."""
        live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=self._refresh,
            redirect_stdout=True,
            redirect_stderr=True,
            transient=False,
        )
        self._live = live
        with live:
            try:
                yield
            finally:
                live.refresh()
        self._live = None

    def render(self) -> Group:
        """The live block: a header, one row per stage, the cost line, batch states and failures."""
        state = self.snapshot()
        elapsed = _duration(self._clock() - self._started)
        header = Text.assemble(
            ("batchpipe ", "bold"),
            (f"{state.job or self.title} ", "bold cyan"),
            (f"run {state.run_id or '-'} · {elapsed}", "dim"),
        )
        table = Table.grid(padding=(0, 1))
        for _ in range(5):
            table.add_column()
        for name, done, total, note in self.stages():
            pct = f"{100 * done / total:3.0f}%" if total else "  -%"
            style = "green" if total and done >= total else "yellow"
            table.add_row(
                Text(f"{name:<12}"),
                Text(_bar(done, total), style=style),
                Text(f"{done}/{total}"),
                Text(pct),
                Text(note),
            )
        cost = Text(self.cost_line())
        if self.cap_usd is not None and state.cost_usd > self.cap_usd:
            cost.stylize("bold red")
        batches = ", ".join(f"{k} {v}" for k, v in sorted(state.batch_states.items())) or "none yet"
        failed = {k: v for k, v in sorted(state.items.items()) if k in FAILURE_STATUSES and v}
        lines: list[Any] = [header, table, cost, Text(f"batches: {batches}")]
        if failed:
            lines.append(Text("not succeeded: " + ", ".join(f"{k} {v}" for k, v in failed.items()), style="red"))
        return Group(*lines)
