"""Never pay twice: intent records, lost responses, crashes between create and the state write, token waves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchpipe.adapters.openai import ApiSettings, OpenAIClient
from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig, SpeedConfig
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.validate import make_items
from batchpipe.runtime.runner import Runner
from batchpipe.runtime.settings import RunOptions


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (not an Exception, so nothing catches it)."""


class Lossy(httpx.AsyncBaseTransport):
    """Forwards to the emulator, then loses the answer of the first matching request (or 'dies' after it)."""

    def __init__(self, method: str, path_end: str, *, crash: bool = False) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._method = method
        self._path_end = path_end
        self._crash = crash
        self.fired = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if self.fired == 0 and request.method == self._method and request.url.path.endswith(self._path_end):
            await response.aread()
            self.fired += 1
            if self._crash:
                raise Crash
            raise httpx.ReadError("connection reset after the request was processed", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _manifest(path: Path, n: int) -> Path:
    path.write_bytes(
        b"".join(
            orjson.dumps({"key": f"k{i}", "prompt": f"A lamp, variant {i} " + "word " * 40,
                          "model": "gpt-image-2.5-flare", "quality": "low"}) + b"\n"
            for i in range(n)
        )
    )  # fmt: skip
    return path


async def _run(
    tmp_path: Path, emulator: EmbeddedEmulator, *, transport: httpx.AsyncBaseTransport | None = None, **options: Any
) -> Any:
    spec = JobSpec.for_manifest(tmp_path / "m.jsonl", "lamps", workdir=tmp_path)
    ledger = SqliteLedger(tmp_path / "w" / "ledger.sqlite")
    settings = ApiSettings(base_url=emulator.base_url, api_key="emulator")
    opts = RunOptions(workdir=tmp_path / "w", poll_interval_s=0.05, max_poll_interval_s=0.2, **options)
    try:
        async with OpenAIClient(settings, transport=transport) as client:
            runner = Runner(ledger, client, options=opts, output_dir=tmp_path / "out", api_label="emulator",
                            sleep=_fast_sleep)  # fmt: skip

            def items() -> Iterator[Any]:
                return iter(make_items(spec))

            return await runner.run("lamps", "h", items, source_name="m.jsonl")
    finally:
        ledger.close()


async def _fast_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(min(seconds, 0.05))


def _remote_batches(emulator: EmbeddedEmulator) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = httpx.get(f"{emulator.base_url}/batches", params=params, headers={"Authorization": "Bearer x"}).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["last_id"]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmbeddedEmulator]:
    with EmbeddedEmulator(EmulatorConfig(state_dir=tmp_path / "emu")) as emu:
        yield emu


async def test_a_lost_create_response_is_adopted_not_repeated(tmp_path: Path, emulator: EmbeddedEmulator) -> None:
    _manifest(tmp_path / "m.jsonl", 6)
    lossy = Lossy("POST", "/batches")
    summary = await _run(tmp_path, emulator, transport=lossy)
    assert lossy.fired == 1
    assert summary.items == {"succeeded": 6}
    assert len(_remote_batches(emulator)) == 1  # created once, adopted after the lost answer


async def test_a_crash_between_create_and_the_state_write_resumes_without_a_second_batch(
    tmp_path: Path, emulator: EmbeddedEmulator
) -> None:
    _manifest(tmp_path / "m.jsonl", 6)
    with pytest.raises(Crash):
        await _run(tmp_path, emulator, transport=Lossy("POST", "/batches", crash=True))
    ledger = SqliteLedger(tmp_path / "w" / "ledger.sqlite")
    assert [s.status for s in ledger.shards()] == ["creating"]  # the intent was recorded before the call
    ledger.close()
    summary = await _run(tmp_path, emulator)  # "cron restarts it"
    assert summary.items == {"succeeded": 6}
    batches = _remote_batches(emulator)
    assert len(batches) == 1 and batches[0]["metadata"]["batchpipe_shard"].startswith("lamps-")


async def test_a_lost_upload_response_is_adopted(tmp_path: Path, emulator: EmbeddedEmulator) -> None:
    _manifest(tmp_path / "m.jsonl", 4)
    lossy = Lossy("POST", "/files")
    summary = await _run(tmp_path, emulator, transport=lossy, cleanup_inputs=False)
    assert lossy.fired == 1 and summary.items == {"succeeded": 4}
    listed = httpx.get(f"{emulator.base_url}/files", params={"purpose": "batch"}, headers={"Authorization": "Bearer x"})
    assert len(listed.json()["data"]) == 1  # one upload, adopted, not two


async def test_enqueued_token_budget_sends_waves_instead_of_failing(tmp_path: Path) -> None:
    _manifest(tmp_path / "m.jsonl", 40)  # ~70 input tokens each; shards of 10 lines ≈ 700 tokens
    config = EmulatorConfig(state_dir=tmp_path / "emu", enqueued_token_limit={"gpt-image-2.5-flare": 1600})
    with EmbeddedEmulator(config) as emu:
        summary = await _run(tmp_path, emu, max_shard_requests=10, enqueued_token_budget={"gpt-image-2.5-flare": 1600})
        batches = _remote_batches(emu)
    assert summary.items == {"succeeded": 40}
    assert len(batches) == 4 and all(b["status"] == "completed" for b in batches)  # no token_limit_exceeded


async def test_without_a_budget_token_limit_failures_are_retried(tmp_path: Path) -> None:
    _manifest(tmp_path / "m.jsonl", 40)
    slow = SpeedConfig(mode="realistic", validating_s=0, per_request_s=0.2, finalizing_s=0)  # batches stay in flight
    config = EmulatorConfig(state_dir=tmp_path / "emu", speed=slow, enqueued_token_limit={"gpt-image-2.5-flare": 1600})
    with EmbeddedEmulator(config) as emu:
        summary = await _run(tmp_path, emu, max_shard_requests=10, max_attempts=5)
        batches = _remote_batches(emu)
    failed = [b for b in batches if b["status"] == "failed"]
    assert failed and failed[0]["errors"]["data"][0]["code"] == "token_limit_exceeded"
    assert summary.items.get("succeeded") == 40  # every item got through on a later attempt


async def test_the_user_chooses_which_final_errors_to_retry(tmp_path: Path, emulator: EmbeddedEmulator) -> None:
    (tmp_path / "m.jsonl").write_bytes(
        orjson.dumps({"key": "b", "prompt": "EMULATOR_BLOCK mug", "model": "gpt-image-2.5-flare"}) + b"\n"
    )
    summary = await _run(tmp_path, emulator, max_attempts=3, retry_error_codes=frozenset({"moderation_blocked"}))
    ledger = SqliteLedger(tmp_path / "w" / "ledger.sqlite")
    attempts = sorted(row.attempt for row in ledger.items(job="lamps"))
    ledger.close()
    assert attempts == [1, 2, 3]  # resubmitted until max_attempts, because the user asked
    assert summary.items == {"failed": 1, "superseded": 2}


class DiesOnDelete(Lossy):
    """Forwards everything; the first DELETE reaches the service and then the process 'dies'."""

    def __init__(self) -> None:
        super().__init__("DELETE", "", crash=True)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "DELETE" and not self.fired:
            self.fired += 1
            raise Crash
        return response


async def test_files_left_by_a_kill_during_clean_up_are_deleted_on_restart(
    tmp_path: Path, emulator: EmbeddedEmulator
) -> None:
    _manifest(tmp_path / "m.jsonl", 3)
    with pytest.raises(Crash):
        await _run(tmp_path, emulator, transport=DiesOnDelete())
    listed = httpx.get(f"{emulator.base_url}/files", headers={"Authorization": "Bearer x"}).json()["data"]
    assert len(listed) == 1  # the input was deleted (then the 'crash'); the output file is still there
    summary = await _run(tmp_path, emulator)
    assert summary.items == {"succeeded": 3}
    listed = httpx.get(f"{emulator.base_url}/files", headers={"Authorization": "Bearer x"}).json()["data"]
    assert listed == []
    ledger = SqliteLedger(tmp_path / "w" / "ledger.sqlite")
    assert all(f["deleted_at"] for f in ledger.files())
    ledger.close()


async def test_polling_stays_at_the_base_interval_while_requests_are_answered(tmp_path: Path) -> None:
    import asyncio
    import statistics

    _manifest(tmp_path / "m.jsonl", 24)
    slow = SpeedConfig(mode="realistic", validating_s=0, per_request_s=0.15, finalizing_s=0)
    asked: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        asked.append(seconds)
        await asyncio.sleep(seconds)

    with EmbeddedEmulator(EmulatorConfig(state_dir=tmp_path / "emu", speed=slow)) as emu:
        spec = JobSpec.for_manifest(tmp_path / "m.jsonl", "lamps", workdir=tmp_path)
        ledger = SqliteLedger(tmp_path / "w" / "ledger.sqlite")
        opts = RunOptions(workdir=tmp_path / "w", poll_interval_s=0.05, max_poll_interval_s=1.0)
        async with OpenAIClient(ApiSettings(base_url=emu.base_url, api_key="emulator")) as client:
            runner = Runner(ledger, client, options=opts, output_dir=tmp_path / "out", sleep=recording_sleep)
            summary = await runner.run("lamps", "h", lambda: iter(make_items(spec)), source_name="m.jsonl")
        ledger.close()
    assert summary.items == {"succeeded": 24}
    assert len(asked) >= 5 and statistics.median(asked) == 0.05  # no backoff while counts move
