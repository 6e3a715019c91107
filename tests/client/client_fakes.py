"""Fakes shared by the client tests (imported by conftest and test modules)."""

from __future__ import annotations

API_KEY = "sk-test-DO-NOT-LEAK-7f3a9c"
BASE_URL = "http://emulator.test/v1"
T0 = 1_700_000_000.0


class FakeClock:
    """``now()`` starts at ``T0``; ``sleep(s)`` records ``s`` and moves the clock forward by ``s``."""

    def __init__(self) -> None:
        self.now_s = T0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds
