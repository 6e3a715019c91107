"""Table tests for the pure retry functions: parse_retry_after, parse_duration_s, backoff_delay_s, decide."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpipe.adapters.openai.retry import (
    DEFAULT_RETRY_AFTER_PARSE_CAP_S,
    RetryPolicy,
    backoff_delay_s,
    decide,
    parse_duration_s,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def http_date(offset_s: float) -> str:
    return email.utils.formatdate(NOW + offset_s, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250.5"}, 0.2505),
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),
        ({"retry-after-ms": "abc", "retry-after": "3"}, 3.0),
        ({"retry-after-ms": "-5", "retry-after": "2"}, 2.0),
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": " 1.25 "}, 1.25),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": http_date(30)}, 30.0),
        ({"retry-after": http_date(-30)}, None),
        ({"retry-after": "Mon, 99 Foo 2023 25:61:00 GMT"}, None),
        ({"retry-after": "1e400"}, DEFAULT_RETRY_AFTER_PARSE_CAP_S),
        ({"retry-after": "inf"}, DEFAULT_RETRY_AFTER_PARSE_CAP_S),
    ],
    ids=repr,
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == pytest.approx(expected)


def test_parse_retry_after_caps() -> None:
    assert parse_retry_after({"retry-after": "500"}, NOW, cap_s=120.0) == 120.0
    assert parse_retry_after({"retry-after": http_date(600)}, NOW, cap_s=120.0) == 120.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("5m", 300.0),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        (".5s", 0.5),
        ("100us", 1e-4),
        ("3µs", 3e-6),
        ("250ns", 2.5e-7),
        ("2m30s", 150.0),
        ("0", 0.0),
        ("7", 7.0),
        (" 1s ", 1.0),
        ("", None),
        ("abc", None),
        ("-1s", None),
        ("1x", None),
        ("1s junk", None),
        ("s", None),
        ("inf", None),
    ],
)
def test_parse_duration_s(text: str, expected: float | None) -> None:
    assert parse_duration_s(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(0, 0.0, 0.5), (1, 0.0, 1.0), (2, 0.0, 2.0), (3, 0.0, 4.0), (4, 0.0, 8.0), (9, 0.0, 8.0), (0, 1.0, 0.375)],
)
def test_backoff_table(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay_s(RetryPolicy(), attempt, rand) == pytest.approx(expected)


@given(attempt=st.integers(min_value=0, max_value=10_000), rand=st.floats(min_value=0.0, max_value=1.0))
def test_backoff_bounds(attempt: int, rand: float) -> None:
    policy = RetryPolicy()
    delay = backoff_delay_s(policy, attempt, rand)
    base = min(policy.initial_delay_s * 2.0 ** min(attempt, 60), policy.max_delay_s)
    assert base * (1 - policy.jitter) - 1e-12 <= delay <= base


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="initial_delay_s"):
        RetryPolicy(initial_delay_s=10.0, max_delay_s=1.0)


SHOULD_TRUE = {"x-should-retry": "true"}
SHOULD_FALSE = {"X-Should-Retry": "false"}
QUOTA = "insufficient_quota"

# (id, idempotent, status, headers, extra kwargs, attempt, rand, expected retry, expected delay_s)
DECIDE_TABLE: list[tuple[str, bool, int | None, dict[str, str], dict[str, object], int, float, bool, float]] = [
    ("500 first", True, 500, {}, {}, 0, 0.0, True, 0.5),
    ("502 third", True, 502, {}, {}, 2, 0.0, True, 2.0),
    ("503 fifth capped", True, 503, {}, {}, 4, 0.0, True, 8.0),
    ("500 jitter", True, 500, {}, {}, 4, 1.0, True, 6.0),
    ("500 exhausted", True, 500, {}, {}, 5, 0.0, False, 0.0),
    ("408", True, 408, {}, {}, 0, 0.0, True, 0.5),
    ("409", True, 409, {}, {}, 1, 0.0, True, 1.0),
    ("429", True, 429, {}, {}, 0, 0.0, True, 0.5),
    ("429 retry-after", True, 429, {"retry-after": "3"}, {}, 0, 0.5, True, 3.0),
    ("429 retry-after-ms", True, 429, {"retry-after-ms": "1500"}, {}, 0, 0.5, True, 1.5),
    ("429 retry-after date", True, 429, {"retry-after": http_date(10)}, {}, 0, 0.0, True, 10.0),
    ("429 retry-after at cap", True, 429, {"retry-after": "120"}, {}, 0, 0.0, True, 120.0),
    ("429 retry-after over cap", True, 429, {"retry-after": "121"}, {}, 0, 0.0, False, 0.0),
    ("429 retry-after zero -> backoff", True, 429, {"retry-after": "0"}, {}, 1, 0.0, True, 1.0),
    ("429 garbage retry-after -> backoff", True, 429, {"retry-after": "later"}, {}, 0, 0.0, True, 0.5),
    ("429 quota", True, 429, {}, {"error_code": QUOTA}, 0, 0.0, False, 0.0),
    ("429 quota retry-after", True, 429, {"retry-after": "1"}, {"error_code": QUOTA}, 0, 0.0, False, 0.0),
    ("429 other code", True, 429, {}, {"error_code": "rate_limit_exceeded"}, 0, 0.0, True, 0.5),
    ("400", True, 400, {}, {}, 0, 0.0, False, 0.0),
    ("401", True, 401, {}, {}, 0, 0.0, False, 0.0),
    ("403", True, 403, {}, {}, 0, 0.0, False, 0.0),
    ("404", True, 404, {}, {}, 0, 0.0, False, 0.0),
    ("422", True, 422, {}, {}, 0, 0.0, False, 0.0),
    ("400 should-retry true", True, 400, SHOULD_TRUE, {}, 0, 0.0, True, 0.5),
    ("500 should-retry false", True, 500, SHOULD_FALSE, {}, 0, 0.0, False, 0.0),
    ("429 should-retry false", True, 429, SHOULD_FALSE, {}, 0, 0.0, False, 0.0),
    ("200 is not an error", True, 200, {}, {}, 0, 0.0, False, 0.0),
    ("conn error sent", True, None, {}, {}, 0, 0.0, True, 0.5),
    ("conn error unsent", True, None, {}, {"request_sent": False}, 1, 0.0, True, 1.0),
    ("conn error exhausted", True, None, {}, {}, 5, 0.0, False, 0.0),
    # non-idempotent (POST /files, POST /batches): only when the request certainly did not take effect
    ("NI 429", False, 429, {}, {}, 0, 0.0, True, 0.5),
    ("NI 429 retry-after", False, 429, {"retry-after": "2"}, {}, 0, 0.0, True, 2.0),
    ("NI 429 quota", False, 429, {}, {"error_code": QUOTA}, 0, 0.0, False, 0.0),
    ("NI 429 exhausted", False, 429, {}, {}, 5, 0.0, False, 0.0),
    ("NI 500", False, 500, {}, {}, 0, 0.0, False, 0.0),
    ("NI 503 retry-after", False, 503, {"retry-after": "1"}, {}, 0, 0.0, False, 0.0),
    ("NI 408", False, 408, {}, {}, 0, 0.0, False, 0.0),
    ("NI 409", False, 409, {}, {}, 0, 0.0, False, 0.0),
    ("NI 500 should-retry true", False, 500, SHOULD_TRUE, {}, 0, 0.0, False, 0.0),
    ("NI 400 should-retry true", False, 400, SHOULD_TRUE, {}, 0, 0.0, False, 0.0),
    ("NI conn error sent (read timeout)", False, None, {}, {}, 0, 0.0, False, 0.0),
    ("NI conn error unsent (connect)", False, None, {}, {"request_sent": False}, 0, 0.0, True, 0.5),
]


@pytest.mark.parametrize(
    ("idempotent", "status", "headers", "extra", "attempt", "rand", "retry", "delay_s"),
    [row[1:] for row in DECIDE_TABLE],
    ids=[row[0] for row in DECIDE_TABLE],
)
def test_decide(
    idempotent: bool,
    status: int | None,
    headers: dict[str, str],
    extra: dict[str, object],
    attempt: int,
    rand: float,
    retry: bool,
    delay_s: float,
) -> None:
    decision = decide(
        RetryPolicy(),
        attempt=attempt,
        status_code=status,
        headers=headers,
        now_s=NOW,
        rand=rand,
        idempotent=idempotent,
        **extra,  # type: ignore[arg-type]
    )
    assert decision.retry is retry, decision.reason
    assert decision.delay_s == pytest.approx(delay_s)
    assert decision.reason


def test_decide_zero_retries_policy() -> None:
    decision = decide(
        RetryPolicy(max_retries=0),
        attempt=0,
        status_code=503,
        headers={},
        now_s=NOW,
        rand=0.0,
        idempotent=True,
    )
    assert not decision.retry
    assert "exhausted" in decision.reason


def test_decide_custom_retry_after_cap() -> None:
    policy = RetryPolicy(max_retry_after_s=5.0)
    kwargs: dict[str, object] = {"attempt": 0, "status_code": 429, "now_s": NOW, "rand": 0.0, "idempotent": True}
    assert decide(policy, headers={"retry-after": "5"}, **kwargs).delay_s == 5.0  # type: ignore[arg-type]
    assert not decide(policy, headers={"retry-after": "6"}, **kwargs).retry  # type: ignore[arg-type]
