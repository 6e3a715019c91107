"""Validation before spending: rows → items or located problems; keys, duplicates, the demo catalog."""

from __future__ import annotations

import collections
import csv
import io
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchpipe.cli.validate import validate_command
from batchpipe.domain import spec as rules
from batchpipe.domain.items import ImageRef, Item
from batchpipe.errors import ManifestError
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.validate import ItemProblem, KeyIndex, key_problem, make_items, validate_job

REPO = Path(__file__).resolve().parents[1]
GEN = "/v1/images/generations"


@pytest.fixture(autouse=True)
def _models_live_on_2026_11_01(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the request rules of models that were live on 2026-11-01 (gpt-image-1.5 and
    gpt-image-1-mini take input_fidelity); lifecycle refusals have their own tests (tests/test_models_lineup.py)."""
    monkeypatch.setenv("BATCHPIPE_NOW", "2026-11-01T00:00:00+00:00")


def _jsonl(tmp_path: Path, *lines: object, name: str = "items.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines))
    return path


def _run(
    path: Path, *, defaults: dict[str, object] | None = None, on_duplicate_key: str = "suffix"
) -> tuple[list[Item], list[ItemProblem], list[ItemProblem]]:
    spec = JobSpec.for_manifest(
        path,
        "t",
        defaults=defaults or {"model": "gpt-image-1.5"},
        workdir=path.parent,
        on_duplicate_key=on_duplicate_key,  # type: ignore[arg-type]
    )
    warnings: list[ItemProblem] = []
    results = list(make_items(spec, on_warning=warnings.append))
    return (
        [r for r in results if isinstance(r, Item)],
        [r for r in results if isinstance(r, ItemProblem)],
        warnings,
    )


def _where(problems: list[ItemProblem]) -> list[tuple[int | None, str | None]]:
    return [(p.line, p.field) for p in problems]


def test_plain_generation_and_edit_items(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        {"key": "shoes/red", "prompt": "a red shoe", "size": "1536x1024", "metadata": {"sku": 7}},
        {
            "key": "e1",
            "prompt": "make it blue",
            "images": [{"image_url": "https://x.test/a.png"}, {"file_id": "file-1"}],
            "mask": {"image_url": "data:image/png;base64,aGVsbG8="},
            "input_fidelity": "high",
        },
    )
    items, problems, _ = _run(path, defaults={"model": "gpt-image-1.5", "quality": "low", "size": "1024x1024"})
    assert problems == []
    gen, edit = items
    assert gen.key == "shoes/red"
    assert gen.endpoint == GEN
    assert gen.body == {"model": "gpt-image-1.5", "prompt": "a red shoe", "size": "1536x1024", "quality": "low"}
    assert list(gen.body) == ["model", "prompt", "size", "quality"]
    assert gen.metadata == {"sku": 7}
    assert gen.source == f"{path.resolve()}:1"
    assert edit.endpoint == "/v1/images/edits"
    assert edit.source.endswith(":2")
    assert edit.inputs == (
        ImageRef("url", "https://x.test/a.png"),
        ImageRef("file", "file-1"),
        ImageRef(
            "data",
            "data:image/png;sha256=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ),
    )


def test_unknown_fields_and_wrong_types_are_located(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        {"key": "a", "prompt": "p", "colour": "red"},
        {"key": 5, "prompt": "p"},
        {"key": "c", "prompt": "p", "n": "2"},
        {"key": "d", "prompt": "p", "metadata": [1]},
        {"key": "e", "prompt": 3},
        {"prompt": "no key"},
        {"key": "ok", "prompt": "fine"},
    )
    items, problems, _ = _run(path)
    assert [i.key for i in items] == ["ok"]
    assert _where(problems) == [(1, "colour"), (2, "key"), (3, "n"), (4, "metadata"), (5, "prompt"), (6, "key")]
    assert str(problems[0]).startswith(f"{path.resolve()}:1: field 'colour': unknown field 'colour'")
    assert problems[0].key == "a"
    assert problems[1].key is None


def test_sizes_and_options_the_model_refuses(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        {"key": "a", "prompt": "p", "size": "2048x2048"},
        {"key": "b", "prompt": "p", "size": "2048x2048", "model": "gpt-image-2"},
        {"key": "c", "prompt": "p", "size": "1000x1000", "model": "gpt-image-2"},
        {"key": "d", "prompt": "p", "background": "transparent", "output_format": "jpeg"},
        {
            "key": "e",
            "prompt": "p",
            "images": [{"file_id": "f"}],
            "input_fidelity": "high",
            "model": "gpt-image-1-mini",
        },
        {"key": "f", "prompt": "p", "model": "dall-e-3"},
    )
    items, problems, _ = _run(path)
    assert [i.key for i in items] == ["b"]
    assert _where(problems) == [(1, "size"), (3, "size"), (4, "background"), (5, "input_fidelity"), (6, "model")]


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("shoes/red-42", True),
        ("a~2", True),
        ("Ünïcode ключ", True),
        ("", False),
        ("../etc/passwd", False),
        ("a/../b", False),
        ("a..b", False),
        ("/abs", False),
        ("a\\b", False),
        ("a\x00b", False),
        ("tab\there", False),
        ("a//b", False),
        ("trailing/", False),
        ("x" * 512, True),
        ("x" * 513, False),
    ],
)
def test_key_rules(key: str, ok: bool) -> None:
    assert (key_problem(key) is None) is ok


def test_bad_keys_become_problems(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, {"key": "../x", "prompt": "p"}, {"key": "a\\b", "prompt": "p"}, {"key": "", "prompt": "p"})
    items, problems, _ = _run(path)
    assert items == []
    assert _where(problems) == [(1, "key"), (2, "key"), (3, "key")]
    assert "'..'" in problems[0].message
    assert "backslash" in problems[1].message


def test_duplicate_keys_suffix_policy(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        {"key": "K", "prompt": "p1"},
        {"key": "L", "prompt": "p2"},
        {"key": "K", "prompt": "p3"},
        {"key": "K", "prompt": "p4"},
        {"key": "K~2", "prompt": "p5"},
    )
    items, problems, warnings = _run(path)
    assert problems == []
    assert [i.key for i in items] == ["K", "L", "K~2", "K~3", "K~2~2"]
    assert items[2].metadata == {"_batchpipe": {"duplicate_of": {"key": "K", "line": 1}}}
    assert _where(warnings) == [(3, "key"), (4, "key"), (5, "key")]
    assert all(w.severity == "warning" for w in warnings)
    assert "first at line 1, again at line 3" in warnings[0].message
    assert "'K~2'" in warnings[0].message
    assert str(warnings[0]).startswith(f"{path.resolve()}:3: field 'key': warning: ")


def test_duplicate_keys_error_policy(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("sku,name\nA,one\nB,two\nA,three\n")
    (tmp_path / "job.toml").write_text(
        '[job]\nname = "d"\n[manifest]\npath = "c.csv"\n[item]\nkey = "{sku}"\nprompt = "{name}"\n'
        'on_duplicate_key = "error"\n[defaults]\nmodel = "gpt-image-2"\n'
    )
    results = list(make_items(JobSpec.load(tmp_path / "job.toml", workdir=tmp_path)))
    assert [r.key for r in results if isinstance(r, Item)] == ["A", "B"]
    (problem,) = [r for r in results if isinstance(r, ItemProblem)]
    assert (problem.line, problem.field, problem.key) == (4, "key", "A")
    assert "first at line 2" in problem.message


def test_catalog_rows_render_prompts_and_report_empty_ones(tmp_path: Path) -> None:
    rows = [
        ["sku", "name", "brand", "note"],
        ["S1", "  Red   mug\n", "Acme", "{brand} {0.__class__}"],
        ["S2", "", "", " \t"],
        ["S3", "Plate {{x}}", "", "y"],
    ]
    with (tmp_path / "c.csv").open("w", newline="") as out:
        csv.writer(out).writerows(rows)
    (tmp_path / "job.toml").write_text(
        '[job]\nname = "c"\n[manifest]\npath = "c.csv"\n[item]\nkey = "{sku}"\n'
        'prompt = "{name}{? by {brand}} {note}"\n[defaults]\nmodel = "gpt-image-1.5"\nquality = "low"\n'
    )
    spec = JobSpec.load(tmp_path / "job.toml", workdir=tmp_path)
    results = list(make_items(spec))
    first, problem, third = results
    assert isinstance(first, Item)
    assert first.body == {"model": "gpt-image-1.5", "prompt": "Red mug by Acme {brand} {0.__class__}", "quality": "low"}
    assert first.metadata == {"sku": "S1", "name": "  Red   mug\n", "brand": "Acme", "note": "{brand} {0.__class__}"}
    assert isinstance(problem, ItemProblem)
    assert (problem.line, problem.field, problem.key) == (4, "prompt", "S2")  # row 2 spans lines 2-3
    assert "renders empty" in problem.message
    assert isinstance(third, Item)
    assert third.body["prompt"] == "Plate {{x}} y"


def test_manifest_row_errors_become_problems_and_file_errors_raise(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, {"key": "a", "prompt": "p"}, b"{broken", b"\xff\xfe", {"key": "b", "prompt": "p"})
    items, problems, _ = _run(path)
    assert [i.key for i in items] == ["a", "b"]
    assert _where(problems) == [(2, None), (3, None)]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(ManifestError):
        _run(empty)


def test_limit_counts_rows(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, *({"key": f"k{i}", "prompt": "p"} for i in range(10)))
    spec = JobSpec.for_manifest(path, "t", defaults={"model": "gpt-image-2"})
    assert len(list(make_items(spec, limit=3))) == 3


def test_key_index_grows_and_remembers_first_lines() -> None:
    index = KeyIndex(capacity=8)
    for i in range(5000):
        assert index.add(f"key-{i}", i + 2) is None
    assert len(index) == 5000
    assert index.add("key-1234", 99999) == 1236
    assert "key-4999" in index
    assert "key-5000" not in index


def test_the_flipkart_catalog_maps_to_20000_items_with_its_duplicates_reported() -> None:
    spec = JobSpec.load(REPO / "jobs" / "catalog-nightly.toml", workdir=REPO)
    with spec.manifest_path.open(newline="", encoding="utf-8") as handle:
        pids = collections.Counter(row["pid"] for row in csv.DictReader(handle))
    repeated = sum(count - 1 for count in pids.values() if count > 1)
    assert repeated == 2  # shared/data/README.md: 2 duplicated pids, 19,998 distinct
    warnings: list[ItemProblem] = []
    keys = set()
    count = 0
    for result in make_items(spec, on_warning=warnings.append):
        assert isinstance(result, Item), str(result)
        count += 1
        keys.add(result.key)
        assert result.body["model"] == "gpt-image-2"
        assert "  " not in str(result.body["prompt"])
    assert count == len(keys) == 20_000
    assert len(warnings) == repeated
    assert {w.key for w in warnings} == {f"{pid}~2" for pid, n in pids.items() if n > 1}
    assert [w.line for w in warnings] == [7771, 9421]


def test_validate_job_report_and_cli(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, {"key": "a", "prompt": "p", "model": "gpt-image-2"}, {"key": "b", "prompt": ""})
    spec = JobSpec.for_manifest(path, "t")
    report = validate_job(spec)
    assert (report.items, report.problem_count, report.ok) == (1, 2, False)  # no model, empty prompt
    assert report.groups == {(GEN, "gpt-image-2"): 1}
    assert report.cost_usd > 0
    result = CliRunner().invoke(validate_command, [str(path)])
    assert result.exit_code == 1
    assert "field 'prompt'" in result.output
    result = CliRunner().invoke(validate_command, [str(REPO / "jobs" / "catalog-nightly.toml"), "--limit", "50"])
    assert result.exit_code == 0, result.output
    assert "items=50" in result.output


# --------------------------------------------------------------------------------------------- property

_VALID = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=30).filter(str.strip)},
    optional={
        "size": st.sampled_from(["1024x1024", "1536x1024", "auto"]),
        "quality": st.sampled_from(["low", "high"]),
        "n": st.integers(1, 10),
        "metadata": st.dictionaries(st.text(max_size=5), st.integers(-(2**40), 2**40)),
    },
)
_GARBAGE = st.one_of(
    st.binary(max_size=40).map(lambda b: b"#" + b.replace(b"\n", b"")),  # never JSON
    st.just(b"\xff\xfe{}"),
    st.builds(lambda v: orjson.dumps([v]), st.integers(-1000, 1000)),
    st.builds(lambda s: orjson.dumps({"key": "g", "prompt": "p", "size": s}), st.text(max_size=10)).filter(
        lambda b: (
            b'"size":"1024x1024"' not in b
            and b'"size":"1536x1024"' not in b
            and b'"size":"1024x1536"' not in b
            and b'"size":"auto"' not in b
            and b'"size":""' not in b
        )
    ),
    st.builds(lambda n: orjson.dumps({"key": "g", "prompt": "p", "n": n}), st.integers(11, 99)),
    st.builds(lambda k: orjson.dumps({"key": k, "prompt": "p", "extra": 1}), st.text(max_size=5)),
    st.builds(lambda k: orjson.dumps({"key": "../" + k, "prompt": "p"}), st.text(max_size=5)),
    st.just(b'{"key": "g", "prompt": "   "}'),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_VALID.map(lambda v: ("valid", v)), _GARBAGE.map(lambda g: ("garbage", g))), max_size=25))
def test_random_manifests_only_yield_items_and_problems(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, object]]
) -> None:
    directory = tmp_path_factory.mktemp("prop")
    lines: list[bytes] = []
    valid_keys = []
    for index, (kind, value) in enumerate(rows):
        if kind == "valid":
            assert isinstance(value, dict)
            key = f"v{index}"
            valid_keys.append(key)
            lines.append(orjson.dumps({"key": key, **value}))
        else:
            assert isinstance(value, bytes)
            lines.append(value)
    path = directory / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    spec = JobSpec.for_manifest(path, "prop", defaults={"model": "gpt-image-1-mini"})
    try:
        results = list(make_items(spec, on_warning=lambda p: None))
    except ManifestError:
        assert not any(line.strip() for line in lines)  # only an empty manifest is a file-level error
        return
    items = [r for r in results if isinstance(r, Item)]
    assert all(isinstance(r, Item | ItemProblem) for r in results)
    assert sorted(i.key for i in items) == sorted(valid_keys)
    assert all(isinstance(p.line, int) and p.file == str(path.resolve()) for p in results if isinstance(p, ItemProblem))


# ------------------------------------------------------------------ the split request check and the hot path

EDITS = "/v1/images/edits"
_REF = st.one_of(
    st.fixed_dictionaries(
        {"image_url": st.sampled_from(["https://x.test/a.png", "ftp://x", "data:image/png;base64,AA"])}
    ),
    st.fixed_dictionaries({"file_id": st.sampled_from(["file-1", ""])}),
    st.just({"image_url": "https://x.test/a.png", "file_id": "file-1"}),
    st.just({"image_url": "https://x.test/a.png", "extra": 1}),
    st.just("not an object"),
)
#: Every body field the service checks, with good, bad and oddly typed values.
_BODY_FIELDS: dict[str, st.SearchStrategy[object]] = {
    "model": st.sampled_from([*rules.shipped_models().names(), "gpt-image-1.5-2025-12-16", "dall-e-3", "", None, 3]),
    "prompt": st.one_of(
        st.text(max_size=12),
        st.sampled_from(["", "   ", "\u2028\t", "x" * rules.MAX_PROMPT_CHARS, "y" * (rules.MAX_PROMPT_CHARS + 1)]),
        st.integers(),
        st.none(),
    ),
    "size": st.sampled_from(["auto", "1024x1024", "1536x1024", "2048x1152", "1000x1000", "4096x1024", "axb", None, 5]),
    "quality": st.sampled_from(["low", "medium", "high", "auto", "ultra", None, 1]),
    "background": st.sampled_from(["transparent", "opaque", "auto", "clear", None]),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif", "", None]),
    "output_compression": st.one_of(st.integers(-5, 105), st.booleans(), st.none(), st.just("50")),
    "n": st.one_of(st.integers(-1, 12), st.booleans(), st.none(), st.just("1")),
    "moderation": st.sampled_from(["auto", "low", "high", None]),
    "input_fidelity": st.sampled_from(["high", "low", "max", None]),
    "images": st.one_of(st.none(), st.just("x"), st.lists(_REF, max_size=17)),
    "mask": st.one_of(st.none(), _REF),
}
_BODIES = st.fixed_dictionaries({}, optional=_BODY_FIELDS)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([GEN, EDITS, "/v1/chat/completions"]), _BODIES, _BODIES)
def test_the_split_check_equals_the_full_check(endpoint: str, fixed: dict[str, object], row: dict[str, object]) -> None:
    check = rules.ImageRequestCheck(endpoint, fixed)
    assert check.check(row) == rules.check_image_request(endpoint, {**fixed, **row})
    prompt = row.get("prompt")
    assert check.check_prompt(prompt) == rules.check_image_request(endpoint, {**fixed, "prompt": prompt})
    assert check.check({}) == rules.check_image_request(endpoint, dict(fixed))


def test_the_split_check_checks_only_the_prompt_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    check = rules.ImageRequestCheck(GEN, {"model": "gpt-image-2", "size": "4096x1024", "n": 0})
    calls: list[object] = []

    def counting(*args: object) -> list[rules.RequestProblem]:
        calls.append(args)
        return []

    monkeypatch.setattr(rules, "_other_problems", counting)
    problems = check.check_prompt("   ")
    assert [p.param for p in problems] == ["prompt", "n", "size"]  # same order as check_image_request
    assert [p.param for p in check.check({"prompt": "ok"})] == ["n", "size"]
    assert calls == []  # the shared fields were checked once, at construction
    check.check({"prompt": "ok", "n": 1})  # a row that sets another field: the whole body is checked
    assert len(calls) == 1


_CATALOG_DEFAULTS = st.fixed_dictionaries(
    {"model": _BODY_FIELDS["model"].filter(lambda m: isinstance(m, str))},
    optional={
        name: _BODY_FIELDS[name]
        for name in ("size", "quality", "background", "output_format", "output_compression", "n", "moderation")
    },
).map(lambda d: {k: v for k, v in d.items() if v is not None})
_CELL = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), max_size=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    _CATALOG_DEFAULTS,
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "a/b", "", " ", "..", "x\x01", "/k"]), _CELL, _CELL, st.booleans()),
        min_size=1,
        max_size=12,
    ),
)
def test_catalog_items_equal_checking_every_full_body(
    tmp_path: Path, defaults: dict[str, object], rows: list[tuple[str, str, str, bool]]
) -> None:
    from batchpipe.input.jobspec import BODY_DEFAULT_FIELDS
    from batchpipe.input.templates import Template

    path = tmp_path / "catalog.csv"
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["pid", "name", "brand"])
    starts = []  # the physical line each row starts on (values may hold newlines)
    for pid, name, brand, long in rows:
        starts.append(text.getvalue().count("\n") + 1)
        writer.writerow([pid, name * (3000 if long and name.strip() else 1), brand])
    path.write_text(text.getvalue(), encoding="utf-8")
    spec = JobSpec(
        name="t",
        manifest_path=path,
        manifest_format="csv",
        output_dir=tmp_path / "out",
        key_template=Template.parse("{pid}"),
        prompt_template=Template.parse("{name}{? by {brand}}"),
        metadata_columns=("pid", "brand"),
        defaults=defaults,
        on_duplicate_key="suffix",
    )
    assert spec.prompt_template is not None
    results = list(make_items(spec, on_warning=lambda _: None))
    by_line: dict[int | None, list[Item | ItemProblem]] = collections.defaultdict(list)
    for result in results:
        by_line[int(result.source.rsplit(":", 1)[1]) if isinstance(result, Item) else result.line].append(result)
    assert set(by_line) <= set(starts)
    for line, (pid, name, brand, long) in zip(starts, rows, strict=True):
        values = {"name": name * (3000 if long and name.strip() else 1), "brand": brand}
        prompt = " ".join(spec.prompt_template.interpret(values).split())
        body = {"model": defaults["model"], "prompt": prompt}
        body.update({k: defaults[k] for k in BODY_DEFAULT_FIELDS[1:] if k in defaults})
        expected = [(p.param, p.message) for p in rules.check_image_request(GEN, body, advice=spec.policy)]
        if not prompt:  # reported once, by make_items' own message
            expected = [("prompt", "the prompt renders empty (columns used: name, brand)")] + [
                e for e in expected if e[0] != "prompt"
            ]
        got = by_line[line]
        found = [(p.field, p.message) for p in got if isinstance(p, ItemProblem) and p.field != "key"]
        assert found == expected
        items = [r for r in got if isinstance(r, Item)]
        if items:
            assert not expected
            assert list(items[0].body.items()) == list(body.items())  # same fields, same order, same bytes
            assert items[0].metadata["pid"] == pid
        else:
            assert expected or any(isinstance(p, ItemProblem) and p.field == "key" for p in got)


def _reference_key_problem(key: str) -> str | None:
    """key_problem as first written: every character through unicodedata."""
    import unicodedata

    if not key or len(key) > 512 or ".." in key or key.startswith("/") or "\\" in key:
        return "bad"
    if "//" in key or key.endswith("/"):
        return "bad"
    return "bad" if any(unicodedata.category(ch) == "Cc" for ch in key) else None


@given(st.text(max_size=40) | st.text(st.characters(max_codepoint=0x20), max_size=5))
def test_key_problem_fast_path_agrees_with_the_per_character_rule(key: str) -> None:
    assert (key_problem(key) is None) == (_reference_key_problem(key) is None)
    if key and key.isprintable() is False and _reference_key_problem(key) is None:
        assert key_problem(key) is None  # non-printable but not a control character (e.g. U+2028)


@given(st.lists(st.text(st.sampled_from("ab/~"), max_size=4), max_size=300))
def test_key_index_matches_a_dict_across_growth(keys: list[str]) -> None:
    index = KeyIndex(capacity=8)
    first: dict[str, int] = {}
    for line, key in enumerate(keys, start=2):
        assert index.add(key, line) == first.get(key)
        first.setdefault(key, line)
    assert len(index) == len(first)
    assert all(key in index for key in first)


@given(st.text(st.sampled_from("ab \t\n\u00a0\u2028\u3000\x1c\x85\u200b"), max_size=12) | st.text(max_size=30))
def test_single_spacing_fast_path_equals_split_and_join(text: str) -> None:
    from batchpipe.input.validate import _single_spaced

    assert _single_spaced(text) == " ".join(text.split())


@given(st.lists(st.text(max_size=6), max_size=6).map(tuple), st.dictionaries(st.text(max_size=6), st.integers()))
def test_metadata_picker_equals_the_comprehension(columns: tuple[str, ...], values: dict[str, object]) -> None:
    from batchpipe.input.validate import _column_picker

    picked = _column_picker(columns)(values)
    expected = {column: values.get(column) for column in columns}
    assert picked == expected and list(picked) == list(expected)
