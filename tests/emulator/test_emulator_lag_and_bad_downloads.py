"""Ambiguous creates, list lag and unreadable downloads (issue 11): each happens when configured, exactly as
documented, over real HTTP; and never when it is not configured."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from emu_helpers import gen_line, jsonl, upload_batch_file, wait_for

import batchpipe.emulator.cli as emulator_cli
from batchpipe.emulator import FaultConfig
from batchpipe.emulator.app import BAD_DOWNLOAD_HTML, GATEWAY_TIMEOUT_BODY
from batchpipe.emulator.config import BAD_DOWNLOAD_KINDS, EmulatorConfig
from batchpipe.emulator.faults import FaultInjector, server_error_body

AUTH = {"Authorization": "Bearer k"}
CREATE = {"endpoint": "/v1/images/generations", "completion_window": "24h"}


def _client(emu: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url=emu.base_url, max_retries=0)


def _listed_ids(base_url: str) -> list[str]:
    page = httpx.get(f"{base_url}/batches", params={"limit": 100}, headers=AUTH)
    assert page.status_code == 200
    return [b["id"] for b in page.json()["data"]]


def _create(base_url: str, file_id: str, shard: str) -> httpx.Response:
    body = {"input_file_id": file_id, **CREATE, "metadata": {"shard": shard}}
    return httpx.post(f"{base_url}/batches", json=body, headers=AUTH, timeout=30)


def _batches_of(emu: Any) -> list[dict[str, Any]]:
    """Every batch the emulator holds, read past the list (its state store), oldest first."""
    records, _ = emu.service.store.list_batches(after=None, limit=100)
    return [r.doc for r in reversed(records)]


# ------------------------------------------------------------------ the pure decisions
def test_ambiguous_create_decisions_are_counted_and_seeded() -> None:
    first = FaultInjector(FaultConfig(ambiguous_create_first_n=2, ambiguous_create_mode="504"))
    assert [first.ambiguous_create() for _ in range(4)] == ["504", "504", None, None]
    config = FaultConfig(seed=5, ambiguous_create_share=0.5)
    a, b = FaultInjector(config), FaultInjector(config)
    seq = [a.ambiguous_create() for _ in range(40)]
    assert seq == [b.ambiguous_create() for _ in range(40)]
    assert set(seq) == {"500", None}
    assert FaultInjector(FaultConfig()).ambiguous_create() is None


def test_bad_download_decisions_take_the_kinds_in_turn_then_draw() -> None:
    cycled = FaultInjector(FaultConfig(bad_download_first_n=8))
    assert [cycled.bad_download() for _ in range(9)] == [*BAD_DOWNLOAD_KINDS, "html", "json_error", None]
    chosen = FaultInjector(FaultConfig(bad_download_first_n=3, bad_download_kinds=("short", "garbled_line")))
    assert [chosen.bad_download() for _ in range(4)] == ["short", "garbled_line", "short", None]
    config = FaultConfig(seed=2, bad_download_share=0.5, bad_download_kinds=("html", "short"))
    a, b = FaultInjector(config), FaultInjector(config)
    seq = [a.bad_download() for _ in range(40)]
    assert seq == [b.bad_download() for _ in range(40)] and set(seq) == {"html", "short", None}
    assert FaultInjector(FaultConfig()).bad_download() is None


def test_faithful_by_default() -> None:
    faults = EmulatorConfig().faults
    assert faults.ambiguous_create_first_n == 0 and faults.ambiguous_create_share == 0.0
    assert faults.list_lag_s == 0.0
    assert faults.bad_download_first_n == 0 and faults.bad_download_share == 0.0


# ------------------------------------------------------------------ ambiguous create
@pytest.mark.parametrize("mode", ["500", "504"])
def test_an_ambiguous_create_answers_an_error_but_the_batch_exists(make_emulator, mode: str) -> None:
    emu = make_emulator(faults=FaultConfig(ambiguous_create_first_n=1, ambiguous_create_mode=mode))
    client = _client(emu)
    file_id = upload_batch_file(client, [gen_line("a"), gen_line("b")])
    answer = _create(emu.base_url, file_id, "s1")
    assert answer.status_code == int(mode)
    assert answer.json() == (server_error_body(500) if mode == "500" else GATEWAY_TIMEOUT_BODY)
    held = _batches_of(emu)
    assert len(held) == 1 and held[0]["metadata"] == {"shard": "s1"}  # it was created all the same
    assert _listed_ids(emu.base_url) == [held[0]["id"]]  # no list lag configured: listed at once
    assert wait_for(client, held[0]["id"]).status == "completed"  # and it runs
    second = _create(emu.base_url, file_id, "s2")  # only the first was ambiguous
    assert second.status_code == 200 and second.json()["metadata"] == {"shard": "s2"}
    assert len(_batches_of(emu)) == 2
    client.close()


def test_an_ambiguous_create_can_drop_the_connection_after_a_delay(make_emulator) -> None:
    faults = FaultConfig(ambiguous_create_first_n=1, ambiguous_create_mode="drop", ambiguous_create_delay_s=0.3)
    emu = make_emulator(faults=faults)
    client = _client(emu)
    file_id = upload_batch_file(client, [gen_line("a")])
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        _create(emu.base_url, file_id, "s1")
    assert time.monotonic() - started >= 0.3
    assert [b["metadata"] for b in _batches_of(emu)] == [{"shard": "s1"}]
    client.close()


def test_create_refused_before_the_fault_is_not_counted(make_emulator) -> None:
    """Only creates that made a batch are ambiguous: a 400 is answered as usual and does not use up the N."""
    emu = make_emulator(faults=FaultConfig(ambiguous_create_first_n=1))
    client = _client(emu)
    bad = httpx.post(f"{emu.base_url}/batches", json={"input_file_id": "file-x", "endpoint": "/nope"}, headers=AUTH)
    assert bad.status_code == 400 and _batches_of(emu) == []
    assert _create(emu.base_url, upload_batch_file(client, [gen_line("a")]), "s").status_code == 500
    client.close()


# ------------------------------------------------------------------ list lag
def test_a_new_batch_is_missing_from_the_list_until_the_lag_passed(make_emulator) -> None:
    emu = make_emulator(faults=FaultConfig(list_lag_s=1.5))
    client = _client(emu)
    file_id = upload_batch_file(client, [gen_line("a")])
    created = _create(emu.base_url, file_id, "s1").json()
    created_at = time.monotonic()
    assert _listed_ids(emu.base_url) == []  # the list lags ...
    assert (
        httpx.get(f"{emu.base_url}/batches/{created['id']}", headers=AUTH).json()["id"] == created["id"]
    )  # by id: now
    while created["id"] not in _listed_ids(emu.base_url):
        assert time.monotonic() - created_at < 10
        time.sleep(0.05)
    assert time.monotonic() - created_at >= 1.4  # listed once the lag passed, not before
    client.close()


def test_list_lag_fills_pages_from_older_batches(make_emulator) -> None:
    """Hidden (young) batches are left out of a page and the page is filled from older ones; ``has_more`` and
    the cursor stay right."""
    emu = make_emulator(faults=FaultConfig(list_lag_s=1.0))
    client = _client(emu)
    file_id = upload_batch_file(client, [gen_line("a")])
    old = [_create(emu.base_url, file_id, f"old{i}").json()["id"] for i in range(3)]
    time.sleep(1.1)
    young = [_create(emu.base_url, file_id, f"new{i}").json()["id"] for i in range(2)]
    page = httpx.get(f"{emu.base_url}/batches", params={"limit": 2}, headers=AUTH).json()
    assert [b["id"] for b in page["data"]] == [old[2], old[1]] and page["has_more"] is True
    rest = httpx.get(f"{emu.base_url}/batches", params={"limit": 2, "after": page["last_id"]}, headers=AUTH).json()
    assert [b["id"] for b in rest["data"]] == [old[0]] and rest["has_more"] is False
    time.sleep(1.1)
    assert _listed_ids(emu.base_url) == [*reversed(young), *reversed(old)]
    client.close()


def test_ambiguous_create_with_list_lag_via_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    seen: dict[str, EmulatorConfig] = {}
    monkeypatch.setattr(emulator_cli, "run_server", lambda config, **_: seen.update(config=config))
    flags = [
        "serve", "--state-dir", str(tmp_path),
        "--ambiguous-create-first-n", "2", "--ambiguous-create-share", "0.1", "--ambiguous-create-mode", "drop",
        "--ambiguous-create-delay-s", "1.5", "--list-lag-s", "2",
        "--bad-download-first-n", "3", "--bad-download-share", "0.2",
        "--bad-download-kind", "html", "--bad-download-kind", "garbled_line",
    ]  # fmt: skip
    result = CliRunner().invoke(emulator_cli.emulator_group, flags)
    assert result.exit_code == 0, result.output
    faults = seen["config"].faults
    assert (faults.ambiguous_create_first_n, faults.ambiguous_create_share) == (2, 0.1)
    assert (faults.ambiguous_create_mode, faults.ambiguous_create_delay_s, faults.list_lag_s) == ("drop", 1.5, 2.0)
    assert (faults.bad_download_first_n, faults.bad_download_share) == (3, 0.2)
    assert faults.bad_download_kinds == ("html", "garbled_line")
    default = CliRunner().invoke(emulator_cli.emulator_group, ["serve", "--state-dir", str(tmp_path)])
    assert default.exit_code == 0 and seen["config"].faults == FaultConfig()
    wrong = CliRunner().invoke(
        emulator_cli.emulator_group, ["serve", "--state-dir", str(tmp_path), "--list-lag-s", "-1"]
    )
    assert wrong.exit_code == 2 and "list_lag_s" in wrong.output


# ------------------------------------------------------------------ unreadable downloads
def _result_file(client: openai.OpenAI, n: int = 6) -> str:
    """The output file id of a completed batch of ``n`` lines."""
    file_id = upload_batch_file(client, [gen_line(f"l{i}") for i in range(n)])
    batch = client.batches.create(input_file_id=file_id, **CREATE)  # type: ignore[arg-type]
    done = wait_for(client, batch.id)
    assert done.status == "completed" and done.output_file_id
    return done.output_file_id


def _true_bytes(emu: Any, file_id: str) -> bytes:
    return emu.service.store.file_path(file_id).read_bytes()


def _raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 GET over a plain socket (``Connection: close``): every byte the server sent, headers included,
    until it closed the connection."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Authorization: Bearer k", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_each_kind_of_unreadable_download_in_turn(make_emulator) -> None:
    emu = make_emulator(faults=FaultConfig(bad_download_first_n=len(BAD_DOWNLOAD_KINDS)))
    client = _client(emu)
    output_id = _result_file(client)
    true = _true_bytes(emu, output_id)
    size = client.files.retrieve(output_id).bytes
    assert size == len(true) and true.count(b"\n") == 6
    url = f"{emu.base_url}/files/{output_id}/content"
    half = len(true) // 2 - (1 if true[len(true) // 2 - 1 : len(true) // 2] == b"\n" else 0)

    html = httpx.get(url, headers=AUTH)  # 1: a CDN's HTML page, 200
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.content == BAD_DOWNLOAD_HTML

    as_json = httpx.get(url, headers=AUTH)  # 2: an error body as JSON, 200
    assert as_json.status_code == 200 and as_json.json() == server_error_body(500)

    short = httpx.get(url, headers=AUTH)  # 3: a complete response, shorter than the file, cut mid-line
    assert short.status_code == 200 and short.headers["content-length"] == str(half)
    assert short.content == true[:half] and not short.content.endswith(b"\n") and half < size

    chunked = httpx.get(url, headers=AUTH)  # 4: the same without Content-Length (chunked, properly ended)
    assert chunked.status_code == 200 and "content-length" not in chunked.headers
    assert chunked.headers["transfer-encoding"] == "chunked" and chunked.content == true[:half]

    with httpx.stream("GET", url, headers=AUTH) as cut:  # 5: no Content-Length, then the connection closes
        assert cut.status_code == 200 and "content-length" not in cut.headers
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            for piece in cut.iter_raw():
                received.extend(piece)
        assert bytes(received) == true[:half]

    garbled = httpx.get(url, headers=AUTH)  # 6: the whole length, one line broken
    assert garbled.status_code == 200 and garbled.headers["content-length"] == str(size)
    lines, true_lines = garbled.content.split(b"\n"), true.split(b"\n")
    broken = [i for i, (a, b) in enumerate(zip(lines, true_lines, strict=True)) if a != b]
    assert len(broken) == 1 and lines[broken[0]] == b"~" + true_lines[broken[0]][1:]
    assert broken[0] == true[: len(true) // 2].count(b"\n") + 1  # the line after the middle byte's

    assert httpx.get(url, headers=AUTH).content == true  # the 7th download is the file
    client.close()


def test_cut_without_length_on_the_wire(make_emulator) -> None:
    """``cut_no_length``: chunked framing, the body's first half, and no terminating zero-length chunk."""
    emu = make_emulator(faults=FaultConfig(bad_download_first_n=1, bad_download_kinds=("cut_no_length",)))
    client = _client(emu)
    output_id = _result_file(client, 2)
    raw = _raw_get(httpx.URL(emu.base_url).port or 0, f"/v1/files/{output_id}/content")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length" not in head.lower()
    assert b"transfer-encoding: chunked" in head.lower() and not body.endswith(b"0\r\n\r\n")
    client.close()


def test_a_range_request_gets_the_fault_on_the_part_asked(make_emulator) -> None:
    emu = make_emulator(faults=FaultConfig(bad_download_first_n=2, bad_download_kinds=("short", "garbled_line")))
    client = _client(emu)
    output_id = _result_file(client)
    true = _true_bytes(emu, output_id)
    start = true.index(b"\n") + 1  # resume from the second line
    url = f"{emu.base_url}/files/{output_id}/content"
    short = httpx.get(url, headers={**AUTH, "Range": f"bytes={start}-"})
    rest = true[start:]
    cut = len(rest) // 2 - (1 if rest[len(rest) // 2 - 1 : len(rest) // 2] == b"\n" else 0)
    assert short.status_code == 206 and short.content == rest[:cut]
    assert short.headers["content-range"] == f"bytes {start}-{start + cut - 1}/{len(true)}"
    garbled = httpx.get(url, headers={**AUTH, "Range": f"bytes={start}-"})
    assert garbled.status_code == 206 and len(garbled.content) == len(rest) and garbled.content != rest
    assert garbled.content.count(b"~") == rest.count(b"~") + 1
    client.close()


def test_only_batch_result_files_are_affected_and_counted(make_emulator) -> None:
    emu = make_emulator(faults=FaultConfig(bad_download_first_n=1, bad_download_kinds=("html",)))
    client = _client(emu)
    input_bytes = jsonl([gen_line("a")])
    input_id = client.files.create(file=("in.jsonl", input_bytes), purpose="batch").id
    for _ in range(3):  # an input file (purpose batch) is always served as it is, and does not use up the N
        assert httpx.get(f"{emu.base_url}/files/{input_id}/content", headers=AUTH).content == input_bytes
    output_id = _result_file(client, 1)
    assert httpx.get(f"{emu.base_url}/files/{output_id}/content", headers=AUTH).content == BAD_DOWNLOAD_HTML
    assert httpx.get(f"{emu.base_url}/files/{output_id}/content", headers=AUTH).content == _true_bytes(emu, output_id)
    client.close()


def test_error_files_are_result_files_too(make_emulator) -> None:
    emu = make_emulator(faults=FaultConfig(bad_download_first_n=1, bad_download_kinds=("json_error",)))
    client = _client(emu)
    lines = [gen_line("ok"), gen_line("bad", size="7x7")]
    batch = client.batches.create(input_file_id=upload_batch_file(client, lines), **CREATE)  # type: ignore[arg-type]
    done = wait_for(client, batch.id)
    assert done.error_file_id and done.output_file_id
    first = httpx.get(f"{emu.base_url}/files/{done.error_file_id}/content", headers=AUTH)
    assert first.status_code == 200 and first.json() == server_error_body(500)
    true_error = _true_bytes(emu, done.error_file_id)
    assert httpx.get(f"{emu.base_url}/files/{done.error_file_id}/content", headers=AUTH).content == true_error
    client.close()
