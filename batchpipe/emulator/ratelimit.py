"""Request rate limiting and the ``x-ratelimit-*`` headers (FACTS §5, G-RL).

A fixed 60-second window counts every request (failed ones too, as G-RL says). Pure logic with an
injected clock, so it is tested with a table and no sleeping.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateDecision", "RateLimiter", "format_duration", "rate_limit_body"]

WINDOW_S = 60.0


def format_duration(seconds: float) -> str:
    """A Go-style duration string as the service sends in ``x-ratelimit-reset-*`` (G-RL samples ``1s``,
    ``6m0s``): ``0.25`` → ``"250ms"``, ``1`` → ``"1s"``, ``1.5`` → ``"1.5s"``, ``360`` → ``"6m0s"``,
    ``3725`` → ``"1h2m5s"``. Negative input counts as 0 (``"0s"``).
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of counting one request.

    ``allowed``; ``limit`` / ``remaining`` / ``reset_s`` (seconds until the window resets) for the request
    headers; ``used`` (requests counted in the window including this one); ``tokens_limit`` /
    ``tokens_remaining`` / ``tokens_reset_s`` for the token headers.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    used: int
    tokens_limit: int
    tokens_remaining: int
    tokens_reset_s: float

    def headers(self) -> dict[str, str]:
        """The six ``x-ratelimit-*`` headers (plus ``retry-after``/``retry-after-ms`` when refused).

        ``retry-after`` is an integer number of seconds >= 1 (SPEC ``TooManyRequests``).
        """
        out = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": format_duration(self.reset_s),
            "x-ratelimit-limit-tokens": str(self.tokens_limit),
            "x-ratelimit-remaining-tokens": str(self.tokens_remaining),
            "x-ratelimit-reset-tokens": format_duration(self.tokens_reset_s),
        }
        if not self.allowed:
            out["retry-after"] = str(max(1, math.ceil(self.reset_s)))
            out["retry-after-ms"] = str(max(1, math.ceil(self.reset_s * 1000)))
        return out


def rate_limit_body(decision: RateDecision, org: str) -> dict[str, object]:
    """The 429 ``ErrorResponse`` body for requests-per-minute (G-ERR "Rate limit reached for requests")."""
    wait = format_duration(decision.reset_s)
    return {
        "error": {
            "message": (
                f"Rate limit reached for requests in organization {org} on requests per min (RPM): "
                f"Limit: {decision.limit}, Used: {decision.used - 1}, Requested: 1. "
                f"Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits "
                "to learn more."
            ),
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


class RateLimiter:
    """Requests-per-minute and tokens-per-minute counters over fixed windows (thread-safe).

    ``rpm_limit``: requests per window; a request over it is refused (and still counted, as G-RL says
    failed requests count). ``tpm_limit``: tokens per window, reported only. ``clock``: seconds, monotonic.
    ``window_s``: the window's length in seconds (the service's 60; shorter only so a benchmark can show
    pacing in seconds).
    """

    def __init__(
        self, rpm_limit: int, tpm_limit: int, *, clock: Callable[[], float], window_s: float = WINDOW_S
    ) -> None:
        self._window_s = window_s
        self._rpm = rpm_limit
        self._tpm = tpm_limit
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._requests = 0
        self._tokens = 0

    def _roll(self, now: float) -> None:
        if now - self._window_start >= self._window_s:
            elapsed_windows = math.floor((now - self._window_start) / self._window_s)
            self._window_start += elapsed_windows * self._window_s
            self._requests = 0
            self._tokens = 0

    def hit(self, tokens: int = 0) -> RateDecision:
        """Count one request carrying ``tokens`` estimated tokens and decide whether it may proceed."""
        with self._lock:
            now = self._clock()
            self._roll(now)
            self._requests += 1
            allowed = self._requests <= self._rpm
            if allowed:
                self._tokens += tokens
            reset = max(0.0, self._window_start + self._window_s - now)
            return RateDecision(
                allowed=allowed,
                limit=self._rpm,
                remaining=max(0, self._rpm - self._requests),
                reset_s=reset,
                used=self._requests,
                tokens_limit=self._tpm,
                tokens_remaining=max(0, self._tpm - self._tokens),
                tokens_reset_s=reset,
            )
