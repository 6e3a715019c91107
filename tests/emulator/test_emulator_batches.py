"""Batch validation, cancel, expiry, pagination, auth, files routes and restart, over real HTTP."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest
from emu_helpers import gen_line, jsonl, read_lines, upload_batch_file, wait_for

from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig, FaultConfig, SpeedConfig

SLOW = SpeedConfig(mode="realistic", validating_s=0, per_request_s=0.15, finalizing_s=0, cancelling_s=0.1)


def _create(client: openai.OpenAI, file_id: str, endpoint: str = "/v1/images/generations") -> str:
    return client.batches.create(input_file_id=file_id, endpoint=endpoint, completion_window="24h").id  # type: ignore[arg-type]


def test_validation_failures_are_reported_per_line(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator())
    raw = b"".join(
        [
            orjson.dumps(gen_line("a")) + b"\n",
            b"{not json\n",
            orjson.dumps(gen_line("a")) + b"\n",  # duplicate custom_id
            orjson.dumps({**gen_line("c"), "url": "/v1/images/edits"}) + b"\n",
            orjson.dumps({**gen_line("d"), "method": "GET"}) + b"\n",
            orjson.dumps(gen_line("e", model="gpt-image-1")) + b"\n",  # second model
            orjson.dumps({k: v for k, v in gen_line("f").items() if k != "custom_id"}) + b"\n",
        ]
    )
    file_id = client.files.create(file=("bad.jsonl", raw), purpose="batch").id
    batch = wait_for(client, _create(client, file_id))
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    found = {(e.code, e.line) for e in batch.errors.data}
    assert found == {
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("url_mismatch", 4),
        ("invalid_method", 5),
        ("model_mismatch", 6),
        ("missing_required_parameter", 7),
    }


def test_input_file_missing_or_wrong_purpose_fails_the_batch(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator())
    missing = wait_for(client, _create(client, "file-doesnotexist"))
    assert missing.status == "failed" and missing.errors.data[0].param == "input_file_id"
    vision = client.files.create(file=("x.jsonl", jsonl([gen_line("a")])), purpose="user_data").id
    wrong = wait_for(client, _create(client, vision))
    assert wrong.status == "failed" and "purpose" in wrong.errors.data[0].message


def test_create_and_upload_request_errors(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator())
    file_id = upload_batch_file(client, [gen_line("a")])
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=file_id, endpoint="/v1/images/generations", completion_window="48h")  # type: ignore[arg-type]
    assert info.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/images/generations",
            completion_window="24h",
            metadata={f"k{i}": "v" for i in range(17)},
        )
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("input.csv", b"a,b\n"), purpose="batch")
    assert "jsonl" in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.files.create(
            file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 5}
        )
    ok = client.files.create(
        file=("in.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert ok.expires_at == ok.created_at + 3600


def test_token_limit_exceeded_fails_the_second_batch(make_emulator, make_client, recorder) -> None:
    emu = make_emulator(speed=SLOW, enqueued_token_limit={"gpt-image-2": 50})
    client = make_client(emu)
    first = _create(client, upload_batch_file(client, [gen_line(f"a{i}", prompt="x" * 60) for i in range(3)]))
    wait_for(client, first, ("in_progress",))
    second = wait_for(client, _create(client, upload_batch_file(client, [gen_line("b", prompt="x" * 60)])))
    assert second.status == "failed"
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded" and error.line is None and error.param is None
    assert error.message.startswith("Enqueued token limit reached for gpt-image-2 in organization org-emulator.")
    assert "Limit: 50 enqueued tokens." in error.message
    assert wait_for(client, first).status == "completed"
    third = wait_for(client, _create(client, upload_batch_file(client, [gen_line("c", prompt="x" * 60)])))
    assert third.status == "completed"  # the first batch released its tokens


def test_cancel_keeps_partial_results(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator(speed=SLOW, concurrency=1))
    batch_id = _create(client, upload_batch_file(client, [gen_line(f"l{i}") for i in range(12)]))
    deadline = time.monotonic() + 20
    while client.batches.retrieve(batch_id).request_counts.completed < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = wait_for(client, batch_id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    ok = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    assert 2 <= len(ok) < 12
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors)
    assert {r["custom_id"] for r in ok} | {e["custom_id"] for e in errors} == {f"l{i}" for i in range(12)}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch_id)


def test_expiry_fault_gives_partial_results(make_emulator, make_client, recorder) -> None:
    faults = FaultConfig(expire_after_lines=2, expire_first_n_batches=1)
    client = make_client(make_emulator(faults=faults))
    first = wait_for(client, _create(client, upload_batch_file(client, [gen_line(f"l{i}") for i in range(5)])))
    assert first.status == "expired" and first.expired_at is not None
    ok = read_lines(client, first.output_file_id)
    expired = read_lines(client, first.error_file_id)
    assert len(ok) == 2 and len(expired) == 3
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in expired)
    second = wait_for(client, _create(client, upload_batch_file(client, [gen_line(f"l{i}") for i in range(3)])))
    assert second.status == "completed"  # only the first batch expires


def test_batch_list_pagination_newest_first(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator())
    file_id = upload_batch_file(client, [gen_line("a")])
    created = [_create(client, file_id) for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    every = [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after` across pages
    assert every == created[::-1]
    raw = httpx.get(f"{client.base_url}batches", params={"limit": 101}, headers={"Authorization": "Bearer k"})
    assert raw.status_code == 400
    for batch_id in created:
        wait_for(client, batch_id)


def test_missing_api_key_is_401(make_emulator) -> None:
    emu = make_emulator()
    response = httpx.get(f"{emu.base_url}/batches")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"].startswith("You didn't provide an API key.") and error["type"] == "invalid_request_error"
    assert error["param"] is None and error["code"] is None


def test_files_list_delete_and_range(make_emulator, make_client, recorder) -> None:
    client = make_client(make_emulator())
    ids = [client.files.create(file=(f"f{i}.jsonl", b"0123456789\n"), purpose="batch").id for i in range(3)]
    other = client.files.create(file=("p.png", b"\x89PNG-not-really"), purpose="vision").id
    listed = client.files.list(purpose="batch", order="asc")
    assert [f.id for f in listed.data] == ids
    assert client.files.list(order="desc", limit=1).data[0].id == other
    ranged = httpx.get(
        f"{client.base_url}files/{ids[0]}/content", headers={"Authorization": "Bearer k", "Range": "bytes=4-"}
    )
    assert ranged.status_code == 206 and ranged.content == b"456789\n"
    assert ranged.headers["content-range"] == "bytes 4-10/11"
    assert client.files.delete(ids[1]).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[1])
    with pytest.raises(openai.NotFoundError):
        client.files.content(ids[1])


def test_restart_keeps_state_and_resumes_a_running_batch(tmp_path, recorder) -> None:
    lines = [gen_line(f"l{i}") for i in range(8)]
    with EmbeddedEmulator(EmulatorConfig(state_dir=tmp_path, speed=SLOW, concurrency=1)) as first:
        client = openai.OpenAI(api_key="k", base_url=first.base_url, max_retries=0)
        done_id = _create(client, upload_batch_file(client, lines[:2]))
        wait_for(client, done_id)
        running_id = _create(client, upload_batch_file(client, lines))
        deadline = time.monotonic() + 20
        while client.batches.retrieve(running_id).request_counts.completed < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.close()
    with EmbeddedEmulator(EmulatorConfig(state_dir=tmp_path)) as second:
        client = openai.OpenAI(api_key="k", base_url=second.base_url, max_retries=0)
        finished = client.batches.retrieve(done_id)
        assert finished.status == "completed" and len(read_lines(client, finished.output_file_id)) == 2
        resumed = wait_for(client, running_id)
        assert resumed.status == "completed" and resumed.request_counts.completed == 8
        ids = [row["custom_id"] for row in read_lines(client, resumed.output_file_id)]
        assert sorted(ids) == sorted(f"l{i}" for i in range(8))  # each line exactly once
        client.close()


def test_refused_requests_go_to_the_error_file(make_emulator, make_client, recorder, schemas) -> None:
    client = make_client(make_emulator())
    edit = {"model": "gpt-image-2", "prompt": "on a beach", "size": "1024x1024"}
    lines = [
        gen_line("ok"),
        gen_line("long", prompt="x" * 32_001),
        gen_line("jpeg-transparent", background="transparent", output_format="jpeg"),
        gen_line("blocked", prompt="a cat EMULATOR_BLOCK"),
    ]
    edits = [
        {
            "custom_id": "url",
            "method": "POST",
            "url": "/v1/images/edits",
            "body": {**edit, "images": [{"image_url": "http://127.0.0.1:9/missing.png"}]},
        },
        {
            "custom_id": "fid",
            "method": "POST",
            "url": "/v1/images/edits",
            "body": {**edit, "images": [{"file_id": "file-unknown"}]},
        },
    ]
    gen = wait_for(client, _create(client, upload_batch_file(client, lines)))
    ed = wait_for(client, _create(client, upload_batch_file(client, edits), "/v1/images/edits"))
    assert gen.status == ed.status == "completed"
    assert (gen.request_counts.completed, gen.request_counts.failed) == (1, 3)
    assert (ed.request_counts.completed, ed.request_counts.failed) == (0, 2) and ed.output_file_id is None
    errors = read_lines(client, gen.error_file_id) + read_lines(client, ed.error_file_id)
    params = {}
    for row in errors:
        assert row["error"] is None and row["response"]["status_code"] == 400
        schemas.validate("ErrorResponse", row["response"]["body"])
        params[row["custom_id"]] = row["response"]["body"]["error"]
    assert set(params) == {"long", "jpeg-transparent", "blocked", "url", "fid"}
    assert params["long"]["param"] == "prompt" and params["blocked"]["code"] == "moderation_blocked"
    assert params["url"]["param"] == "images[0].image_url" and params["fid"]["param"] == "images[0].file_id"
