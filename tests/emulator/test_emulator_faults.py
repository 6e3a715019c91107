"""Each fault happens when configured and not otherwise (over real HTTP), plus the pure decision logic."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from emu_helpers import gen_line, read_lines, upload_batch_file, wait_for

from batchpipe.emulator import FaultConfig, RouteFaults
from batchpipe.emulator.faults import FaultInjector
from batchpipe.emulator.ratelimit import RateLimiter, format_duration

AUTH = {"Authorization": "Bearer k"}


def _batch(client: openai.OpenAI, n: int) -> str:
    file_id = upload_batch_file(client, [gen_line(f"l{i}") for i in range(n)])
    return client.batches.create(input_file_id=file_id, endpoint="/v1/images/generations", completion_window="24h").id


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (1, "1s"), (1.5, "1.5s"), (59, "59s"), (360, "6m0s"), (3725, "1h2m5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rate_limiter_fixed_window_with_fake_clock() -> None:
    now = [100.0]
    limiter = RateLimiter(2, 1000, clock=lambda: now[0])
    assert limiter.hit().allowed and limiter.hit().remaining == 0
    refused = limiter.hit()
    assert not refused.allowed
    assert refused.headers()["retry-after"] == "60" and refused.headers()["retry-after-ms"] == "60000"
    now[0] += 59.5
    assert limiter.hit().headers()["x-ratelimit-reset-requests"] == "500ms"
    now[0] += 1
    assert limiter.hit().allowed


def test_rate_limiter_shorter_window_for_benchmarks() -> None:
    now = [0.0]
    limiter = RateLimiter(1, 1000, clock=lambda: now[0], window_s=5.0)
    assert limiter.hit().allowed
    refused = limiter.hit()
    assert not refused.allowed and refused.headers()["retry-after"] == "5"
    now[0] += 5.0
    assert limiter.hit().allowed


def test_fault_injector_is_seeded_and_counts() -> None:
    config = FaultConfig(seed=7, routes={"batches.create": RouteFaults(first_n_429=1, first_n_5xx=1, share_5xx=0.5)})
    a, b = FaultInjector(config), FaultInjector(config)
    seq_a = [a.http_status("batches.create") for _ in range(20)]
    assert seq_a == [b.http_status("batches.create") for _ in range(20)]
    assert seq_a[0] == 429 and seq_a[1] in (500, 503)
    assert {s for s in seq_a[2:]} >= {None} and any(s is not None for s in seq_a[2:])
    assert a.http_status("files.list") is None  # other routes untouched
    assert FaultInjector(FaultConfig()).http_status("batches.create") is None


def test_rate_limit_429_and_headers(make_emulator) -> None:
    emu = make_emulator(rpm_limit=2)
    first = httpx.get(f"{emu.base_url}/batches", headers=AUTH)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} <= set(
        first.headers
    )
    httpx.get(f"{emu.base_url}/batches", headers=AUTH)
    client = openai.OpenAI(api_key="k", base_url=emu.base_url, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.batches.list()
    error = info.value.body
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"  # type: ignore[index]
    assert "Limit: 2, Used: 2" in error["message"]  # type: ignore[index]
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert int(info.value.response.headers["retry-after-ms"]) >= 1
    client.close()


def test_injected_429_is_retried_by_the_sdk(make_emulator, make_client, recorder) -> None:
    emu = make_emulator(faults=FaultConfig(routes={"batches.create": RouteFaults(first_n_429=1)}))
    client = make_client(emu, max_retries=2)
    file_id = upload_batch_file(client, [gen_line("a")])
    raw = client.batches.with_raw_response.create(
        input_file_id=file_id, endpoint="/v1/images/generations", completion_window="24h"
    )
    assert raw.http_response.status_code == 200
    statuses = [ex.status for ex in recorder.exchanges if ex.path == "/v1/batches"]
    assert statuses == [429, 200]  # one refused, then the SDK's own retry after retry-after-ms
    assert len(client.batches.list().data) == 1  # exactly one batch was created
    wait_for(client, raw.parse().id)
    no_fault = make_client(make_emulator(), max_retries=0)
    no_fault.batches.create(
        input_file_id=upload_batch_file(no_fault, [gen_line("a")]),
        endpoint="/v1/images/generations",
        completion_window="24h",
    )


def test_injected_5xx_share(make_emulator) -> None:
    faulty = make_emulator(faults=FaultConfig(seed=1, routes={"*": RouteFaults(share_5xx=1.0)}))
    response = httpx.get(f"{faulty.base_url}/batches", headers=AUTH)
    assert response.status_code in (500, 503) and response.json()["error"]["type"] == "server_error"
    healthy = make_emulator()
    assert httpx.get(f"{healthy.base_url}/batches", headers=AUTH).status_code == 200


def test_download_cut_for_first_download_only(make_emulator) -> None:
    emu = make_emulator(faults=FaultConfig(cut_download_after_bytes=100, cut_download_first_n=1))
    client = openai.OpenAI(api_key="k", base_url=emu.base_url, max_retries=0)
    file_id = client.files.create(file=("big.jsonl", b"x" * 300_000 + b"\n"), purpose="batch").id
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{emu.base_url}/files/{file_id}/content", headers=AUTH)
    whole = httpx.get(f"{emu.base_url}/files/{file_id}/content", headers=AUTH)
    assert whole.status_code == 200 and len(whole.content) == 300_001
    client.close()


def test_latency_is_added(make_emulator) -> None:
    slow = make_emulator(faults=FaultConfig(latency_ms=300))
    started = time.monotonic()
    assert httpx.get(f"{slow.base_url}/files", headers=AUTH).status_code == 200
    assert time.monotonic() - started >= 0.3  # a lower bound only: latency was added
    assert FaultInjector(FaultConfig()).latency_s() == 0.0


def test_null_output_file_id_for_a_while(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator(faults=FaultConfig(null_output_file_s=1.0)))
    batch = wait_for(client, _batch(client, 2))
    assert batch.status == "completed" and batch.output_file_id is None
    deadline = time.monotonic() + 10
    while batch.output_file_id is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert len(read_lines(client, batch.output_file_id)) == 2


def test_stuck_in_finalizing(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator(faults=FaultConfig(stuck_finalizing_s=1.0)))
    batch = wait_for(client, _batch(client, 2), ("finalizing",))
    assert batch.request_counts.completed == 2 and batch.output_file_id is None
    assert wait_for(client, batch.id).status == "completed"
    normal = wait_for(client, _batch(client, 1))
    assert normal.status == "completed"


def test_shuffled_output_order(make_emulator, make_client, recorder) -> None:
    ids = [f"l{i}" for i in range(8)]
    shuffled = make_client(make_emulator(concurrency=1, faults=FaultConfig(seed=3, shuffle_output=True)))
    rows = read_lines(shuffled, wait_for(shuffled, _batch(shuffled, 8)).output_file_id)
    assert sorted(r["custom_id"] for r in rows) == sorted(ids) and [r["custom_id"] for r in rows] != ids
    ordered = make_client(make_emulator(concurrency=1))
    rows = read_lines(ordered, wait_for(ordered, _batch(ordered, 8)).output_file_id)
    assert [r["custom_id"] for r in rows] == ids


def test_rows_missing_from_both_files(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator(faults=FaultConfig(drop_rows=2, drop_rows_first_n_batches=1)))
    first = wait_for(client, _batch(client, 5))
    assert first.status == "completed" and first.request_counts.completed == 5
    found = read_lines(client, first.output_file_id) + read_lines(client, first.error_file_id)
    assert len(found) == 3
    second = wait_for(client, _batch(client, 5))
    assert len(read_lines(client, second.output_file_id)) == 5
