"""The collector: join on custom_id in any order, exact bytes, error shapes, cuts and resume."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from PIL import Image

from batchpipe.adapters.local_store import LocalImageStore
from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.items import ItemStatus
from batchpipe.errors import ApiConnectionError
from batchpipe.provenance.sign import sign_image
from batchpipe.provenance.trust import TrustConfig
from batchpipe.provenance.verify import C2paVerifier
from batchpipe.stages.collect import Collector


def _png(color: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return sign_image(buf.getvalue(), "image/png", model="gpt-image-2")


class _Stream:
    def __init__(self, data: bytes, cut_at: int | None) -> None:
        self._data = data
        self._cut_at = cut_at
        self.resumed = True

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        step = 7  # odd chunking: lines straddle chunks
        for start in range(0, len(self._data), step):
            if self._cut_at is not None and start >= self._cut_at:
                raise ApiConnectionError("connection reset", method="GET", url="/files/x/content")
            yield self._data[start : start + step]


class FakeClient:
    """Serves one file from memory; cuts the first ``cuts`` downloads after ``cut_at`` bytes."""

    def __init__(self, data: bytes, *, cuts: int = 0, cut_at: int = 0) -> None:
        self.data = data
        self.cuts = cuts
        self.cut_at = cut_at
        self.starts: list[int] = []

    @contextlib.asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[_Stream]:
        self.starts.append(start_byte)
        cut = None
        if self.cuts:
            self.cuts -= 1
            cut = self.cut_at
        yield _Stream(self.data[start_byte:], cut)


def _ok(custom_id: str, png: bytes) -> dict[str, object]:
    body = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(png).decode()}],
        "output_format": "png",
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
            "output_tokens": 272,
            "total_tokens": 282,
        },
    }
    return {
        "id": "r",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "x", "body": body},
        "error": None,
    }


def _setup(tmp_path: Path, n: int) -> tuple[SqliteLedger, list[str]]:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ids = [f"bp-{i:03d}-a1" for i in range(n)]
    ledger.insert_items(
        {
            "custom_id": cid,
            "job": "j",
            "item_key": f"sku/{i}",
            "attempt": 1,
            "run_id": "r",
            "endpoint": "/v1/images/generations",
            "model": "gpt-image-2",
            "request_hash": "h",
            "body_json": "{}",
            "metadata_json": "{}",
            "source": "m:1",
            "status": "pending",
        }
        for i, cid in enumerate(ids)
    )
    ledger.record_batch(
        {"id": "batch_1", "status": "completed", "input_file_id": "file-in"}, shard="s", run_id="r", model="m"
    )
    ledger.transition_items(ids, ItemStatus.SUBMITTED, fields={"batch_id": "batch_1"})
    return ledger, ids


def _file(lines: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


async def test_lines_in_any_order_become_exact_files_and_states(tmp_path: Path) -> None:
    ledger, ids = _setup(tmp_path, 6)
    pngs = {cid: _png((i * 40, 10, 200)) for i, cid in enumerate(ids[:3])}
    lines = [_ok(ids[2], pngs[ids[2]]), _ok(ids[0], pngs[ids[0]]), _ok(ids[1], pngs[ids[1]])]
    lines.append(
        {"id": "r", "custom_id": ids[3], "response": None, "error": {"code": "batch_expired", "message": "expired"}}
    )
    lines.append(
        {
            "id": "r",
            "custom_id": ids[4],
            "error": None,
            "response": {
                "status_code": 400,
                "request_id": "y",
                "body": {
                    "error": {
                        "message": "blocked",
                        "type": "image_generation_user_error",
                        "param": None,
                        "code": "moderation_blocked",
                    }
                },
            },
        }
    )
    lines.append({"id": "r", "custom_id": "bp-unknown-a1", "response": None, "error": {"code": "x", "message": "y"}})
    store = LocalImageStore(tmp_path / "out")
    collector = Collector(FakeClient(_file(lines)), ledger, store, C2paVerifier(TrustConfig.from_setting("emulator")))
    try:
        targets = await collector.targets_for_batch("batch_1")
        stats = await collector.collect_file("batch_1", "file-out", "output", targets)
    finally:
        collector.close()
    assert stats.lines == 6 and stats.unknown == 1 and stats.images == 3
    for cid, png in pngs.items():
        row = ledger.item(cid)
        assert row is not None and row.status == "succeeded"
        assert Path(str(row.output_path)).read_bytes() == png  # exact bytes: the C2PA manifest survives
        assert row.sha256 == hashlib.sha256(png).hexdigest()
        assert row.c2pa_state == "trusted" and (row.width, row.height) == (64, 64)
        assert row.cost_usd is not None and row.cost_usd > 0
    expired, blocked, untouched = (ledger.item(c) for c in ids[3:6])
    assert expired is not None and expired.status == "expired" and expired.retryable == 1
    assert blocked is not None and blocked.status == "failed" and blocked.error_code == "moderation_blocked"
    assert blocked.retryable == 0
    assert untouched is not None and untouched.status == "submitted"  # reconciliation, not the collector, decides


async def test_a_cut_download_resumes_after_the_last_complete_line(tmp_path: Path) -> None:
    ledger, ids = _setup(tmp_path, 4)
    lines = [_ok(cid, _png((i * 50, 100, 30))) for i, cid in enumerate(ids)]
    data = _file(lines)
    client = FakeClient(data, cuts=2, cut_at=len(data) // 3)
    collector = Collector(client, ledger, LocalImageStore(tmp_path / "out"), None)
    try:
        targets = await collector.targets_for_batch("batch_1")
        stats = await collector.collect_file("batch_1", "file-out", "output", targets)
    finally:
        collector.close()
    assert stats.reconnects == 2
    assert client.starts[0] == 0 and 0 < client.starts[1] <= len(data)  # the second request starts at a line boundary
    assert data[client.starts[1] - 1 : client.starts[1]] == b"\n"
    assert ledger.count_items() == {"succeeded": 4}
    assert len(list((tmp_path / "out").rglob("*.png"))) == 4  # one file per item, no duplicates


async def test_a_restarted_collector_starts_from_the_committed_offset(tmp_path: Path) -> None:
    ledger, ids = _setup(tmp_path, 3)
    data = _file([_ok(cid, _png((i * 60, 60, 60))) for i, cid in enumerate(ids)])
    first_two = data.index(b"\n", data.index(b"\n") + 1) + 1
    ledger.set_batch_progress("batch_1", output_offset=first_two)
    client = FakeClient(data)
    collector = Collector(client, ledger, LocalImageStore(tmp_path / "out"), None)
    try:
        targets = await collector.targets_for_batch("batch_1")
        stats = await collector.collect_file("batch_1", "file-out", "output", targets)
    finally:
        collector.close()
    assert client.starts == [first_two] and stats.lines == 1
    assert ledger.count_items() == {"submitted": 2, "succeeded": 1}
    assert ledger.batches()[0].output_offset == len(data) and ledger.batches()[0].output_done == 1


@pytest.mark.parametrize("garbage", [b"not json\n", b'{"no_custom_id": 1}\n'])
async def test_unusable_lines_do_not_stop_the_file(tmp_path: Path, garbage: bytes) -> None:
    ledger, ids = _setup(tmp_path, 1)
    data = garbage + _file([_ok(ids[0], _png((1, 2, 3)))])
    collector = Collector(FakeClient(data), ledger, LocalImageStore(tmp_path / "out"), None)
    try:
        await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert ledger.count_items() == {"succeeded": 1}


def test_base64_decoding_is_strict_first_then_lenient() -> None:
    import binascii

    from batchpipe.stages.collect import _decode_b64

    data = bytes(range(256)) * 50
    text = base64.b64encode(data).decode()
    assert _decode_b64(text) == data
    assert _decode_b64(text[:76] + "\n" + text[76:]) == data  # line-wrapped base64 still decodes
    with pytest.raises(binascii.Error):
        _decode_b64("abc")  # not a whole number of base64 quanta


def test_payloads_are_sliced_out_without_parsing_them() -> None:
    from batchpipe.stages.collect import split_payloads

    line = orjson.dumps(
        {"custom_id": "c", "response": {"body": {"data": [{"b64_json": "QUJD"}, {"b64_json": "REVG"}],
                                                  "revised_prompt": 'say \\"b64_json\\":\\"x'}}}
    )  # fmt: skip
    split = split_payloads(line)
    assert split is not None
    rest, payloads = split
    assert [bytes(p) for p in payloads] == [b"QUJD", b"REVG"]
    assert orjson.loads(rest)["response"]["body"]["data"] == [{"b64_json": ""}, {"b64_json": ""}]
    assert split_payloads(b'{"b64_json":"QU\\/J"}') is None  # an escaped payload: parse the whole line
    assert split_payloads(b'{"custom_id": "c", "error": {"code": "x"}}') is None


async def test_escaped_payloads_still_decode(tmp_path: Path) -> None:
    ledger, ids = _setup(tmp_path, 1)
    png = _png((9, 9, 9))
    line = orjson.dumps(_ok(ids[0], png)).replace(b"/", b"\\/")  # a server escaping "/" as JSON allows
    collector = Collector(FakeClient(line + b"\n"), ledger, LocalImageStore(tmp_path / "out"), None)
    try:
        await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    row = ledger.item(ids[0])
    assert row is not None and row.status == "succeeded"
    assert Path(str(row.output_path)).read_bytes() == png
