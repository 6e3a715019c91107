"""The one backoff (domain/backoff.py) and its users: the client's retry policy, the poll loop, reconnects."""

from __future__ import annotations

import pytest

from batchpipe.adapters.openai.retry import RetryPolicy, backoff_delay_s
from batchpipe.domain.backoff import Backoff


@pytest.mark.parametrize(
    ("backoff", "attempt", "rand", "expected"),
    [
        (Backoff(0.5, 8.0, 2.0, 0.25), 0, 0.0, 0.5),
        (Backoff(0.5, 8.0, 2.0, 0.25), 3, 0.0, 4.0),
        (Backoff(0.5, 8.0, 2.0, 0.25), 4, 0.0, 8.0),
        (Backoff(0.5, 8.0, 2.0, 0.25), 40, 0.0, 8.0),  # capped
        (Backoff(0.5, 8.0, 2.0, 0.25), 10**9, 0.999, 8.0 * (1 - 0.25 * 0.999)),  # no overflow
        (Backoff(0.5, 8.0, 2.0, 0.25), 2, 1.0, 1.5),  # jitter shortens by up to 25 %
        (Backoff(0.2, 2.0, 1.5), 0, 0.0, 0.2),  # the poll loop on a local API
        (Backoff(0.2, 2.0, 1.5), 2, 0.0, pytest.approx(0.45)),
        (Backoff(0.1, 2.0), 5, 0.0, 2.0),  # download reconnects
        (Backoff(1.0, 1.0), -3, 0.0, 1.0),  # a negative attempt counts as the first
    ],
)
def test_delays(backoff: Backoff, attempt: int, rand: float, expected: float) -> None:
    assert backoff.delay_s(attempt, rand) == expected


@pytest.mark.parametrize(
    "bad", [(-1.0, 1.0, 2.0, 0.0), (2.0, 1.0, 2.0, 0.0), (0.1, 1.0, 0.5, 0.0), (0.1, 1.0, 2.0, 2.0)]
)
def test_bad_settings_are_refused(bad: tuple[float, float, float, float]) -> None:
    with pytest.raises(ValueError, match=r"initial_s|factor|jitter"):
        Backoff(*bad)


def test_the_client_policy_uses_the_same_backoff() -> None:
    policy = RetryPolicy(initial_delay_s=0.5, max_delay_s=8.0, jitter=0.25)
    for attempt in range(8):
        for rand in (0.0, 0.5, 0.99):
            assert backoff_delay_s(policy, attempt, rand) == Backoff(0.5, 8.0, 2.0, 0.25).delay_s(attempt, rand)
