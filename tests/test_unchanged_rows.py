"""A re-run skips catalog rows whose item already succeeded from the same row and job spec without rendering them
(``source_hash``, :class:`batchpipe.input.validate.Unchanged`), and renders and checks every other row as before.

The runner tests run on the in-memory ledger and on SQLite; the validation tests give :func:`make_items` a lookup
of their own, so what it is asked and what it yields can be seen.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runner_helpers import fake_runner

from batchpipe.adapters.sqlite_ledger import SqliteLedger
from batchpipe.domain.items import Item, ItemStatus
from batchpipe.domain.problems import Problem
from batchpipe.fakes import MemoryBatchApi, MemoryImageStore, MemoryLedger
from batchpipe.input import templates
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.validate import ManifestItems, Unchanged, _CatalogMode, make_items, source_prefix
from batchpipe.ports import Ledger
from batchpipe.runtime.runner import Runner

HEADER = ["sku", "name", "brand", "price"]


def _catalog(folder: Path, rows: list[list[str]], *, quality: str = "low", extra: str = "") -> Path:
    with open(folder / "c.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows(rows)
    job = folder / "job.toml"
    job.write_text(
        '[job]\nname = "nightly"\n[manifest]\npath = "c.csv"\n'
        '[item]\nkey = "{sku}"\nprompt = "Studio photo of {name}{? by {brand}}"\nmetadata = ["price"]\n'
        f"{extra}"
        f'[defaults]\nmodel = "gpt-image-2"\nsize = "1024x1024"\nquality = "{quality}"\n',
        encoding="utf-8",
    )
    return job


def _rows(n: int) -> list[list[str]]:
    return [[f"sku-{i}", f"lamp {i}", "Acme" if i % 3 else "", str(10 + i)] for i in range(n)]


class _Lookup:
    """An :data:`UnchangedLookup` over a dict ``key -> source_hash`` of earlier successes, recording each call."""

    def __init__(self, done: dict[str, str]) -> None:
        self.done = done
        self.calls: list[list[tuple[str, str]]] = []

    def __call__(self, pairs: list[tuple[str, str]]) -> Callable[[], set[str]]:
        self.calls.append(pairs)
        found = {key for key, digest in pairs if self.done.get(key) == digest}
        return lambda: found


def _hashes(spec: JobSpec) -> dict[str, str]:
    """Each item's source hash, as a build that keeps them makes it (a lookup that finds nothing)."""
    return {i.key: str(i.source_hash) for i in make_items(spec, unchanged=_Lookup({})) if isinstance(i, Item)}


def test_catalog_items_carry_a_source_hash_that_follows_the_columns_the_request_reads(tmp_path: Path) -> None:
    spec = JobSpec.load(_catalog(tmp_path, _rows(4)), workdir=tmp_path)
    first = _hashes(spec)
    assert len(set(first.values())) == 4 and all(len(h) == 32 for h in first.values())
    rows = _rows(4)
    rows[0][3] = "99"  # the price: metadata only, not in the request
    rows[1][1] = "lamp one"  # the name: in the prompt
    rows[2][2] = "Other"  # the brand: in the optional segment
    again = _hashes(JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path))
    assert again["sku-0"] == first["sku-0"] and again["sku-3"] == first["sku-3"]
    assert again["sku-1"] != first["sku-1"] and again["sku-2"] != first["sku-2"]
    # the spec's part that renders the rows is in every hash; a change to it changes them all
    for changed in (
        JobSpec.load(_catalog(tmp_path, _rows(4), quality="high"), workdir=tmp_path),
        JobSpec.load(_catalog(tmp_path, _rows(4), extra='on_empty_field = "render"\n'), workdir=tmp_path),
    ):
        assert source_prefix(changed) != source_prefix(spec)
        assert not set(_hashes(changed).values()) & set(first.values())


def test_without_a_lookup_no_source_hash_is_made(tmp_path: Path) -> None:
    """Validation and shard-only builds (no ledger lookup) pay nothing for source hashes."""
    spec = JobSpec.load(_catalog(tmp_path, _rows(3)), workdir=tmp_path)
    items = [i for i in make_items(spec) if isinstance(i, Item)]
    assert len(items) == 3 and all(i.source_hash is None for i in items)
    assert all(i.source_hash for i in make_items(spec, unchanged=_Lookup({})) if isinstance(i, Item))


def test_rows_found_unchanged_are_not_rendered_and_every_other_row_goes_the_whole_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(2_500)  # three lookups of 1,000 rows
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    done = _hashes(spec)
    del done["sku-7"]  # never succeeded
    done["sku-1500"] = "0" * 32  # succeeded from another row
    rows[2_000][1] = "lamp, renamed"  # changed since
    rows.append(["sku-42", "a second sku-42", "", "1"])  # a repeated key: renamed sku-42~2, as always
    rows.append(["bad/../key", "x", "", "1"])  # an invalid key: its problem, as always
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    rendered: list[str] = []
    real = templates.Template.render_checked

    def counting(self: templates.Template, values: dict[str, object], *, empty: list[str] | None) -> str:
        if self is spec.prompt_template:
            rendered.append(str(values["sku"]))
        return real(self, values, empty=empty)

    monkeypatch.setattr(templates.Template, "render_checked", counting)
    lookup = _Lookup(done)
    results = list(make_items(spec, unchanged=lookup))
    unchanged = [r for r in results if isinstance(r, Unchanged)]
    items = [r for r in results if isinstance(r, Item)]
    problems = [r for r in results if isinstance(r, Problem)]
    assert [len(call) for call in lookup.calls] == [1000, 1000, 502]  # every row (the invalid key: never found)
    assert len(unchanged) == 2_500 - 3 and unchanged[0] == Unchanged("sku-0", 2)
    assert sorted(i.key for i in items) == ["sku-1500", "sku-2000", "sku-42~2", "sku-7"]
    assert sorted(rendered) == ["bad/../key", "sku-1500", "sku-2000", "sku-42", "sku-7"]
    assert [p.field for p in problems] == ["key"] and problems[0].line == 2_503
    # the same manifest without a lookup: every row an item, in the same order, with the same keys
    plain = [r for r in make_items(spec) if not isinstance(r, Problem)]
    keys = [r.key for r in results if not isinstance(r, Problem)]
    assert keys == [r.key for r in plain] and not any(isinstance(r, Unchanged) for r in plain)


def test_a_repeated_key_is_never_skipped_in_place_of_its_first_row(tmp_path: Path) -> None:
    """Only the first row of a key may be found unchanged; a later row with the key is renamed (``~2``) as always,
    whether it is in the same lookup chunk or a later one, even when its own source hash matches."""
    rows = _rows(3)
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    done = _hashes(spec)
    first_row = rows[1]
    rows = [["sku-1", "a new lamp", "", "1"], *rows, *([["x", "y", "", "1"]] * 1_200), first_row]
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    results = [r for r in make_items(spec, unchanged=_Lookup(done)) if not isinstance(r, Problem)]
    by_key = {r.key: r for r in results}
    assert isinstance(by_key["sku-1"], Item) and by_key["sku-1"].body["prompt"] == "Studio photo of a new lamp"
    assert isinstance(by_key["sku-1~2"], Item) and isinstance(by_key["sku-1~3"], Item)  # not skipped
    assert isinstance(by_key["sku-0"], Unchanged) and isinstance(by_key["sku-2"], Unchanged)


def test_a_model_with_a_problem_today_turns_the_skipping_off(tmp_path: Path) -> None:
    job = _catalog(tmp_path, _rows(3))
    job.write_text(job.read_text().replace("gpt-image-2", "gpt-image-1"), encoding="utf-8")  # shut down 2026-10-23
    # as `run` loads it: the lifecycle is left to the run (the service is asked first), then every row is checked
    spec = JobSpec.load(
        job, workdir=tmp_path, defer_lifecycle=True, clock=lambda: dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    )
    lookup = _Lookup({})
    results = list(make_items(spec, unchanged=lookup))
    assert not lookup.calls and not any(isinstance(r, Unchanged) for r in results)
    assert [p for p in results if isinstance(p, Problem) and p.field == "model"]


# -- the runner -------------------------------------------------------------------------------------------------


def _runner(tmp_path: Path, ledger: Ledger, api: MemoryBatchApi, store: MemoryImageStore) -> Runner:
    return fake_runner(tmp_path, ledger, api, store, max_shard_requests=400)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_nightly_rerun_skips_unchanged_rows_unrendered_and_sends_the_rest(tmp_path: Path, kind: str) -> None:
    api, store = MemoryBatchApi(), MemoryImageStore()
    ledger: Ledger = MemoryLedger() if kind == "memory" else SqliteLedger(tmp_path / "ledger.sqlite")
    rows = _rows(1_500)
    first = await _runner(tmp_path, ledger, api, store).run(
        "nightly", "h1", ManifestItems(JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)), source_name="t"
    )
    assert first.items == {ItemStatus.SUCCEEDED: 1_500} and first.skipped_unchanged == 0
    assert all(row.source_hash for row in ledger.items())

    rows[10][1] = "lamp ten, redrawn"
    rows.append(["sku-new", "a new lamp", "", "5"])
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    seen: list[object] = []
    source = ManifestItems(spec)

    def watched(unchanged: object = None) -> Iterator[object]:
        for entry in source(unchanged=unchanged):  # type: ignore[arg-type]
            seen.append(entry)
            yield entry

    watching = _Watch(spec, watched)
    second = await _runner(tmp_path, ledger, api, store).run("nightly", "h2", watching, source_name="t")
    assert second.finished and second.items == {ItemStatus.SUCCEEDED: 2} and second.skipped_unchanged == 1_499
    assert sum(isinstance(e, Unchanged) for e in seen) == 1_499  # found by their source, never rendered
    rows_now = {(r.item_key, r.attempt): r for r in ledger.items()}
    assert rows_now[("sku-10", 2)].previous_custom_id == rows_now[("sku-10", 1)].custom_id
    assert rows_now[("sku-new", 1)].status == ItemStatus.SUCCEEDED
    assert len(rows_now) == 1_502

    # rows without a source hash (an older batchpipe wrote them) are rendered and compared by their request
    if isinstance(ledger, SqliteLedger):
        ledger._db.execute("UPDATE items SET source_hash = NULL")
    else:
        for row in ledger._items.values():  # type: ignore[attr-defined]
            row["source_hash"] = None
    seen.clear()
    third = await _runner(tmp_path, ledger, api, store).run("nightly", "h3", _Watch(spec, watched), source_name="t")
    assert third.items == {} and third.skipped_unchanged == 1_501
    assert not any(isinstance(e, Unchanged) for e in seen) and sum(isinstance(e, Item) for e in seen) == 1_501
    ledger.close()


class _Watch(ManifestItems):
    """A :class:`ManifestItems` whose entries are also handed to a watcher (the runner calls it like the real one)."""

    def __init__(self, spec: JobSpec, watched: Callable[..., Iterator[object]]) -> None:
        super().__init__(spec)
        object.__setattr__(self, "watched", watched)

    def __call__(self, unchanged: object = None) -> Iterator[object]:  # type: ignore[override]
        return self.watched(unchanged)  # type: ignore[attr-defined, no-any-return]


def test_after_two_chunks_without_an_unchanged_row_only_every_32nd_is_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first build (or a rewritten catalog) asks the ledger about a few chunks, not every one; a chunk that finds
    unchanged rows turns the asking back on. Every row is hashed once, looked up or not."""
    from batchpipe.input import validate

    rows = _rows(35_000)
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    all_hashes = _hashes(spec)
    done = {f"sku-{i}": all_hashes[f"sku-{i}"] for i in range(32_000, 33_000)}  # chunk 32 only
    hashed: list[int] = []
    real = validate._CatalogMode.source_hash

    def counting(self: validate._CatalogMode, values: dict[str, object]) -> str | None:
        hashed.append(1)
        return real(self, values)

    monkeypatch.setattr(validate._CatalogMode, "source_hash", counting)
    lookup = _Lookup(done)
    results = list(make_items(spec, unchanged=lookup))
    chunks = [int(call[0][0].removeprefix("sku-")) // 1000 for call in lookup.calls]
    # 0, 1, 2 asked (the answers of 0 and 1 come while 1 and 2 are read), then 32; its hits turn asking back on for
    # 34 (33 was read before 32's answer came)
    assert chunks == [0, 1, 2, 32, 34]
    assert [r.key for r in results if isinstance(r, Unchanged)] == list(done)
    items = [r for r in results if isinstance(r, Item)]
    assert len(items) == 34_000 and all(i.source_hash == all_hashes[i.key] for i in items)
    assert len(hashed) == 35_000


async def test_the_cost_guards_estimate_skips_unchanged_rows_by_their_source_too(tmp_path: Path) -> None:
    """With a cost cap the estimate is a pass of its own before the run: rows already succeeded from the same source
    are counted as skipped without rendering them, as the build does, and what changed is priced."""
    from batchpipe.runtime.costguard import estimate_run

    api, store = MemoryBatchApi(), MemoryImageStore()
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    rows = _rows(1_200)
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    await _runner(tmp_path, ledger, api, store).run("nightly", "h1", ManifestItems(spec), source_name="t")
    rows[3][1] = "lamp three, redrawn"
    rows.append(["sku-new", "a new lamp", "", "5"])
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    asked: list[str] = []
    real = ledger.succeeded_with

    def spy(job: str, pairs: list[tuple[str, str]], *, by: str = "request_hash") -> set[str]:
        asked.append(by)
        return real(job, pairs, by=by)  # type: ignore[arg-type]

    ledger.succeeded_with = spy  # type: ignore[method-assign]
    estimate = estimate_run(ledger, "nightly", ManifestItems(spec), models=spec.models)
    assert estimate.requests == 2 and estimate.skipped == 1_199
    assert asked == ["source_hash", "source_hash", "request_hash"]  # two chunks by source; the 2 rendered, once
    plain = estimate_run(ledger, "nightly", lambda: make_items(spec), models=spec.models)  # any other source
    assert (plain.requests, plain.skipped) == (2, 1_199) and asked.count("source_hash") == 2
    ledger.close()


def test_a_jsonl_catalog_row_without_a_column_hashes_as_one_with_it_null(tmp_path: Path) -> None:
    from batchpipe.input.validate import _tuple_getter

    assert _tuple_getter(())({"a": 1}) == ()
    assert _tuple_getter(("a",))({"a": 1, "b": 2}) == (1,)
    assert _tuple_getter(("b", "a"))({"a": 1, "b": 2}) == (2, 1)
    with pytest.raises(KeyError):
        _tuple_getter(("a", "c"))({"a": 1})
    (tmp_path / "c.jsonl").write_text(
        '{"sku": "a", "name": "lamp", "brand": null}\n{"sku": "b", "name": "lamp"}\n{"sku": "c", "name": "lamp", '
        '"brand": "Acme"}\n',
        encoding="utf-8",
    )
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nname = "j"\n[manifest]\npath = "c.jsonl"\n[item]\nkey = "{sku}"\n'
        'prompt = "Photo of {name}{? by {brand}}"\n[defaults]\nmodel = "gpt-image-2"\n',
        encoding="utf-8",
    )
    spec = JobSpec.load(job, workdir=tmp_path)
    hashes = _hashes(spec)
    mode = _CatalogMode(spec, source_hashes=True)  # the catalog mode of a build that keeps source hashes
    assert hashes["a"] == mode.source_hash({"sku": "a", "name": "lamp"})  # missing reads as null, as rendering does
    assert hashes["b"] == mode.source_hash({"sku": "b", "name": "lamp", "brand": None})
    assert len(set(hashes.values())) == 3


#: What these catalog rows render to under SOURCE_HASH_VERSION 1. A re-run skips a row whose source hash matches
#: without rendering it, so the same row and spec must render the same request for as long as the version stands.
RENDERED_V1 = {
    "sku-0": {"model": "gpt-image-2", "prompt": "Studio photo of lamp 0", "size": "1024x1024", "quality": "low"},
    "sku-1": {
        "model": "gpt-image-2",
        "prompt": "Studio photo of lamp 1 by Acme",
        "size": "1024x1024",
        "quality": "low",
    },
    "sku-x": {
        "model": "gpt-image-2",
        "prompt": "Studio photo of a café lamp by Ac me",
        "size": "1024x1024",
        "quality": "low",
    },
}


def test_a_change_to_what_rows_render_to_comes_with_a_new_source_hash_version(tmp_path: Path) -> None:
    """If this fails, the same catalog rows and spec now render other requests: bump ``SOURCE_HASH_VERSION`` (so
    re-runs render every row again instead of skipping rows built the old way) and pin the new rendering here."""
    from batchpipe.input.validate import SOURCE_HASH_VERSION

    rows = [*_rows(2), [" sku-x ", "  a café\tlamp\n ", " Ac  me ", "1"]]
    spec = JobSpec.load(_catalog(tmp_path, rows), workdir=tmp_path)
    rendered = {i.key: i.body for i in make_items(spec) if isinstance(i, Item)}
    assert (SOURCE_HASH_VERSION, rendered) == (1, RENDERED_V1)
