"""structlog set-up: readable on a terminal, JSON lines otherwise (structlog ``docs/performance.md``)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from batchpipe.domain.redact import redact_value

__all__ = ["configure_logging", "json_only", "show_emulator_requests", "write_json"]


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


_emulator_requests = True
_json_only = False


def json_only() -> bool:
    """True when ``--log-json`` was given: every line batchpipe prints (logs, messages, progress, the summary) is
    one JSON object (:func:`write_json`)."""
    return _json_only


def write_json(event: str, *, stream: Any = None, **fields: Any) -> None:
    """Write ``{"event": event, "timestamp": ISO 8601 UTC, **fields}`` as one line to ``stream`` (default: the
    current ``sys.stderr``), every string redacted (:func:`batchpipe.domain.redact.redact_value`). Not filtered by
    the log level: this is what a command says to its user (its messages, progress and summary), not a log."""
    record: dict[str, Any] = {"event": event, "timestamp": _now_iso()}
    record.update(_redact_secrets(None, "", fields))
    out = stream if stream is not None else sys.stderr
    out.write(orjson.dumps(record, default=str).decode() + "\n")
    out.flush()


def _now_iso() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


class _CurrentStderr:
    """A file that writes to whatever ``sys.stderr`` is at the time, so a live display that redirects stderr
    (rich ``Live``) prints log lines above itself."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def show_emulator_requests(show: bool) -> None:
    """Whether the emulator's per-request lines (events ``emulator.*`` at info) are shown.

    ``batchpipe run`` hides them for the embedded emulator (they would drown the run's own lines, and stay
    visible at ``--log-level debug``); ``batchpipe emulator serve`` shows them.
    """
    global _emulator_requests
    _emulator_requests = show


def _drop_emulator_requests(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event = event_dict.get("event")
    if (
        not _emulator_requests
        and method in ("info", "debug")
        and isinstance(event, str)
        and event.startswith("emulator.")
    ):
        raise structlog.DropEvent
    return event_dict


def _redact_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Every string in the event through :func:`batchpipe.domain.redact.redact_value` (text a server echoed may
    carry a key)."""
    return {
        key: redact_value(value) if isinstance(value, str | dict | list) else value for key, value in event_dict.items()
    }


def configure_logging(*, level: str = "info", json: bool | None = None) -> None:
    """Configure structlog for the CLI: ``json`` None chooses JSON when stderr is not a terminal.

    Logs go to stderr; ``level`` is a stdlib level name. Nothing here logs request headers, so API keys
    never reach logs (the client never passes them to a logger), and every string of every event is redacted
    (:mod:`batchpipe.domain.redact`) in case a server echoed one.
    """
    global _json_only
    use_json = (not sys.stderr.isatty()) if json is None else json
    _json_only = json is True
    show_emulator_requests(level.lower() == "debug")
    processors: list[Any] = [
        _drop_emulator_requests,
        structlog.contextvars.merge_contextvars,
        _redact_secrets,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
