"""Redaction of secrets from text a server echoes, before it reaches the ledger, exports, logs or the screen.

A server, a gateway or a proxy may echo credentials in the text it sends back: a per-request error message in
an error-file line or a non-2xx output line, a batch's ``errors.data[].message``, an error page. Everything
batchpipe keeps or prints of such text passes through :func:`redact` (strings) or :func:`redact_value` (JSON
values), which replace with :data:`REDACTED`:

- ``Bearer <token>`` (any token, any case);
- OpenAI-style secret keys: ``sk-`` followed by 16 or more key characters (``sk-proj-...``, ``sk-svcacct-...``);
- the value of a credential-looking query or form parameter (``api_key=``, ``api-key=``, ``key=``, ``token=``,
  ``access_token=``, ``secret=``, ``password=``, ``sig=``);
- user info in a URL (``https://user:pass@host``);
- every secret registered with :func:`remember_secret` (the configured API key: ``runtime.wiring`` registers it
  when it builds the client), wherever it appears.

The registry is process-wide on purpose: the collector and the ledger handle text long after the settings that
hold the key were built, and must not need the key passed to them.
"""

from __future__ import annotations

import re
import threading
from typing import Final

__all__ = ["REDACTED", "forget_secrets", "redact", "redact_value", "remember_secret"]

#: What a secret is replaced with.
REDACTED: Final = "[redacted]"
#: Secrets shorter than this are not registered (replacing a 3-character "key" everywhere would garble text).
MIN_SECRET_CHARS: Final = 8

_PATTERNS: Final = re.compile(
    r"(?P<bearer>(?i:bearer)\s+)[A-Za-z0-9._~+/=-]{4,}"
    r"|\bsk-[A-Za-z0-9_-]{16,}"
    r"|(?P<param>(?i:\b(?:api[_-]?key|key|token|access[_-]?token|secret|password|sig))=)[^\s&\"'<>]+"
    r"|(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^\s/@:\"'<>]+:[^\s/@\"'<>]+@"
)
_secrets: set[str] = set()
_lock = threading.Lock()
_known: tuple[str, ...] = ()


def remember_secret(secret: str | None) -> None:
    """Register ``secret`` (e.g. the API key) so that :func:`redact` removes it wherever it appears.

    ``None`` and strings shorter than :data:`MIN_SECRET_CHARS` are ignored. Thread-safe.
    """
    global _known
    if secret is None or len(secret.strip()) < MIN_SECRET_CHARS:
        return
    with _lock:
        _secrets.add(secret.strip())
        _known = tuple(sorted(_secrets, key=len, reverse=True))  # the longest first: no partial leftovers


def forget_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _known
    with _lock:
        _secrets.clear()
        _known = ()


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("param") or match.group("scheme") or ""
    return f"{prefix}{REDACTED}@" if match.group("scheme") else f"{prefix}{REDACTED}"


def redact(text: str) -> str:
    """``text`` with every secret described in the module docstring replaced by :data:`REDACTED`.

    Pure apart from reading the registry; linear in ``len(text)`` (one regular-expression pass, then one
    ``str.replace`` per registered secret). Text without secrets comes back unchanged (the same object).
    """
    for secret in _known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if not any(marker in text for marker in ("earer", "EARER", "sk-", "=", "://")):
        return text  # the common case: nothing that could match
    return _PATTERNS.sub(_replace, text)


def redact_value(value: object) -> object:
    """A JSON value (``dict``/``list``/``str``/...) with :func:`redact` applied to every string in it, keys
    included; numbers, booleans and ``None`` are returned as they are. Containers are copied, never changed."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value
