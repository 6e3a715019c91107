"""Manifest reading: CSV and JSONL rows, physical line numbers, row errors yielded, file errors raised."""

from __future__ import annotations

import csv
import io
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpipe.errors import ManifestError
from batchpipe.input import manifest
from batchpipe.input.manifest import ManifestRow, iter_lines, iter_manifest, read_columns


def _rows(path: Path, **kwargs: object) -> list[ManifestRow | ManifestError]:
    return list(iter_manifest(path, **kwargs))  # type: ignore[arg-type]


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_csv_rows_carry_physical_start_lines_across_multiline_fields(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", 'id,name\n1,"two\nline name"\n2,plain\n\n3,"a ""quoted"", comma"\n')
    rows = _rows(path)
    assert rows == [
        ManifestRow(2, {"id": "1", "name": "two\nline name"}),
        ManifestRow(4, {"id": "2", "name": "plain"}),
        ManifestRow(6, {"id": "3", "name": 'a "quoted", comma'}),
    ]


def test_csv_crlf_and_bom(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", b"\xef\xbb\xbfid,name\r\n1,x\r\n")
    assert read_columns(path) == ["id", "name"]
    assert _rows(path) == [ManifestRow(2, {"id": "1", "name": "x"})]


def test_csv_unterminated_quote_raises_at_the_row_where_it_opens(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", 'id,name\n1,ok\n2,"never closed\n3,more\n4,rows\n')
    rows = iter_manifest(path)
    assert next(rows) == ManifestRow(2, {"id": "1", "name": "ok"})
    with pytest.raises(ManifestError) as info:
        next(rows)
    assert info.value.file == str(path)
    assert info.value.line == 3
    assert "never closed" in str(info.value)


def test_csv_bad_quoting_is_a_row_error_and_reading_goes_on(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", 'id,name\n1,"x"y\n2,fine\n3,too,many\n')
    rows = _rows(path)
    assert isinstance(rows[0], ManifestError)
    assert rows[0].line == 2
    assert "malformed CSV" in rows[0].reason
    assert rows[1] == ManifestRow(3, {"id": "2", "name": "fine"})
    assert isinstance(rows[2], ManifestError)
    assert rows[2].line == 4
    assert "expected 2 fields" in rows[2].reason


def test_csv_non_utf8_row_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", b'id,name\n1,ok\n2,"caf\xe9\nlatte"\n3,ok\n')
    rows = _rows(path)
    assert rows[0] == ManifestRow(2, {"id": "1", "name": "ok"})
    bad = rows[1]
    assert isinstance(bad, ManifestError)
    assert bad.line == 3
    assert "UTF-8" in bad.reason
    assert "0xe9" in bad.reason
    assert rows[2] == ManifestRow(5, {"id": "3", "name": "ok"})


def test_csv_header_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        iter_manifest(_write(tmp_path, "dup.csv", "id,name,id\n1,2,3\n"))
    assert (info.value.line, info.value.field) == (1, "id")
    with pytest.raises(ManifestError, match="UTF-8"):
        iter_manifest(_write(tmp_path, "bad.csv", b"id,n\xffame\n1,2\n"))


@pytest.mark.parametrize(
    ("name", "data"), [("e.csv", b""), ("e.jsonl", b""), ("w.jsonl", b"\n  \n\n"), ("w.csv", b"\n\n")]
)
def test_empty_files_raise(tmp_path: Path, name: str, data: bytes) -> None:
    path = _write(tmp_path, name, data)
    with pytest.raises(ManifestError) as info:
        _rows(path)
    assert info.value.file == str(path)
    assert "empty" in info.value.reason


def test_missing_file_and_unknown_extension_raise(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot open"):
        _rows(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="format"):
        _rows(_write(tmp_path, "x.txt", "a\n"))
    assert _rows(_write(tmp_path, "x.txt", '{"a": 1}\n'), fmt="jsonl") == [ManifestRow(1, {"a": 1})]


def test_jsonl_row_errors_are_yielded_with_lines(tmp_path: Path) -> None:
    data = b'{"key": "a"}\n\n{"key": \n[1, 2]\n"text"\n{"key": "caf\xe9"}\n{"key": "b"}'
    rows = _rows(_write(tmp_path, "m.jsonl", data))
    assert rows[0] == ManifestRow(1, {"key": "a"})
    assert [(r.line, type(r).__name__) for r in rows] == [
        (1, "ManifestRow"),
        (3, "ManifestError"),
        (4, "ManifestError"),
        (5, "ManifestError"),
        (6, "ManifestError"),
        (7, "ManifestRow"),
    ]
    errors = [r for r in rows if isinstance(r, ManifestError)]
    assert "not valid JSON" in errors[0].reason
    assert "an array" in errors[1].reason
    assert "a string" in errors[2].reason
    assert "UTF-8" in errors[3].reason


def test_iter_lines_counts_and_caps_without_holding_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "l.jsonl", b"ab\n" + b"x" * 50 + b"\ncd\n" + b"y" * 11)
    lines = list(iter_lines(path, max_line_bytes=10))
    assert [(x.number, x.data, x.length) for x in lines] == [(1, b"ab", 2), (2, None, 50), (3, b"cd", 2), (4, None, 11)]


def test_a_50_mb_jsonl_line_is_reported_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("wb") as out:
        out.write(b'{"key": "first"}\n{"key": "huge", "prompt": "')
        block = b"z" * (1024 * 1024)
        for _ in range(50):
            out.write(block)
        out.write(b'"}\n{"key": "last"}\n')
    tracemalloc.start()
    try:
        rows = _rows(path, max_line_bytes=4 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows[0] == ManifestRow(1, {"key": "first"})
    assert isinstance(rows[1], ManifestError)
    assert rows[1].line == 2
    assert "over the 4,194,304-byte limit" in rows[1].reason
    assert rows[2] == ManifestRow(3, {"key": "last"})
    assert peak < 8 * 1024 * 1024  # chunks of 1 MiB, never the 50 MB line


def test_csv_line_over_the_cap_raises(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", "id,name\n1," + "n" * 5000 + "\n2,x\n")
    rows = iter_manifest(path, max_line_bytes=1024)
    with pytest.raises(ManifestError) as info:
        list(rows)
    assert info.value.line == 2


def test_read_columns_of_jsonl_is_the_first_objects_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.jsonl", orjson.dumps({"sku": 1, "Variant SKU": "x"}) + b"\n")
    assert read_columns(path) == ["sku", "Variant SKU"]


_CELL = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_CELL, _CELL), max_size=12), st.sampled_from([1, 2, 3, 7, 64, 1 << 20]), st.booleans())
def test_csv_rows_and_start_lines_at_any_chunk_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[tuple[str, str]], chunk: int, bom: bool
) -> None:
    monkeypatch.setattr(manifest, "CHUNK_BYTES", chunk)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "name"])
    expected = []
    for row in rows:
        line = text.getvalue().count("\n") + 1
        writer.writerow(row)
        expected.append(ManifestRow(line, {"id": row[0], "name": row[1]}))
    path = _write(tmp_path, "c.csv", (b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode())
    assert _rows(path) == expected
    assert [tuple(r.fields.values()) for r in expected] == [
        tuple(r.values()) for r in csv.DictReader(io.StringIO(text.getvalue()))
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=10), st.integers(1, 9))
def test_iter_lines_at_any_chunk_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[bytes], chunk: int
) -> None:
    monkeypatch.setattr(manifest, "CHUNK_BYTES", chunk)
    path = _write(tmp_path, "l.bin", b"\n".join(lines))
    got = [(x.number, x.data, x.length) for x in iter_lines(path, max_line_bytes=6)]
    data = b"\n".join(lines)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    physical = data.split(b"\n") if data else []
    if physical and physical[-1] == b"" and data.endswith(b"\n"):
        physical.pop()
    assert got == [(i, p if len(p) <= 6 else None, len(p)) for i, p in enumerate(physical, start=1)]


def test_a_row_over_the_cap_across_two_reads_is_refused_at_its_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chunks of 32 bytes: the header, "1,x" and the row's first line (14 bytes with its newline) are in the first
    # read; the row carries on into the next (22 bytes): 36 in all, over a 30-byte cap that each line is under
    quoted = '2,"' + "a" * 10 + "\n" + "b" * 20 + '"\n'
    path = _write(tmp_path, "c.csv", "id,name\n1,x\n" + quoted + "3,y\n")
    monkeypatch.setattr(manifest, "CHUNK_BYTES", 32)
    for cap in (30, 35):
        with pytest.raises(ManifestError) as info:
            list(iter_manifest(path, max_line_bytes=cap))
        assert info.value.line == 3
        assert f"CSV row is over the {cap}-byte limit" in info.value.reason
    for cap in (36, 40):  # at or over the row's bytes it is read
        rows = list(iter_manifest(path, max_line_bytes=cap))
        assert [r.line for r in rows if isinstance(r, ManifestRow)] == [2, 3, 5]
    # chunks of 40: two of the row's lines (10 + 9 bytes) in the first read, its third (22) in the next: 41
    quoted = '2,"' + "a" * 6 + "\n" + "c" * 8 + "\n" + "b" * 20 + '"\n'
    path = _write(tmp_path, "c.csv", "id,name\n1,x\n" + quoted + "3,y\n")
    monkeypatch.setattr(manifest, "CHUNK_BYTES", 40)
    with pytest.raises(ManifestError) as info:
        list(iter_manifest(path, max_line_bytes=40))
    assert info.value.line == 3 and "CSV row is over the 40-byte limit" in info.value.reason
    rows = list(iter_manifest(path, max_line_bytes=41))
    assert [r.line for r in rows if isinstance(r, ManifestRow)] == [2, 3, 6]


def test_bytes_that_are_not_utf8_are_a_row_error_at_their_line_the_rows_around_are_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", b'id,name\n1,ok\n2,caf\xe9\n3,"two\nlines"\n4,ok\n')
    rows = _rows(path)
    assert [r.line for r in rows if isinstance(r, ManifestRow)] == [2, 4, 6]
    errors = [r for r in rows if isinstance(r, ManifestError)]
    assert len(errors) == 1 and errors[0].line == 3 and "byte 0xe9" in errors[0].reason
