"""Model lifecycle before spending: refuse a model that shuts down before its batch could finish, warn when near.

A :class:`ModelPolicy` answers, for every model a job's items name: refused (shut down before now plus the 24 h
completion window, or unknown to the service), warned (within ``warn_days`` of its shutdown; Batch support not
confirmed; preview settings), or fine. It reads the model table (:mod:`batchpipe.domain.modeltable`) and, once per model
per run, the service's own word: ``GET /v1/models/{model}`` → ``shutdown_date`` (SPEC ``Model.shutdown_date``; SDK
``types/model.py``), which wins over the table (M26 §1: "The API tells you"). The clock is injected so tests and
drills pin dates; the CLI reads ``BATCHPIPE_NOW`` (ISO 8601) for the same purpose.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import structlog

from batchpipe.domain.modeltable import ModelFacts, ModelTable
from batchpipe.domain.problems import Problem
from batchpipe.domain.spec import COMPLETION_WINDOW_S, request_problem
from batchpipe.errors import InputError, NotFoundError

__all__ = [
    "DEFAULT_WARN_DAYS",
    "NOW_ENV",
    "Clock",
    "LifecycleError",
    "ModelPolicy",
    "clock_from_env",
    "system_clock",
]

log = structlog.get_logger("batchpipe.domain.lifecycle")

#: Warn this many days before a model's shutdown (``[run] model_shutdown_warning_days`` overrides it).
DEFAULT_WARN_DAYS: Final = 30
#: Environment variable pinning the lifecycle clock (ISO 8601 date or date-time, UTC when no offset is given).
NOW_ENV: Final = "BATCHPIPE_NOW"

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    """Now, in UTC (an aware ``datetime``)."""
    return dt.datetime.now(dt.UTC)


def clock_from_env(environ: Mapping[str, str] | None = None) -> Clock:
    """A clock pinned to ``BATCHPIPE_NOW`` when set (``2026-12-02`` or ``2026-12-02T10:00:00+00:00``), else
    :func:`system_clock`. Raises ``ValueError`` naming the variable for a value that is not ISO 8601."""
    value = (environ if environ is not None else os.environ).get(NOW_ENV)
    if not value:
        return system_clock
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{NOW_ENV}={value!r} is not an ISO 8601 date or date-time") from exc
    pinned = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return lambda: pinned


class LifecycleError(InputError):
    """Models that must not be submitted (shut down before the batch could finish, or unknown to the service).

    Raised before any upload; ``problems`` holds one :class:`~batchpipe.domain.problems.Problem` per model.
    """

    def __init__(self, problems: list[Problem], *, file: str, line: int | None = None, field: str = "model") -> None:
        super().__init__("; ".join(p.message for p in problems), file=file, line=line, field=field)
        self.problems: list[Problem] = problems  # the refusals only: their text is the message


class _ModelsApi(Protocol):
    async def retrieve_model(self, model: str) -> dict[str, object]: ...


_UNKNOWN: Final = "unknown"


class ModelPolicy:
    """Lifecycle refusals and warnings for the models of one validate, run or retry (implements ``ModelAdvice``).

    ``table``: the model table in force. ``clock``: now, UTC. ``window_s``: how long a batch may take (the 24 h
    completion window, SPEC ``CreateBatchRequest.completion_window``). ``warn_days``: warn this close to a
    shutdown. ``on_warning(message)``: receives each warning once (default: structlog). ``fix``: the one-line
    change shown in a refusal, a format string with ``{model}`` (``model = "{model}"`` in a job spec,
    ``--set model={model}`` for ``batchpipe retry``).
    """

    def __init__(
        self,
        table: ModelTable,
        *,
        clock: Clock = system_clock,
        window_s: float = COMPLETION_WINDOW_S,
        warn_days: int = DEFAULT_WARN_DAYS,
        on_warning: Callable[[str], None] | None = None,
        fix: str = 'model = "{model}"',
    ) -> None:
        self._table = table
        self._clock = clock
        self.window_s = window_s
        self.warn_days = warn_days
        self._on_warning = on_warning
        self.fix = fix
        self._problems: dict[str, Problem | None] = {}
        self._warned: set[str] = set()
        self.warnings: list[str] = []
        #: models refused so far (lifecycle), for the exit code of ``validate``
        self.refused: set[str] = set()
        #: model → the service's ``shutdown_date`` (a date, None for "none announced", or "unknown" for a 404)
        self.service: dict[str, dt.date | str | None] = {}

    @property
    def table(self) -> ModelTable:
        """The model table in force."""
        return self._table

    def now(self) -> dt.datetime:
        """The policy's clock, read once per call."""
        return self._clock()

    def warn(self, key: str, message: str) -> None:
        """Report ``message`` once per ``key`` (to ``on_warning``, else the log) and keep it in ``warnings``."""
        if key in self._warned:
            return
        self._warned.add(key)
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)
        else:
            log.warning("model", message=message)

    def model_problem(self, model: str) -> Problem | None:
        """The refusal for ``model`` (computed once, warnings reported then), or ``None`` when it may be used.

        Refused (param ``model``): code ``model_shut_down`` when the shutdown moment (00:00 UTC on the shutdown
        date; the service's ``shutdown_date`` when it gave one) is at or before now plus ``window_s``;
        ``model_not_found`` when the service answered 404. A model not in the table is the request check's
        concern, not this one's (``None``).
        """
        if model in self._problems:
            return self._problems[model]
        facts = self._table.get(model)
        problem = None if facts is None else self._judge(model, facts)
        self._problems[model] = problem
        if problem is not None:
            self.refused.add(model)
        return problem

    def _judge(self, model: str, facts: ModelFacts) -> Problem | None:
        now = self.now()
        answer = self.service.get(model, None) if model in self.service else facts.shutdown
        source = facts.lifecycle_source or facts.source
        if model in self.service:
            source = f"GET /v1/models/{model} shutdown_date (the service's word, over the table's {facts.shutdown})"
        if answer == _UNKNOWN:
            return request_problem(
                "model",
                "model_not_found",
                f"the service does not know model {model!r} (GET /v1/models/{model} answered 404): nothing was "
                f"submitted. {self._advice(facts, now)}",
            )
        assert answer is None or isinstance(answer, dt.date)
        if answer is not None:
            end = dt.datetime.combine(answer, dt.time(), tzinfo=dt.UTC)
            finish = now + dt.timedelta(seconds=self.window_s)
            if end <= finish:
                when = "was shut down on" if end <= now else "shuts down on"
                return request_problem(
                    "model",
                    "model_shut_down",
                    f"{model} {when} {answer.isoformat()} (source: {source}; checked {facts.checked.isoformat()})"
                    + (
                        f", before a batch submitted now could finish (the {self.window_s / 3600:g} h completion "
                        f"window ends {finish:%Y-%m-%d %H:%M} UTC)"
                        if end > now
                        else ""
                    )
                    + f". {self._advice(facts, now)}",
                )
            if end <= now + dt.timedelta(days=self.warn_days):
                days = (end - now).days
                self.warn(
                    f"shutdown:{model}",
                    f"{model} shuts down on {answer.isoformat()} (in {days} day(s); source: {source}). "
                    f"{self._advice(facts, now)}",
                )
        if facts.batch != "yes":
            confirmed = self._table.confirmed_for_batch(self._horizon(now))
            self.warn(
                f"batch:{model}",
                f"{model}: Batch API support is {facts.batch} ({facts.source}); its batch lines may fail. "
                + (f"Confirmed for Batch: {', '.join(confirmed[:3])}." if confirmed else "No model is confirmed."),
            )
        return None

    def _horizon(self, now: dt.datetime) -> dt.datetime:
        """Suggest only models that outlive the completion window and the warning period."""
        return now + max(dt.timedelta(seconds=self.window_s), dt.timedelta(days=self.warn_days))

    def _advice(self, facts: ModelFacts, now: dt.datetime) -> str:
        """``Replacement named by OpenAI: ...; change: model = "..."`` for the best live replacement."""
        horizon = self._horizon(now)
        live = set(self._table.live_names(horizon))
        confirmed = self._table.confirmed_for_batch(horizon)
        named = [name for name in facts.replacement if name in live]
        suggested = next((n for n in named if n in confirmed), None) or (confirmed[0] if confirmed else None)
        if suggested is None and named:
            suggested = named[0]
        parts = []
        if facts.replacement:
            notes = []
            for name in facts.replacement:
                other = self._table.get(name)
                if other is not None and other.batch != "yes":
                    notes.append(f"{name} (Batch support {other.batch})")
                else:
                    notes.append(name)
            parts.append(f"Replacement named by OpenAI: {', '.join(notes)}.")
        if suggested is not None:
            parts.append(f"Change: {self.fix.format(model=suggested)}")
        return " ".join(parts)

    async def ask_service(self, client: _ModelsApi, models: Iterable[str]) -> None:
        """Ask the service once per model (``GET /v1/models/{model}``) and trust its ``shutdown_date``.

        A 404 with code ``model_not_found`` (the service's answer for a model it does not know, M26 §1) marks
        the model unknown (refused); any other 404 (a proxy without the route), an answer whose ``shutdown_date``
        is not ``YYYY-MM-DD`` or null, or any other API error keeps the table's date and warns (the service could
        not be asked).
        """
        for model in sorted(set(models)):
            if model in self.service:
                continue
            try:
                answer: dict[str, Any] = await client.retrieve_model(model)
            except NotFoundError as exc:
                if exc.code != "model_not_found":  # a gateway without /v1/models, not an answer about the model
                    self.warn(
                        f"ask:{model}",
                        f"could not ask the service about {model} (GET /v1/models/{model} answered 404 without "
                        "code model_not_found); using the model table",
                    )
                    continue
                self.service[model] = _UNKNOWN
            except Exception as exc:  # an API that cannot say is not a reason to refuse: the table stands
                self.warn(f"ask:{model}", f"could not ask the service about {model} ({exc}); using the model table")
                continue
            else:
                raw = answer.get("shutdown_date") if isinstance(answer, dict) else None
                if raw is None:
                    self.service[model] = None
                else:
                    try:
                        self.service[model] = dt.date.fromisoformat(str(raw))
                    except ValueError:
                        self.warn(f"ask:{model}", f"the service gave {model} a shutdown_date of {raw!r}; ignored")
                        continue
            self._problems.pop(model, None)
            self.refused.discard(model)

    def refuse(self, models: Iterable[str], *, file: str, line: int | None = None, field: str = "model") -> None:
        """Raise :class:`LifecycleError` (located at ``file``, ``line``, ``field``) if any of ``models`` is
        refused; callers raise it before anything is uploaded."""
        problems = [p for p in (self.model_problem(m) for m in sorted(set(models))) if p is not None]
        if problems:
            raise LifecycleError(problems, file=file, line=line, field=field)
