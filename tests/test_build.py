"""The shard builder: limits by count, exact bytes and tokens; one model and endpoint per shard; determinism;
nothing under a final name before close."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpipe.domain import spec
from batchpipe.domain.items import Item, make_custom_id
from batchpipe.errors import InputError
from batchpipe.stages import shard as build
from batchpipe.stages.shard import ShardBuilder, ShardInfo, request_line

GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"


def _item(i: int, model: str = "gpt-image-2", *, endpoint: str = GEN, prompt: str | None = None) -> Item:
    body: dict[str, object] = {"model": model, "prompt": prompt if prompt is not None else f"product {i:04d}"}
    if endpoint == EDIT:
        body["images"] = [{"file_id": f"file-{i}"}]
    return Item(f"k{i}", endpoint, body, source=f"/data/m.jsonl:{i + 1}")  # type: ignore[arg-type]


def _line(custom_id: str, item: Item) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": item.endpoint, "body": item.body}) + b"\n"


async def _build(out: Path, items: list[Item], **limits: int) -> list[ShardInfo]:
    builder = ShardBuilder(out, prefix="job", **limits)
    for item in items:
        await builder.add(make_custom_id("job", item.key, 1), item)
    return await builder.close()


def _check_files(shards: list[ShardInfo]) -> None:
    for shard in shards:
        data = shard.path.read_bytes()
        assert len(data) == shard.bytes
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        lines = data.splitlines()
        assert len(lines) == shard.requests
        bodies = [orjson.loads(line)["body"] for line in lines]
        assert {b["model"] for b in bodies} == {shard.model}
        assert {orjson.loads(line)["url"] for line in lines} == {shard.endpoint}
        assert shard.input_tokens == sum(spec.estimate_input_tokens(b) for b in bodies)


async def test_lines_are_the_batch_input_format(tmp_path: Path) -> None:
    item = _item(1)
    (shard,) = await _build(tmp_path, [item])
    assert shard.path == tmp_path / "job-00000-gen-gpt-image-2.jsonl"
    assert shard.path.read_bytes() == _line(make_custom_id("job", "k1", 1), item)
    assert orjson.loads(shard.path.read_bytes()) == {
        "custom_id": make_custom_id("job", "k1", 1),
        "method": "POST",
        "url": GEN,
        "body": {"model": "gpt-image-2", "prompt": "product 0001"},
    }


async def test_split_by_request_count(tmp_path: Path) -> None:
    shards = await _build(tmp_path, [_item(i) for i in range(5)], max_requests=2)
    assert [(s.index, s.requests) for s in shards] == [(0, 2), (1, 2), (2, 1)]
    _check_files(shards)


async def test_exact_byte_boundary(tmp_path: Path) -> None:
    items = [_item(i) for i in range(4)]
    sizes = [len(_line(make_custom_id("job", it.key, 1), it)) for it in items]
    assert len(set(sizes)) == 1
    exact = 2 * sizes[0]
    shards = await _build(tmp_path / "exact", items, max_bytes=exact)
    assert [(s.requests, s.bytes) for s in shards] == [(2, exact), (2, exact)]
    shards = await _build(tmp_path / "short", items, max_bytes=exact - 1)
    assert [(s.requests, s.bytes) for s in shards] == [(1, sizes[0])] * 4
    _check_files(shards)


async def test_split_by_input_tokens(tmp_path: Path) -> None:
    items = [_item(i, prompt="x" * 40) for i in range(5)]  # 10 tokens each
    shards = await _build(tmp_path, items, max_input_tokens=25)
    assert [(s.requests, s.input_tokens) for s in shards] == [(2, 20), (2, 20), (1, 10)]


async def test_one_model_and_endpoint_per_shard(tmp_path: Path) -> None:
    items = [
        _item(0, "gpt-image-2"),
        _item(1, "gpt-image-2.5-flare"),
        _item(2, "gpt-image-2", endpoint=EDIT),
        _item(3, "gpt-image-2"),
        _item(4, "gpt-image-2.5-flare"),
        _item(5, "gpt-image-2", endpoint=EDIT),
    ]
    shards = await _build(tmp_path, items, max_requests=10)
    assert [(s.name, s.endpoint, s.model, s.requests) for s in shards] == [
        ("job-00000-gen-gpt-image-2.jsonl", GEN, "gpt-image-2", 2),
        ("job-00001-gen-gpt-image-2.5-flare.jsonl", GEN, "gpt-image-2.5-flare", 2),
        ("job-00002-edit-gpt-image-2.jsonl", EDIT, "gpt-image-2", 2),
    ]
    _check_files(shards)
    assert shards[2].input_tokens > shards[0].input_tokens  # reference images count


async def test_builds_are_deterministic_across_many_write_chunks(tmp_path: Path) -> None:
    items = [
        _item(i, ["gpt-image-2.5-sunburst", "gpt-image-2.5-flare"][i % 2], prompt=f"{i} " + "long " * 60)
        for i in range(9000)
    ]
    first = await _build(tmp_path / "a", items, max_requests=4000)
    second = await _build(tmp_path / "b", items, max_requests=4000)
    assert [s.name for s in first] == [s.name for s in second]
    assert [s.sha256 for s in first] == [s.sha256 for s in second]
    assert sum(s.bytes for s in first) > 3 * build.WRITE_CHUNK_BYTES
    for a, b in zip(first, second, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
    _check_files(first)
    expected = b"".join(
        _line(make_custom_id("job", it.key, 1), it) for it in items if it.model == "gpt-image-2.5-sunburst"
    )
    assert b"".join(s.path.read_bytes() for s in first if s.model == "gpt-image-2.5-sunburst") == expected


async def test_no_final_file_before_close_and_abort_cleans_up(tmp_path: Path) -> None:
    builder = ShardBuilder(tmp_path, prefix="job", max_requests=3)
    for i in range(4):
        name = await builder.add(f"c{i}", _item(i))
        assert name == ("job-00000-gen-gpt-image-2.jsonl" if i < 3 else "job-00001-gen-gpt-image-2.jsonl")
    assert builder.open_requests("job-00001-gen-gpt-image-2.jsonl") == 1
    # the first shard closed when the 4th line came; the second is still being written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".job-00001-gen-gpt-image-2.jsonl.part",
        "job-00000-gen-gpt-image-2.jsonl",
    ]
    await builder.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-00000-gen-gpt-image-2.jsonl"]
    with pytest.raises(RuntimeError):
        await builder.add("c9", _item(9))


async def test_context_manager_closes_or_aborts(tmp_path: Path) -> None:
    async with ShardBuilder(tmp_path / "ok", prefix="job") as builder:
        await builder.add("c0", _item(0))
    assert [p.name for p in (tmp_path / "ok").iterdir()] == ["job-00000-gen-gpt-image-2.jsonl"]
    with pytest.raises(ValueError, match="boom"):
        async with ShardBuilder(tmp_path / "bad", prefix="job") as builder:
            await builder.add("c0", _item(0))
            raise ValueError("boom")
    assert list((tmp_path / "bad").iterdir()) == []


async def test_oversized_line_and_duplicate_custom_id_name_the_item(tmp_path: Path) -> None:
    builder = ShardBuilder(tmp_path, prefix="job", max_bytes=200)
    with pytest.raises(InputError) as info:
        await builder.add("c1", _item(41, prompt="p" * 300))
    assert (info.value.file, info.value.line, info.value.field) == ("/data/m.jsonl", 42, "body")
    assert "'k41'" in str(info.value)
    await builder.add("same", _item(1))
    assert await builder.close() == await builder.close()
    duplicates = ShardBuilder(tmp_path / "d", prefix="job")
    await duplicates.add("same", _item(1))
    with pytest.raises(InputError, match="already in shard"):
        await duplicates.add("same", _item(2))
    await duplicates.abort()
    tokens = ShardBuilder(tmp_path / "t", prefix="job", max_input_tokens=5)
    with pytest.raises(InputError, match="input tokens"):
        await tokens.add("c", _item(3, prompt="x" * 100))
    assert await tokens.close() == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prefix"):
        ShardBuilder(tmp_path, prefix="a/b")
    with pytest.raises(ValueError, match="limits"):
        ShardBuilder(tmp_path, prefix="a", max_bytes=0)


@settings(max_examples=200, deadline=None)
@given(
    custom_id=st.text(max_size=40),
    endpoint=st.sampled_from(["/v1/images/generations", "/v1/images/edits"]),
    body=st.dictionaries(
        st.text(max_size=12),
        st.one_of(
            st.text(max_size=60),
            st.integers(-(2**63), 2**63 - 1),
            st.booleans(),
            st.none(),
            st.lists(st.text(max_size=8)),
        ),
        max_size=6,
    ),
)
def test_a_request_line_is_the_json_of_the_line_object(custom_id: str, endpoint: str, body: dict[str, object]) -> None:
    """The body is serialized once (validation) and the line is built around it: byte for byte what serializing
    the whole line object gives, for any custom_id and body text (quotes, backslashes, control characters)."""
    expected = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
    assert request_line(custom_id, endpoint, orjson.dumps(body)) == expected
    item = Item(key="k", endpoint=endpoint, body=body)  # type: ignore[arg-type]
    assert item.body_bytes() == orjson.dumps(body)
