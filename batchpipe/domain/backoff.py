"""The one backoff every waiting loop uses: the HTTP client's retries, the poll loop, download reconnects.

``delay_s(attempt) = min(initial_s * factor**attempt, max_s) * (1 - jitter * rand)``: exponential, capped, and
optionally shortened by up to ``jitter`` at random (openai-python ``_calculate_retry_timeout`` for the client:
0.5 s to 8 s, factor 2, jitter 0.25; fact sheet §5 "SDK behaviour").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential backoff: ``initial_s`` (seconds) for attempt 0, times ``factor`` per attempt, at most
    ``max_s``; ``jitter`` in ``[0, 1]`` shortens a delay by up to that fraction. Raises ``ValueError`` for
    ``initial_s < 0``, ``max_s < initial_s``, ``factor < 1`` or a jitter outside ``[0, 1]``."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.initial_s <= self.max_s:
            raise ValueError("need 0 <= initial_s <= max_s")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay_s(self, attempt: int, rand: float = 0.0) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); ``rand`` uniform in ``[0, 1)``."""
        try:
            base = min(self.initial_s * self.factor ** max(attempt, 0), self.max_s)
        except OverflowError:  # however long a loop has waited
            base = self.max_s
        return max(base * (1.0 - self.jitter * rand), 0.0)
