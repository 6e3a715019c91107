"""The API objects parsed at the client boundary (batchpipe.domain.api): a field of the wrong type never crashes."""

from __future__ import annotations

import pytest

from batchpipe.domain.api import Batch, FileObject, Page, lenient_count, lenient_time
from batchpipe.domain.spec import MAX_PLAUSIBLE_TOKENS, request_cost_usd
from batchpipe.errors import ApiProtocolError


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (1_800_000_000, 1_800_000_000),
        (1_800_000_000.9, 1_800_000_000),
        ("1800000000", 1_800_000_000),
        ("2026-11-30T10:00:00Z", 1_796_032_800),
        ("2026-11-30T11:00:00+01:00", 1_796_032_800),
        ("yesterday", None),
        ([1], None),
        ({"t": 1}, None),
        (True, None),
        (-5, None),
        (float("nan"), None),
        (10**19, None),
        (None, None),
    ],
)
def test_times_are_read_leniently(raw: object, seconds: int | None) -> None:
    assert lenient_time(raw) == seconds


@pytest.mark.parametrize(
    ("raw", "count"),
    [(3, 3), ("7", 7), (2.0, 2), (2.5, None), (-1, None), ("x", None), ([1], None), (False, None), (10**19, None)],
)
def test_counts_are_read_leniently(raw: object, count: int | None) -> None:
    assert lenient_count(raw) == count


def test_a_batch_with_wrong_types_still_parses_truthfully() -> None:
    batch = Batch.parse(
        {
            "id": "batch_1",
            "status": "throttled",  # a status the service added later: kept, never terminal here
            "created_at": "2026-11-30T10:00:00Z",
            "completed_at": "soon",
            "request_counts": ["total", 3],
            "errors": "none",
            "metadata": {"batchpipe_run": "r1", "n": 5},
            "output_file_id": 42,
            "usage": "a lot",
            "brand_new_field": {"x": 1},
        },
        what="GET /batches/{batch_id}",
    )
    assert (batch.id, batch.status, batch.created_at, batch.completed_at) == (
        "batch_1",
        "throttled",
        1_796_032_800,
        None,
    )
    assert batch.request_counts is None and batch.errors is None and batch.output_file_id is None
    assert batch.metadata == {"batchpipe_run": "r1", "n": "5"}
    assert batch.model_extra == {"usage": "a lot", "brand_new_field": {"x": 1}}  # kept, as the SDK keeps them
    record = batch.as_record()
    assert record["created_at"] == 1_796_032_800 and record["request_counts"] is None


def test_request_counts_and_errors_keep_what_is_readable() -> None:
    batch = Batch.parse(
        {
            "id": "b",
            "status": "failed",
            "request_counts": {"total": "4", "completed": None, "failed": -2},
            "errors": {"data": [{"code": "invalid_json", "message": 7, "line": "3"}, "junk"]},
            "failed_at": 1_800_000_100,
        }
    )
    assert batch.request_counts is not None and batch.request_counts.model_dump() == {
        "total": 4,
        "completed": 0,
        "failed": 0,
    }
    assert batch.errors is not None and [(e.code, e.message, e.line) for e in batch.errors.data] == [
        ("invalid_json", "7", 3)
    ]
    assert batch.ended_at == 1_800_000_100


@pytest.mark.parametrize("raw", [None, [], "batch", {"status": "completed"}, {"id": 5}, {"id": ""}])
def test_an_object_without_an_id_is_a_protocol_error(raw: object) -> None:
    with pytest.raises(ApiProtocolError, match="POST /batches"):
        Batch.parse(raw, what="POST /batches")


def test_a_page_drops_entries_it_cannot_use_and_knows_its_cursor() -> None:
    page = Page.parse(
        {"data": [{"id": "f1", "bytes": "10", "created_at": "x"}, {"no": "id"}, "junk", {"id": "f2"}], "has_more": 1},
        FileObject,
    )
    assert [f.id for f in page.data] == ["f1", "f2"] and page.dropped == 2
    assert page.data[0].bytes == 10 and page.data[0].created_at is None
    assert page.has_more is False  # only a JSON true is true
    assert page.last_id == "f2"
    with pytest.raises(ApiProtocolError):
        Page.parse({"data": "nothing"}, FileObject, what="GET /files")


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 10**19, "output_tokens": 10**19},
        {"input_tokens": 10, "output_tokens": MAX_PLAUSIBLE_TOKENS + 1},
        {"input_tokens_details": {"text_tokens": "lots"}, "output_tokens": 10},
        {"input_tokens": -3, "output_tokens": 10},
        {"input_tokens": 10, "output_tokens": [1]},
    ],
)
def test_an_absurd_or_unreadable_usage_is_an_unknown_cost_never_a_huge_one(usage: dict[str, object]) -> None:
    assert request_cost_usd("gpt-image-2", usage) is None
    assert request_cost_usd("gpt-image-2", {"input_tokens": 10, "output_tokens": 1000}) == pytest.approx(0.015025)
