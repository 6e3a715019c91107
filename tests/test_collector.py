"""The collector: join on custom_id in any order, exact bytes, error shapes, cuts and resume."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from PIL import Image

from batchpipe.adapters.local_store import LocalImageStore
from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.api import FileObject
from batchpipe.domain.items import ItemStatus
from batchpipe.errors import ApiConnectionError, DownloadError
from batchpipe.provenance.sign import sign_image
from batchpipe.provenance.trust import TrustConfig
from batchpipe.provenance.verify import C2paVerifier
from batchpipe.stages.collect import Collector, ItemTarget


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

    async def retrieve_file(self, file_id: str) -> FileObject:
        return FileObject.parse({"id": file_id, "object": "file", "bytes": len(self.data)})

    @contextlib.asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[_Stream]:
        self.starts.append(start_byte)
        cut = None
        if self.cuts:
            self.cuts -= 1
            cut = self.cut_at
        yield _Stream(self.data[start_byte:], cut)


def _record(waits: list[float]) -> Callable[[float], Awaitable[None]]:
    """A sleep that only records how long it was asked to wait (seconds)."""

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep


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
async def test_unusable_lines_stop_the_file_as_a_failed_download(tmp_path: Path, garbage: bytes) -> None:
    """Issue 11, behaviour 2 (this test said the opposite before it): a line that is not JSON or names no
    custom_id means the download is not the file; it is downloaded again a bounded number of times, then
    DownloadError, with nothing judged on it: the item stays submitted and the file is not marked done."""
    ledger, ids = _setup(tmp_path, 1)
    data = garbage + _file([_ok(ids[0], _png((1, 2, 3)))])
    client = FakeClient(data)
    waits: list[float] = []
    collector = Collector(client, ledger, LocalImageStore(tmp_path / "out"), None, sleep=_record(waits))
    try:
        with pytest.raises(DownloadError) as caught:
            await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert ledger.count_items() == {"submitted": 1}
    batch = ledger.batches()[0]
    assert batch.output_offset == 0 and batch.output_done == 0
    assert client.starts == [0] * 5 and waits == [0.5, 1.0, 2.0, 4.0]  # bounded, with backoff
    message = str(caught.value)
    assert "batch_1" in message and "output file f" in message and "custom_id" in message and "resumes" in message


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


# ------------------------------------------------------- issue 11, behaviour 2: a download is verified first


def _jpeg(color: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


_HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>\n"
_JSON_ERROR = b'{"error": {"message": "upstream request timeout", "type": "server_error", "code": null}}'


def _bad_body(kind: str, data: bytes) -> tuple[bytes, bool]:
    """What a broken proxy serves instead of ``data`` (the whole file, from byte 0): (body, cut afterwards)."""
    lines = data.splitlines(keepends=True)
    if kind == "html":
        return _HTML, False
    if kind == "json_error":
        return _JSON_ERROR, False
    if kind == "short":  # whole lines only, fewer than the file's bytes
        return b"".join(lines[: len(lines) // 2]), False
    if kind == "truncated":  # ends cleanly in the middle of a line
        return lines[0] + lines[1][: len(lines[1]) // 2], False
    if kind == "cut":
        return lines[0] + lines[1][: len(lines[1]) // 2], True
    if kind == "bad_line":  # one line garbled, same length
        lines[1] = b"<" + b"#" * (len(lines[1]) - 2) + b"\n"
        return b"".join(lines), False
    if kind == "longer":
        return data + data[:10], False
    raise AssertionError(kind)


class BrokenProxyClient(FakeClient):
    """Serves ``bad`` bodies (whole, ignoring Range, like a proxy) for the first ``bad_downloads`` downloads
    (-1: always), then the true file honouring ``start_byte``."""

    def __init__(self, data: bytes, kind: str, bad_downloads: int) -> None:
        super().__init__(data)
        self.kind = kind
        self.bad_downloads = bad_downloads

    @contextlib.asynccontextmanager
    async def stream_file_content(self, file_id: str, *, start_byte: int = 0) -> AsyncIterator[_Stream]:
        self.starts.append(start_byte)
        if self.bad_downloads != 0:
            self.bad_downloads -= 1 if self.bad_downloads > 0 else 0
            body, cut = _bad_body(self.kind, self.data)
            yield _Stream(body[start_byte:], len(body[start_byte:]) if cut else None)
        else:
            yield _Stream(self.data[start_byte:], None)


BAD_KINDS = ["html", "json_error", "short", "truncated", "cut", "bad_line", "longer"]


@pytest.mark.parametrize("kind", BAD_KINDS)
async def test_an_unreadable_download_that_heals_is_collected_whole(tmp_path: Path, kind: str) -> None:
    ledger, ids = _setup(tmp_path, 4)
    pngs = [_png((i * 50, 100, 30)) for i in range(4)]
    data = _file([_ok(cid, png) for cid, png in zip(ids, pngs, strict=True)])
    client = BrokenProxyClient(data, kind, bad_downloads=2)
    waits: list[float] = []
    collector = Collector(client, ledger, LocalImageStore(tmp_path / "out"), None, sleep=_record(waits))
    try:
        stats = await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert ledger.count_items() == {"succeeded": 4}
    assert stats.duplicates == 0 and stats.unknown == 0
    # a bad line also ends the reader's pass, which may already have asked for the rest: 2 or 3 retries
    assert 2 <= stats.reconnects + stats.redownloads <= 3 and len(waits) == stats.reconnects + stats.redownloads
    batch = ledger.batches()[0]
    assert batch.output_offset == len(data) and batch.output_done == 1
    for cid, png in zip(ids, pngs, strict=True):
        row = ledger.item(cid)
        assert row is not None and row.sha256 == hashlib.sha256(png).hexdigest()


@pytest.mark.parametrize("kind", BAD_KINDS)
async def test_an_always_unreadable_download_stops_with_nothing_judged(tmp_path: Path, kind: str) -> None:
    """Every download broken: DownloadError after a bounded number of tries; every row is still submitted or
    succeeded from a verified whole line before the fault; the offset never passes a line not verified."""
    ledger, ids = _setup(tmp_path, 4)
    data = _file([_ok(cid, _png((i * 50, 100, 30))) for i, cid in enumerate(ids)])
    client = BrokenProxyClient(data, kind, bad_downloads=-1)
    waits: list[float] = []
    collector = Collector(client, ledger, LocalImageStore(tmp_path / "out"), None, sleep=_record(waits))
    try:
        with pytest.raises(DownloadError) as caught:
            await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert len(client.starts) <= 6 and sum(waits) < 16
    counts = ledger.count_items()
    assert set(counts) <= {"submitted", "succeeded"} and counts.get("submitted", 0) >= 2
    batch = ledger.batches()[0]
    assert batch.output_done == 0
    line_ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    assert batch.output_offset in [0, *line_ends] and batch.output_offset <= line_ends[1]
    assert caught.value.batch_id == "batch_1" and caught.value.file_id == "f" and caught.value.reason


async def test_nothing_after_a_bad_line_is_committed_even_if_its_workers_finished(tmp_path: Path) -> None:
    """Lines are applied in file order: the good lines after a garbled one are processed by worker threads but
    never committed; the offset stops exactly at the bad line."""
    ledger, ids = _setup(tmp_path, 6)
    lines = [orjson.dumps(_ok(cid, _png((i * 40, 0, 0)))) + b"\n" for i, cid in enumerate(ids)]
    lines[2] = b"<" + b"#" * (len(lines[2]) - 2) + b"\n"
    data = b"".join(lines)
    collector = Collector(FakeClient(data), ledger, LocalImageStore(tmp_path / "out"), None, sleep=_record([]))
    try:
        with pytest.raises(DownloadError):
            await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert [ledger.item(cid).status for cid in ids] == ["succeeded"] * 2 + ["submitted"] * 4  # type: ignore[union-attr]
    assert ledger.batches()[0].output_offset == len(lines[0]) + len(lines[1])


async def test_a_valid_line_with_an_unknown_custom_id_is_still_only_counted(tmp_path: Path) -> None:
    ledger, ids = _setup(tmp_path, 1)
    data = _file([_ok("bp-unknown-a1", _png((5, 5, 5))), _ok(ids[0], _png((6, 6, 6)))])
    collector = Collector(FakeClient(data), ledger, LocalImageStore(tmp_path / "out"), None)
    try:
        stats = await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert stats.unknown == 1 and ledger.count_items() == {"succeeded": 1}


# ----------------------------------------------------- issue 11, behaviour 5: a 200 line's image is an image


def _nonstrict(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    text = text if ("+" in text or "/" in text) else text[:40] + "_" + text[40:]
    return text.replace("+", "-").replace("/", "_")


def _target(cid: str = "c1", *, fmt: str = "png", attempt: int = 1) -> dict[str, ItemTarget]:
    return {cid: ItemTarget(cid, "sku/1", "gpt-image-2", output_format=fmt, attempt=attempt)}


def _line(b64: str, cid: str = "c1") -> bytes:
    record = _ok(cid, b"")
    record["response"]["body"]["data"] = [{"b64_json": b64}]  # type: ignore[index]
    return orjson.dumps(record)


def _plain_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (lambda: _nonstrict(_plain_png()), "invalid_base64"),
        (lambda: "", "empty_image"),
        (lambda: base64.b64encode(b"<html>upstream said no</html>" * 4).decode(), "invalid_image"),
        (lambda: base64.b64encode(_jpeg((1, 2, 3))).decode(), "wrong_image_format"),
        (lambda: base64.b64encode(_plain_png()[:-30]).decode(), "invalid_image"),  # truncated PNG
        (lambda: base64.b64encode(_plain_png()[:20]).decode(), "invalid_image"),  # a PNG signature only
    ],
    ids=["nonstrict_b64", "empty", "not_image", "wrong_format", "truncated_png", "png_magic_only"],
)
@pytest.mark.parametrize("attempt", [1, 2])
def test_a_200_line_without_a_real_image_fails_retryable_once(
    tmp_path: Path, payload: Callable[[], str], code: str, attempt: int
) -> None:
    from batchpipe.fakes import MemoryImageStore
    from batchpipe.stages.collect import process_line

    store = MemoryImageStore()
    result = process_line(_line(payload()), _target(attempt=attempt), store, None)
    assert result is not None and result.status == "failed"
    assert result.fields["error_code"] == code and result.fields["error_message"]
    assert result.fields["retryable"] == (1 if attempt == 1 else 0)  # a service fault: retried once
    assert store.unsynced() == [] and not store.exists(store.location_for("sku/1", 0, "png"))  # nothing written


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif"])
def test_a_real_image_of_the_requested_format_succeeds(fmt: str) -> None:
    from batchpipe.fakes import MemoryImageStore
    from batchpipe.stages.collect import process_line

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, {"jpeg": "JPEG"}.get(fmt, fmt.upper()))
    raw = buf.getvalue()
    store = MemoryImageStore()
    result = process_line(_line(base64.b64encode(raw).decode()), _target(fmt=fmt), store, None)
    assert result is not None and result.status == "succeeded", result
    assert (result.fields["format"], result.fields["width"], result.fields["height"]) == (fmt, 40, 30)
    assert store.read(str(result.fields["output_uri"])) == raw


def test_check_image_reads_magic_bytes_and_headers() -> None:
    from batchpipe.stages.collect import ImageFault, check_image

    png = _plain_png()
    assert check_image(png, "png") == (32, 32)
    assert check_image(b'<?xml version="1.0"?>\n<svg width="10" height="20"></svg>', "svg") == (10, 20)
    broken = png[:16] + bytes([png[16] ^ 0xFF]) + png[17:]  # IHDR width changed: its CRC no longer holds
    for raw, fmt, code in [
        (png, "jpeg", "wrong_image_format"),
        (broken, "png", "invalid_image"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "webp", "invalid_image"),
        (b"GIF89a" + b"\x00" * 20, "gif", "invalid_image"),
        (b"", "png", "empty_image"),
    ]:
        with pytest.raises(ImageFault) as caught:
            check_image(raw, fmt)
        assert caught.value.code == code, (fmt, caught.value)


def test_base64_is_strict_on_the_fast_path_too() -> None:
    import binascii

    from batchpipe.stages.collect import _decode_b64

    png = _plain_png()
    with pytest.raises(binascii.Error):
        _decode_b64(_nonstrict(png))  # a lenient decoder would drop "-"/"_" and return shifted garbage
    with pytest.raises(binascii.Error):
        _decode_b64(memoryview(_nonstrict(png).encode()))  # the zero-copy slice path
    with pytest.raises(binascii.Error):
        _decode_b64(memoryview(base64.b64encode(png)[:76] + b"\n" + base64.b64encode(png)[76:]))
    assert _decode_b64(memoryview(base64.b64encode(png))) == png


async def test_image_faults_in_a_file_fail_only_their_items(tmp_path: Path) -> None:
    ledger, ids = _setup(tmp_path, 3)
    good = _png((1, 1, 1))
    lines = [_ok(ids[0], good), _ok(ids[1], good), _ok(ids[2], good)]
    lines[1]["response"]["body"]["data"] = [{"b64_json": _nonstrict(good)}]  # type: ignore[index]
    data = _file(lines)
    collector = Collector(FakeClient(data), ledger, LocalImageStore(tmp_path / "out"), None)
    try:
        await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    bad = ledger.item(ids[1])
    assert bad is not None and bad.status == "failed" and bad.error_code == "invalid_base64" and bad.retryable == 1
    assert ledger.count_items() == {"succeeded": 2, "failed": 1}
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


# --------------------------------------------------- issue 11, behaviour 5: two 200 lines for one custom_id


@pytest.mark.parametrize("workers", [1, 4])
async def test_the_first_of_two_200_lines_wins_on_disk_and_in_the_ledger(tmp_path: Path, workers: int) -> None:
    ledger, ids = _setup(tmp_path, 3)
    first, second = _png((200, 0, 0), size=256), _png((0, 200, 0), size=8)  # the second is quicker to process
    others = [_png((0, 0, i * 90)) for i in range(2)]
    lines = [_ok(ids[0], first), _ok(ids[0], second), _ok(ids[1], others[0]), _ok(ids[0], second)]
    lines.append(_ok(ids[2], others[1]))
    data = _file(lines)
    store = LocalImageStore(tmp_path / "out")
    collector = Collector(FakeClient(data), ledger, store, None, workers=workers)
    try:
        stats = await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    row = ledger.item(ids[0])
    assert row is not None and row.status == "succeeded" and row.sha256 == hashlib.sha256(first).hexdigest()
    assert store.read(str(row.output_uri)) == first
    assert stats.duplicates == 2 and ledger.count_items() == {"succeeded": 3}
    assert len(list((tmp_path / "out").rglob("*.png"))) == 3


async def test_a_resumed_download_never_writes_over_an_item_already_decided(tmp_path: Path) -> None:
    """The first line for a custom_id was committed before a restart; a later line for it, read after the
    restart, is a duplicate: the file stays the committed one."""
    ledger, ids = _setup(tmp_path, 2)
    first, second = _png((200, 0, 0)), _png((0, 200, 0))
    head = _file([_ok(ids[0], first)])
    data = head + _file([_ok(ids[0], second), _ok(ids[1], _png((1, 1, 1)))])
    store = LocalImageStore(tmp_path / "out")
    stored = store.put(store.location_for("sku/0", 0, "png"), first)
    ledger.transition_items(
        [ids[0]], ItemStatus.SUCCEEDED, fields={"output_uri": stored.location, "sha256": stored.sha256}
    )
    ledger.set_batch_progress("batch_1", output_offset=len(head))
    collector = Collector(FakeClient(data), ledger, store, None)
    try:
        stats = await collector.collect_file("batch_1", "f", "output", await collector.targets_for_batch("batch_1"))
    finally:
        collector.close()
    assert stats.duplicates == 1 and store.read(stored.location) == first
    assert ledger.count_items() == {"succeeded": 2}


def test_first_line_wins_whatever_order_the_threads_claim_in() -> None:
    from batchpipe.stages.collect import FirstLineWins

    winners = FirstLineWins(decided={"done"})
    assert winners.claim("c", 7)
    with winners.writing("c", 7) as mine:
        assert mine  # line 7 writes first ...
    assert winners.claim("c", 3)
    with winners.writing("c", 3) as mine:
        assert mine  # ... line 3, earlier in the file, writes over it
    with winners.writing("c", 7) as mine:
        assert not mine  # and line 7 may no longer write
    assert not winners.claim("c", 9) and not winners.claim("done", 0)
