"""Validation before spending: rows → items or located problems; keys, duplicates, the demo catalog."""

from __future__ import annotations

import collections
import csv
import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchpipe.cli.validate import validate_command
from batchpipe.domain import spec as rules
from batchpipe.domain.items import ImageRef, Item, make_custom_id
from batchpipe.domain.problems import Problem
from batchpipe.errors import ManifestError
from batchpipe.input.jobspec import JobSpec, RunSection
from batchpipe.input.validate import key_problem, make_items, validate_job
from batchpipe.stages.shard import ShardBuilder

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
) -> tuple[list[Item], list[Problem], list[Problem]]:
    spec = JobSpec.for_manifest(
        path,
        "t",
        defaults=defaults or {"model": "gpt-image-1.5"},
        workdir=path.parent,
        on_duplicate_key=on_duplicate_key,  # type: ignore[arg-type]
    )
    warnings: list[Problem] = []
    results = list(make_items(spec, on_warning=warnings.append))
    return (
        [r for r in results if isinstance(r, Item)],
        [r for r in results if isinstance(r, Problem)],
        warnings,
    )


def _where(problems: list[Problem]) -> list[tuple[int | None, str | None]]:
    return [(p.line, p.field) for p in problems]


def _png_data_url(mode: str = "RGBA", *, side: int = 4) -> tuple[str, str]:
    """A real ``side`` x ``side`` PNG of noise as a data URL, and the sha256 of its bytes."""
    import base64
    import hashlib
    import random

    from PIL import Image

    buffer = io.BytesIO()
    noise = random.Random(side).randbytes(side * side * len(mode))
    Image.frombytes(mode, (side, side), noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    return f"data:image/png;base64,{base64.b64encode(data).decode()}", hashlib.sha256(data).hexdigest()


def test_plain_generation_and_edit_items(tmp_path: Path) -> None:
    mask_url, mask_sha = _png_data_url()
    path = _jsonl(
        tmp_path,
        {"key": "shoes/red", "prompt": "a red shoe", "size": "1536x1024", "metadata": {"sku": 7}},
        {
            "key": "e1",
            "prompt": "make it blue",
            "images": [{"image_url": "https://x.test/a.png"}, {"file_id": "file-1"}],
            "mask": {"image_url": mask_url},
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
        ImageRef("data", f"data:image/png;sha256={mask_sha}", mask_sha),
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
    (problem,) = [r for r in results if isinstance(r, Problem)]
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
    assert isinstance(problem, Problem)
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


def test_the_flipkart_catalog_maps_to_20000_items_with_its_duplicates_reported() -> None:
    spec = JobSpec.load(REPO / "jobs" / "catalog-nightly.toml", workdir=REPO)
    with spec.manifest_path.open(newline="", encoding="utf-8") as handle:
        pids = collections.Counter(row["pid"] for row in csv.DictReader(handle))
    repeated = sum(count - 1 for count in pids.values() if count > 1)
    assert repeated == 2  # shared/data/README.md: 2 duplicated pids, 19,998 distinct
    warnings: list[Problem] = []
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
    assert result.exit_code == 2  # bad input, as `run` refuses it (issue 11, behaviour 7)
    assert "field 'prompt'" in result.output
    result = CliRunner().invoke(validate_command, [str(REPO / "jobs" / "catalog-nightly.toml"), "--limit", "50"])
    assert result.exit_code == 0, result.output
    assert "items=50" in result.output


# ------------------------------------------------------------------------------- the shard byte limit, every mode

#: The longest custom_id a line can carry (attempt 10, the most ``[run] max_attempts`` allows).
_LONGEST_ID = make_custom_id("t", "any key", 10)


def _line(endpoint: str, body: dict[str, object], custom_id: str = _LONGEST_ID) -> int:
    """Bytes of the batch input line the shard builder writes for ``body`` (newline included)."""
    return len(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})) + 1


def _prompt_filling(limit: int, *, over: int = 0) -> str:
    """A prompt whose gpt-image-2 generation line is exactly ``limit + over`` bytes."""
    empty = _line(GEN, {"model": "gpt-image-2", "prompt": ""})
    return "p" * (limit - empty + over)


def test_a_plain_item_over_the_shard_byte_limit_is_refused_at_validation(tmp_path: Path) -> None:
    fits, over = _prompt_filling(1024), _prompt_filling(1024, over=1)
    path = _jsonl(
        tmp_path, {"key": "fits", "prompt": fits}, {"key": "big", "prompt": over}, {"key": "ok", "prompt": "x"}
    )
    spec = JobSpec.for_manifest(
        path, "t", defaults={"model": "gpt-image-2"}, run=RunSection(max_shard_bytes=1024), workdir=tmp_path
    )
    results = list(make_items(spec))
    assert [r.key for r in results if isinstance(r, Item)] == ["fits", "ok"]
    (problem,) = [r for r in results if isinstance(r, Problem)]
    assert (problem.file, problem.line, problem.field, problem.key) == (str(path.resolve()), 2, "prompt", "big")
    assert problem.message == "the request line would be 1,025 bytes, over the 1,024-byte shard limit"
    assert str(problem).startswith(f"{path.resolve()}:2: field 'prompt': the request line would be 1,025 bytes")
    report = validate_job(spec)
    assert (report.items, report.problem_count) == (2, 1)


def test_a_plain_edit_with_a_data_url_over_the_limit_names_images(tmp_path: Path) -> None:
    image = {"image_url": _png_data_url("RGB", side=32)[0]}  # a real image (it is checked), ~3 KB
    path = _jsonl(tmp_path, {"key": "e", "prompt": "make it blue", "images": [image]})
    spec = JobSpec.for_manifest(
        path, "t", defaults={"model": "gpt-image-1.5"}, run=RunSection(max_shard_bytes=1024), workdir=tmp_path
    )
    (problem,) = list(make_items(spec))
    assert isinstance(problem, Problem)
    assert (problem.line, problem.field, problem.key) == (1, "images", "e")
    assert "over the 1,024-byte shard limit (data URLs count in full" in problem.message


def _catalog_job(tmp_path: Path, names: list[str], *, max_shard_bytes: int = 1024) -> Path:
    with (tmp_path / "c.csv").open("w", newline="") as out:
        csv.writer(out).writerows([["sku", "name"], *([f"S{i}", name] for i, name in enumerate(names, start=1))])
    (tmp_path / "job.toml").write_text(
        '[job]\nname = "c"\n[manifest]\npath = "c.csv"\n[item]\nkey = "{sku}"\nprompt = "{name}"\n'
        f'[defaults]\nmodel = "gpt-image-2"\n[run]\nmax_shard_bytes = {max_shard_bytes}\n'
    )
    return tmp_path / "job.toml"


def test_a_catalog_item_over_the_shard_byte_limit_is_refused_at_validation(tmp_path: Path) -> None:
    job = _catalog_job(tmp_path, ["a mug", _prompt_filling(1024, over=1), _prompt_filling(1024)])
    spec = JobSpec.load(job, workdir=tmp_path)
    results = list(make_items(spec))
    assert [r.key for r in results if isinstance(r, Item)] == ["S1", "S3"]
    (problem,) = [r for r in results if isinstance(r, Problem)]
    assert (problem.file, problem.line, problem.field, problem.key) == (str(tmp_path / "c.csv"), 3, "prompt", "S2")
    assert "1,025 bytes, over the 1,024-byte shard limit" in problem.message


async def test_an_item_validation_accepts_fits_in_a_shard_at_its_last_attempt(tmp_path: Path) -> None:
    """The validator's arithmetic is the builder's: a line of exactly ``max_shard_bytes`` passes both."""
    path = _jsonl(tmp_path, {"key": "fits", "prompt": _prompt_filling(1024)})
    spec = JobSpec.for_manifest(
        path, "t", defaults={"model": "gpt-image-2"}, run=RunSection(max_shard_bytes=1024), workdir=tmp_path
    )
    (item,) = list(make_items(spec))
    assert isinstance(item, Item)
    builder = ShardBuilder(tmp_path / "shards", prefix="t", max_bytes=1024)
    await builder.add(make_custom_id("t", item.key, 10), item)
    (shard,) = await builder.close()
    assert shard.bytes == 1024


@pytest.mark.parametrize("mode", ["plain", "catalog"])
def test_run_refuses_an_item_over_the_shard_byte_limit_and_leaves_no_shard_file(tmp_path: Path, mode: str) -> None:
    """Refused at validation, so the shard builder never meets it: exit 2, the row located, no shard and no
    ``.part`` file left behind (100 bytes over: over even at attempt 1, whose custom_id is the shortest)."""
    big = _prompt_filling(1024, over=100)
    if mode == "plain":
        manifest = _jsonl(tmp_path, {"key": "a", "prompt": "a red mug"}, {"key": "big", "prompt": big})
        job = tmp_path / "job.toml"
        job.write_text(
            '[job]\nname = "p"\n[manifest]\npath = "items.jsonl"\n[defaults]\nmodel = "gpt-image-2"\n'
            "[run]\nmax_shard_bytes = 1024\n"
        )
    else:
        job = _catalog_job(tmp_path, ["a red mug", big])
        manifest = tmp_path / "c.csv"
    workdir = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, "-m", "batchpipe", "--log-json", "run", str(job), "--workdir", str(workdir), "--api",
         "emulator"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    line = 2 if mode == "plain" else 3  # the CSV's header is line 1
    assert f"{manifest.resolve()}:{line}: field 'prompt': the request line would be 1,124 bytes" in proc.stderr
    assert "nothing was submitted" in proc.stderr
    assert not list(workdir.rglob("*.jsonl")) and not list(workdir.rglob("*.part"))


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
    assert all(isinstance(r, Item | Problem) for r in results)
    assert sorted(i.key for i in items) == sorted(valid_keys)
    assert all(isinstance(p.line, int) and p.file == str(path.resolve()) for p in results if isinstance(p, Problem))


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

    def counting(*args: object) -> list[Problem]:
        calls.append(args)
        return []

    monkeypatch.setattr(rules, "_other_problems", counting)
    problems = check.check_prompt("   ")
    assert [p.field for p in problems] == ["prompt", "n", "size"]  # same order as check_image_request
    assert [p.field for p in check.check({"prompt": "ok"})] == ["n", "size"]
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
    from batchpipe.input.validate import _EMPTY_FIELD_FIX as EMPTY_FIELD_FIX

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
    by_line: dict[int | None, list[Item | Problem]] = collections.defaultdict(list)
    for result in results:
        by_line[int(result.source.rsplit(":", 1)[1]) if isinstance(result, Item) else result.line].append(result)
    assert set(by_line) <= set(starts)
    for line, (pid, name, brand, long) in zip(starts, rows, strict=True):
        values = {"name": name * (3000 if long and name.strip() else 1), "brand": brand}
        prompt = " ".join(spec.prompt_template.render(values).split())
        body = {"model": defaults["model"], "prompt": prompt}
        body.update({k: defaults[k] for k in BODY_DEFAULT_FIELDS[1:] if k in defaults})
        expected = [(p.field, p.message) for p in rules.check_image_request(GEN, body, advice=spec.policy)]
        if not prompt:  # reported once, by make_items' own message
            expected = [("prompt", "the prompt renders empty (columns used: name, brand)")] + [
                e for e in expected if e[0] != "prompt"
            ]
        elif not name.strip():  # a required column left empty: its own located problem (on_empty_field)
            message = f"the prompt uses empty column(s) 'name' outside an optional {{? ...}} segment: {prompt!r}"
            expected = [("prompt", message + EMPTY_FIELD_FIX)] + [e for e in expected if e[0] != "prompt"]
        got = by_line[line]
        found = [(p.field, p.message) for p in got if isinstance(p, Problem) and p.field != "key"]
        assert found == expected
        items = [r for r in got if isinstance(r, Item)]
        if items:
            assert not expected
            assert list(items[0].body.items()) == list(body.items())  # same fields, same order, same bytes
            assert items[0].metadata["pid"] == pid
        else:
            assert expected or any(isinstance(p, Problem) and p.field == "key" for p in got)


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.sampled_from("ab~"), min_size=1, max_size=3), min_size=1, max_size=40))
def test_renamed_duplicate_keys_stay_unique_and_name_the_first_line(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str]
) -> None:
    path = _jsonl(tmp_path_factory.mktemp("keys"), *({"key": key, "prompt": "p"} for key in keys))
    items, problems, warnings = _run(path)
    assert problems == []
    assert len(items) == len(keys) and len({i.key for i in items}) == len(keys)  # every row kept, keys distinct
    taken: dict[str, int] = {}  # final key → the line that took it
    for line, (key, item) in enumerate(zip(keys, items, strict=True), start=1):
        if key not in taken:
            assert item.key == key and "_batchpipe" not in item.metadata
        else:
            assert item.key.startswith(f"{key}~") and item.key not in taken
            assert item.metadata["_batchpipe"] == {"duplicate_of": {"key": key, "line": taken[key]}}
        taken[item.key] = line
    assert len(warnings) == sum(1 for key, item in zip(keys, items, strict=True) if item.key != key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(["a", "b", " ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\x1c", "é"])))
@example("Studio photo of tea, plain background.")
def test_prompts_are_single_spaced_whatever_the_whitespace(tmp_path: Path, text: str) -> None:
    """The prompt's whitespace rule (runs of any Unicode whitespace → one space, none at either end) holds for
    text that already looks single-spaced and for text that is not, as a catalog row's prompt."""
    spec = JobSpec.load(_catalog_job(tmp_path, [text], max_shard_bytes=1_000_000), workdir=tmp_path)
    results = list(make_items(spec, on_warning=lambda _: None))
    expected = " ".join(text.split())
    if expected:
        assert [r.body["prompt"] for r in results if isinstance(r, Item)] == [expected]
        assert not [r for r in results if isinstance(r, Problem)]
    else:  # a blank column is its own located problem (on_empty_field), never an item with an empty prompt
        assert [(r.field, r.line) for r in results if isinstance(r, Problem)] == [("prompt", 2)]
        assert not [r for r in results if isinstance(r, Item)]
