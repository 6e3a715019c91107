"""Retry policy as data plus pure functions: when to retry an API call, and how long to wait first.

Nothing here does I/O or reads a clock: the caller passes ``now_s`` (unix seconds) and ``rand`` (a float in
``[0, 1)``), so every decision is reproducible in a table test.

What is retried (openai-python ``_base_client._should_retry``; fact sheet §5 "SDK behaviour"):

* ``x-should-retry: false`` never; a ``retry-after`` longer than ``max_retry_after_s`` never (the error
  carries ``retry_after_s`` so the caller can reschedule); ``429`` with code ``insufficient_quota`` never
  (fact sheet §5 "429 variants": credits exhausted, retrying cannot help); nothing once ``attempt`` reached
  ``max_retries``.
* **Idempotent** calls (GET, DELETE, cancel): 408, 409, 429, every 5xx, any connection error, and any status
  when the server says ``x-should-retry: true``.
* **Non-idempotent** calls (``POST /files``, ``POST /batches``; gotchas #9: there is no idempotency key, a
  repeated create makes a duplicate batch) are retried only when the request certainly did not take effect:

  - ``429``: the rate limiter rejects the request before it is processed;
  - a connection error *before the request was sent* (``request_sent=False``: connect error, connect
    timeout, pool timeout).

  Not retried: 5xx, 408 (may come from an intermediary after the origin accepted the body), 409, read or
  write timeouts and cut connections after sending. The caller reconciles instead (lists files/batches and
  looks for its idempotency key in ``metadata``). ``x-should-retry: true`` does not override this.

Delay: the server's ``retry-after-ms`` / ``retry-after`` when it is in ``(0, max_retry_after_s]``, otherwise
``min(initial_delay_s * 2**attempt, max_delay_s) * (1 - jitter * rand)`` (openai-python
``_calculate_retry_timeout``: 0.5 s to 8 s, minus up to 25 %).
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from batchpipe.domain.backoff import Backoff

__all__ = [
    "DEFAULT_RETRY_AFTER_PARSE_CAP_S",
    "RetryDecision",
    "RetryPolicy",
    "backoff_delay_s",
    "decide",
    "parse_duration_s",
    "parse_retry_after",
]

DEFAULT_RETRY_AFTER_PARSE_CAP_S = 86_400.0
"""Largest value :func:`parse_retry_after` returns (seconds); bigger or infinite values are clamped to it."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry.

    ``max_retries``: retries after the first attempt (so up to ``max_retries + 1`` requests);
    ``initial_delay_s`` / ``max_delay_s``: exponential backoff bounds in seconds; ``jitter``: fraction in
    ``[0, 1]`` by which a backoff delay is randomly shortened; ``max_retry_after_s``: the longest
    server-requested wait honoured (openai-python ``MAX_RETRY_AFTER_DELAY`` = 120 s). Raises ``ValueError``
    on out-of-range values.
    """

    max_retries: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: float = 0.25
    max_retry_after_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 0 <= self.initial_delay_s <= self.max_delay_s:
            raise ValueError("need 0 <= initial_delay_s <= max_delay_s")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.max_retry_after_s < 0:
            raise ValueError("max_retry_after_s must be >= 0")

    @property
    def backoff(self) -> Backoff:
        """The exponential backoff of this policy (factor 2, :class:`~batchpipe.domain.backoff.Backoff`)."""
        return Backoff(self.initial_delay_s, self.max_delay_s, 2.0, self.jitter)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Outcome of :func:`decide`: ``retry``; ``delay_s`` to sleep first (0 when not retrying); ``reason``
    (short, log-friendly)."""

    retry: bool
    delay_s: float
    reason: str


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _seconds(text: str) -> float | None:
    """A non-negative number of seconds, ``inf`` for overflow, None for garbage/negative/NaN."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if math.isnan(value) or value < 0:
        return None
    return value


def parse_retry_after(
    headers: Mapping[str, str], now_s: float, *, cap_s: float = DEFAULT_RETRY_AFTER_PARSE_CAP_S
) -> float | None:
    """The wait the server asks for, in seconds, or None when it asks for none (or says nonsense).

    Order (openai-python ``_parse_retry_after_header``): ``retry-after-ms`` (milliseconds, may be fractional),
    then ``retry-after`` as seconds (integer per SPEC ``components.responses.TooManyRequests``; floats
    accepted), then ``retry-after`` as an HTTP date (RFC 9110 §10.2.3), measured from ``now_s`` (unix
    seconds). Header names are matched case-insensitively. Negative values, NaN, dates in the past and
    unparseable text are ignored; huge or infinite values are clamped to ``cap_s``.
    """
    lowered = _lower(headers)
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        value = _seconds(raw)
        if value is not None:
            return min(value / divisor, cap_s)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse as naive; RFC 9110 dates are always GMT
        return None
    delay = when.timestamp() - now_s
    if delay < 0:
        return None
    return min(delay, cap_s)


_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration_s(text: str) -> float | None:
    """Parse a Go-style duration string (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``) into seconds.

    This is the format of ``x-ratelimit-reset-requests`` / ``-tokens`` (fact sheet §5, G-RL samples ``1s``,
    ``6m0s``). A bare number is taken as seconds (lenient). Returns None for empty, negative or malformed
    text.
    """
    s = text.strip()
    if not s:
        return None
    bare = _seconds(s)
    if bare is not None:
        return bare if math.isfinite(bare) else None
    pos = 0
    total = 0.0
    while pos < len(s):
        match = _DURATION_PART.match(s, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
        pos = match.end()
    return total


def backoff_delay_s(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Exponential backoff in seconds before the next retry (``attempt`` = retries already made).

    ``min(initial_delay_s * 2**attempt, max_delay_s) * (1 - jitter * rand)``, never negative: the policy's
    :class:`~batchpipe.domain.backoff.Backoff`.
    """
    return policy.backoff.delay_s(attempt, rand)


def _eligible(status_code: int | None, *, idempotent: bool, request_sent: bool, should_retry: bool) -> str | None:
    """The reason to retry, or None."""
    if status_code is None:
        if not request_sent:
            return "connection error before the request was sent"
        return "connection error" if idempotent else None
    if status_code == 429:
        return "rate limited (429)"
    if not idempotent:
        return None
    if should_retry:
        return "x-should-retry: true"
    if status_code in (408, 409) or status_code >= 500:
        return f"status {status_code}"
    return None


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    status_code: int | None,
    headers: Mapping[str, str],
    now_s: float,
    rand: float,
    idempotent: bool,
    error_code: str | None = None,
    request_sent: bool = True,
) -> RetryDecision:
    """Decide whether to retry a failed call and how long to wait first (rules in the module docstring).

    ``attempt``: retries already made (0 after the first failure); ``status_code``: the HTTP status, or None
    for a connection error/timeout; ``headers``: the response headers (empty without a response);
    ``now_s``: unix seconds (for HTTP-date ``retry-after``); ``rand``: uniform in ``[0, 1)`` for jitter;
    ``idempotent``: whether repeating the call is harmless; ``error_code``: ``error.code`` from the
    ``ErrorResponse`` body (SPEC ``Error``); ``request_sent``: for connection errors, False only when the
    request certainly never left (connect error/timeout, pool timeout).
    """
    if status_code is not None and status_code < 400:
        return RetryDecision(False, 0.0, f"status {status_code} is not an error")
    if attempt >= policy.max_retries:
        return RetryDecision(False, 0.0, f"retries exhausted ({policy.max_retries})")
    if status_code == 429 and error_code == "insufficient_quota":
        return RetryDecision(False, 0.0, "insufficient_quota is not retryable")
    retry_after = parse_retry_after(headers, now_s)
    if retry_after is not None and retry_after > policy.max_retry_after_s:
        return RetryDecision(
            False, 0.0, f"retry-after {retry_after:g} s exceeds the {policy.max_retry_after_s:g} s cap"
        )
    flag = _lower(headers).get("x-should-retry", "").strip().lower()
    if flag == "false":
        return RetryDecision(False, 0.0, "x-should-retry: false")
    reason = _eligible(status_code, idempotent=idempotent, request_sent=request_sent, should_retry=flag == "true")
    if reason is None:
        what = "connection error after sending" if status_code is None else f"status {status_code}"
        suffix = "" if idempotent else " on a non-idempotent call (caller reconciles)"
        return RetryDecision(False, 0.0, f"{what} is not retryable{suffix}")
    if retry_after is not None and retry_after > 0:
        return RetryDecision(True, retry_after, f"{reason}; retry-after {retry_after:g} s")
    return RetryDecision(True, backoff_delay_s(policy, attempt, rand), reason)
