"""Real catalog shapes: Shopify variant rows with an empty Title, and several photo URLs in one column."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpipe.cli.main import main
from batchpipe.domain.items import Item
from batchpipe.domain.problems import Problem
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.templates import Template, first_value
from batchpipe.input.validate import make_items

#: The shipped, unchanged copies of ../shared/data's real catalogs (see jobs/data/README.md for origin and licence)
DATA = Path(__file__).resolve().parents[1] / "jobs" / "data"


def _spec(tmp_path: Path, manifest: str, prompt: str, *, key: str = "{Handle}", extra: str = "") -> Path:
    path = tmp_path / "job.toml"
    path.write_text(
        f"""[job]
name = "shapes"
[manifest]
path = "{DATA / manifest}"
[item]
key = "{key}"
prompt = "{prompt}"
{extra}
[defaults]
model = "gpt-image-2"
quality = "low"
""",
        encoding="utf-8",
    )
    return path


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-level", "warning", *args], catch_exceptions=False)
    return result.exit_code, result.stdout + result.stderr


SHOPIFY_PROMPT = "Studio product photo of {Title}, a {Option1 Value} piece by {Vendor}"


def test_empty_title_rows_of_a_shopify_export_are_located_problems(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "shopify-apparel.csv", SHOPIFY_PROMPT)
    code, out = _invoke("validate", str(spec))
    assert code == 2, out
    located = [line for line in out.splitlines() if "uses empty column(s) 'Title'" in line]
    # the variant rows of classic-varsity-top (lines 4 and 5 of the file) have no Title
    assert [line.split(":")[1] for line in located] == ["4", "5"]
    assert located[0].startswith(f"{DATA / 'shopify-apparel.csv'}:4: field 'prompt':")
    assert "'Studio product photo of , a Medium piece by'" in located[0] and 'on_empty_field = \\"skip\\"' not in out
    assert 'on_empty_field = "skip"' in located[0]

    loaded = JobSpec.load(spec)
    results = list(make_items(loaded))
    assert sum(isinstance(r, Problem) for r in results) == 2
    assert not any(isinstance(r, Item) and "of ," in str(r.body["prompt"]) for r in results)


@pytest.mark.parametrize(("policy", "items"), [("skip", 20), ("render", 22)])
def test_on_empty_field_skips_or_renders(tmp_path: Path, policy: str, items: int) -> None:
    spec = _spec(tmp_path, "shopify-apparel.csv", SHOPIFY_PROMPT, extra=f'on_empty_field = "{policy}"')
    warnings: list[Problem] = []
    results = list(make_items(JobSpec.load(spec), on_warning=warnings.append))
    assert sum(isinstance(r, Item) for r in results) == items
    assert not any(isinstance(r, Problem) for r in results)
    skipped = [w for w in warnings if "row skipped" in w.message]
    assert len(skipped) == (2 if policy == "skip" else 0)
    code, out = _invoke("validate", str(spec))
    assert code == 0, out


def test_an_optional_segment_is_not_an_empty_field(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "shopify-home-and-garden.csv", "Studio product photo{? of {Title}}{? by {Vendor}}")
    results = list(make_items(JobSpec.load(spec)))
    assert all(isinstance(r, Item) for r in results) and len(results) == 21


def test_first_of_several_photo_urls(tmp_path: Path) -> None:
    # Flipkart's detailed export keeps a JSON list of photo URLs in `image`
    spec = _spec(tmp_path, "flipkart-products-48-detailed.csv", "{product_name}; reference {image|first}", key="{pid}")
    items = [r for r in make_items(JobSpec.load(spec)) if isinstance(r, Item)]
    assert len(items) == 48
    prompt = str(items[0].body["prompt"])
    assert prompt.endswith(
        "reference http://img5a.flixcart.com/image/short/u/4/a/altht-3p-21-alisha-38-original-imaeh2d5vm5zbtgg.jpeg"
    )


@pytest.mark.parametrize(
    ("value", "separator", "expected"),
    [
        ("a.jpg|b.jpg", "|", "a.jpg"),
        ("  | b.jpg | c.jpg", "|", "b.jpg"),
        ('["http://x/1.jpg", "http://x/2.jpg"]', "|", "http://x/1.jpg"),
        ("a.jpg, b.jpg", ",", "a.jpg"),
        ("", "|", ""),
        ("[not json", "|", "[not json"),
    ],
)
def test_first_value(value: str, separator: str, expected: str) -> None:
    assert first_value(value, separator) == expected


def test_the_first_filter_in_templates() -> None:
    template = Template.parse('{Image Src|first} {urls|first:","} {a|b}')
    assert template.fields == ("Image Src", "urls", "a|b")  # a name without the filter is still a column name
    assert template.render({"Image Src": "p1.png|p2.png", "urls": "u1,u2", "a|b": "x"}) == "p1.png u1 x"
    assert template.empty_fields({"Image Src": " | ", "urls": "u", "a|b": ""}) == ("Image Src", "a|b")


def _european_export(tmp_path: Path) -> Path:
    """The real Shopify apparel export as a European spreadsheet saves it: ``;``-separated, Windows-1252 text
    (the Vendor of the first product gets an accented letter so the encoding matters)."""
    import csv
    import io

    with open(DATA / "shopify-apparel.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    vendor = rows[0].index("Vendor")
    rows[1][vendor] = "Maison Élan"
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\r\n").writerows(rows)
    path = tmp_path / "shopify-eu.csv"
    path.write_bytes(out.getvalue().encode("cp1252", errors="replace"))
    return path


def _eu_spec(tmp_path: Path, manifest: Path, options: str) -> Path:
    path = tmp_path / "eu.toml"
    path.write_text(
        f"""[job]
name = "eu"
[manifest]
path = "{manifest}"
{options}
[item]
key = "{{Handle}}"
prompt = "Studio product photo of {{Title}}{{? by {{Vendor}}}}"
on_empty_field = "skip"
[defaults]
model = "gpt-image-2"
quality = "low"
""",
        encoding="utf-8",
    )
    return path


def test_a_semicolon_separated_cp1252_export_reads_with_delimiter_and_encoding(tmp_path: Path) -> None:
    manifest = _european_export(tmp_path)
    spec = JobSpec.load(_eu_spec(tmp_path, manifest, 'delimiter = ";"\nencoding = "cp1252"'))
    assert (spec.csv_options.delimiter, spec.csv_options.encoding) == (";", "cp1252")
    assert "Vendor" in (spec.columns or ())
    entries = list(make_items(spec, on_warning=lambda _p: None))
    items = [e for e in entries if isinstance(e, Item)]
    assert not [e for e in entries if isinstance(e, Problem)]
    assert items[0].body["prompt"] == "Studio product photo of Ocean Blue Shirt by Maison Élan"
    assert len(items) == len({i.key for i in items}) > 5

    code, out = _invoke("validate", str(tmp_path / "eu.toml"))
    assert code == 0, out


def test_the_same_export_without_the_options_says_what_to_set(tmp_path: Path) -> None:
    manifest = _european_export(tmp_path)
    # the default (comma, UTF-8): the header is one column, the row's cp1252 byte is not UTF-8, and the
    # problem says which option to set
    code, out = _invoke("validate", str(_eu_spec(tmp_path, manifest, 'delimiter = ";"')))
    assert code == 2, out
    assert f"{manifest}:2:" in out and "not valid UTF-8: byte 0xc9" in out and "[manifest] encoding" in out


def test_a_semicolon_export_read_with_commas_says_which_delimiter_to_set(tmp_path: Path) -> None:
    manifest = _european_export(tmp_path)
    code, out = _invoke("validate", str(_eu_spec(tmp_path, manifest, 'encoding = "cp1252"')))
    assert code == 2, out
    assert "field 'item.key'" in out and "template field '{Handle}' names no manifest column" in out, out
    assert 'if the file is semicolon-separated, set [manifest] delimiter = ";"' in out, out


def _one_file_spec(tmp_path: Path, header: str, row: str, *, key: str = "{sku}", options: str = "") -> Path:
    (tmp_path / "cat.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    path = tmp_path / "one.toml"
    path.write_text(
        f'[job]\nname = "one"\n[manifest]\npath = "cat.csv"\n{options}\n[item]\nkey = "{key}"\n'
        'prompt = "Photo of {title}"\n[defaults]\nmodel = "gpt-image-2"\nquality = "low"\n',
        encoding="utf-8",
    )
    return path


def test_a_tab_separated_file_gets_the_tab_hint_and_reads_once_it_is_set(tmp_path: Path) -> None:
    code, out = _invoke("validate", str(_one_file_spec(tmp_path, "sku\ttitle", "a1\tMug")))
    assert code == 2 and 'if the file is tab-separated, set [manifest] delimiter = "\\t"' in out, out
    code, out = _invoke("validate", str(_one_file_spec(tmp_path, "sku\ttitle", "a1\tMug", options='delimiter = "\\t"')))
    assert code == 0 and "items=1" in out, out


@pytest.mark.parametrize(
    ("header", "suggested"),
    [("SKU,title", "'SKU'"), (" sku,title", "' sku'")],
)
def test_a_column_spelt_otherwise_is_suggested(tmp_path: Path, header: str, suggested: str) -> None:
    code, out = _invoke("validate", str(_one_file_spec(tmp_path, header, "a1,Mug")))
    assert code == 2 and f"(did you mean {suggested}? column names are matched exactly" in out, out


def test_a_column_that_is_simply_missing_gets_no_guess(tmp_path: Path) -> None:
    code, out = _invoke("validate", str(_one_file_spec(tmp_path, "id,title", "a1,Mug")))
    assert code == 2 and "template field '{sku}' names no manifest column; columns: 'id', 'title'" in out, out
    code, out = _invoke("validate", str(_one_file_spec(tmp_path, "skutitle", "a1")))  # one column, no separator
    assert code == 2 and "names no manifest column; columns: 'skutitle'" in out, out


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ('delimiter = ";;"', "manifest.delimiter", "not a single character"),
        ("delimiter = '\"'", "manifest.delimiter", "not a single character"),
        ('encoding = "klingon"', "manifest.encoding", "not an encoding Python knows"),
        ('encoding = "utf-16"', "manifest.encoding", "not ASCII-compatible"),
    ],
)
def test_bad_csv_options_are_located_spec_errors(tmp_path: Path, options: str, field: str, words: str) -> None:
    spec = _eu_spec(tmp_path, _european_export(tmp_path), options)
    code, out = _invoke("validate", str(spec))
    assert code == 2, out
    assert f"{spec}:5: field '{field}':" in out and words in out, out


def test_csv_options_on_a_jsonl_manifest_are_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "items.jsonl"
    manifest.write_text('{"key": "a", "prompt": "a red mug"}\n', encoding="utf-8")
    spec = tmp_path / "j.toml"
    spec.write_text(
        f'[job]\nname = "j"\n[manifest]\npath = "{manifest}"\nencoding = "cp1252"\n[defaults]\nmodel = "gpt-image-2"\n',
        encoding="utf-8",
    )
    code, out = _invoke("validate", str(spec))
    assert code == 2 and "field 'manifest.encoding'" in out and "applies to CSV manifests" in out, out


def test_skip_if_empty_filters_the_variant_rows_of_a_shopify_export(tmp_path: Path) -> None:
    """Rows whose named column is blank (Shopify's variant rows leave Title and Image Src empty) are skipped with
    a located warning, whatever the template uses; the product rows become items."""
    only_with_photo = 'skip_if_empty = ["Image Src"]'
    spec = _spec(tmp_path, "shopify-apparel.csv", "Studio product photo of {Title}", extra=only_with_photo)
    warnings: list[Problem] = []
    entries = list(make_items(JobSpec.load(spec), on_warning=warnings.append))
    items = [e for e in entries if isinstance(e, Item)]
    assert not [e for e in entries if isinstance(e, Problem)]
    skipped = [w for w in warnings if "skip_if_empty" in w.message]
    assert skipped and all(w.field == "Image Src" and w.line for w in skipped)
    assert len(items) + len(skipped) == 22  # every data row of the file is an item or a skipped row
    assert all(item.body["prompt"] != "Studio product photo of" for item in items)

    code, out = _invoke("validate", str(spec))
    assert code == 0, out
    assert f"{DATA / 'shopify-apparel.csv'}:4: field 'Image Src': warning: column 'Image Src' is empty" in out


def test_skip_if_empty_names_a_real_column(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "shopify-apparel.csv", "Photo of {Title}", extra='skip_if_empty = ["Image"]')
    code, out = _invoke("validate", str(spec))
    assert code == 2 and "field 'item.skip_if_empty'" in out and "names no manifest column 'Image'" in out, out
