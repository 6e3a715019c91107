"""Job specs: the TOML format, its errors (file, line, field), and the plain-substitution templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpipe.errors import JobSpecError
from batchpipe.input.jobspec import JobSpec, RunSection
from batchpipe.input.templates import Template, TemplateSyntaxError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- templates


def test_template_substitutes_fields_with_spaces_and_escapes() -> None:
    template = Template.parse("{{literal}} {Variant SKU}: {name}}}")
    assert template.fields == ("Variant SKU", "name")
    assert template.render({"Variant SKU": "S-1", "name": "Mug"}) == "{literal} S-1: Mug}"


@pytest.mark.parametrize("value", ["{x}", "{0.__class__}", "{{", "}}", "{name}", "{? {name}}", "%s {!r}"])
def test_values_are_inserted_literally_never_expanded(value: str) -> None:
    template = Template.parse("A {name} B{? [{name}]}")
    assert template.render({"name": value}) == f"A {value} B [{value}]"


@given(st.text())
def test_any_value_renders_verbatim(value: str) -> None:
    assert Template.parse("<{v}>").render({"v": value}) == f"<{value}>"


def test_optional_segment_is_dropped_when_a_field_inside_is_empty() -> None:
    template = Template.parse("Photo of {product}{? by {brand}}.")
    assert template.render({"product": "Mug", "brand": "Acme"}) == "Photo of Mug by Acme."
    assert template.render({"product": "Mug", "brand": ""}) == "Photo of Mug."
    assert template.render({"product": "Mug", "brand": "  "}) == "Photo of Mug."
    assert template.render({"product": "Mug"}) == "Photo of Mug."


def test_render_types() -> None:
    template = Template.parse("{a}|{b}|{c}|{d}")
    assert template.render({"a": 3, "b": 1.5, "c": True, "d": None}) == "3|1.5|true|"
    with pytest.raises(TypeError, match="'a'"):
        template.render({"a": [1]})


@pytest.mark.parametrize(
    ("text", "position"),
    [("a { b", 2), ("a } b", 2), ("{}", 0), ("{a{b}", 0), ("x{? open", 1), ("{? {? x}}", 3)],
)
def test_template_syntax_errors(text: str, position: int) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        Template.parse(text)
    assert info.value.position == position


# ------------------------------------------------------------------------------------------- spec files

CSV = "pid,product_name,brand,Variant SKU\nP1,Mug,Acme,S1\n"

GOOD = """\
[job]
name = "demo"

[manifest]
path = "cat.csv"

[item]
key = "{pid}"
prompt = "Photo of {product_name}{? by {brand}}"

[defaults]
model = "gpt-image-2"
size = "1024x1024"
quality = "low"

[run]
max_attempts = 2
max_requests_per_shard = 100
[run.enqueued_token_budget]
"gpt-image-2" = 1000
"""


def _spec(tmp_path: Path, text: str, csv: str = CSV) -> Path:
    (tmp_path / "cat.csv").write_text(csv)
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def _error(path: Path) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        JobSpec.load(path, workdir=path.parent)
    assert info.value.file == str(path)
    return info.value


def test_load_resolves_paths_and_defaults(tmp_path: Path) -> None:
    spec = JobSpec.load(_spec(tmp_path, GOOD), workdir=tmp_path / "work")
    assert spec.name == "demo"
    assert spec.manifest_path == (tmp_path / "cat.csv").resolve()
    assert spec.manifest_format == "csv"
    assert spec.output_dir == (tmp_path / "work" / "out" / "demo").resolve()
    assert spec.defaults == {"model": "gpt-image-2", "size": "1024x1024", "quality": "low"}
    assert spec.columns == ("pid", "product_name", "brand", "Variant SKU")
    assert spec.metadata_columns == ("pid", "product_name", "brand")
    assert spec.on_duplicate_key == "suffix"
    assert spec.run.max_attempts == 2
    assert spec.run.enqueued_token_budget == {"gpt-image-2": 1000}
    assert spec.run.skip_invalid is False


def test_the_demo_job_loads() -> None:
    spec = JobSpec.load(REPO / "jobs" / "catalog-nightly.toml", workdir=REPO)
    assert spec.name == "catalog-nightly"
    assert spec.defaults["model"] == "gpt-image-2"
    assert spec.manifest_path == (REPO / "jobs" / "data" / "flipkart-products-20k.csv").resolve()
    assert spec.prompt_template is not None
    assert set(spec.prompt_template.fields) == {"product_name", "brand"}


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    error = _error(_spec(tmp_path, GOOD.replace('quality = "low"', "quality = low")))
    assert error.line == 14
    assert "TOML" in error.reason


@pytest.mark.parametrize(
    ("old", "new", "field", "line"),
    [
        ("max_attempts = 2", "max_atempts = 2", "run.max_atempts", 17),
        ("max_attempts = 2", 'max_attempts = "2"', "run.max_attempts", 17),
        ("max_attempts = 2", "max_attempts = 0", "run.max_attempts", 17),
        ('"gpt-image-2" = 1000', '"gpt-image-2" = -1', "run.enqueued_token_budget.gpt-image-2", 20),
        ('name = "demo"', 'name = "../evil"', "job.name", 2),
        ('[job]\nname = "demo"\n', "", "job", None),
        ('path = "cat.csv"', 'path = "cat.csv"\nformat = "xml"', "manifest.format", 6),
        ('size = "1024x1024"', 'size = "2050x2050"', "defaults.size", 13),
        ('quality = "low"', 'quality = "ultra"', "defaults.quality", 14),
        ('"gpt-image-2" = 1000', '"dall-e-3" = 1000', "run.enqueued_token_budget.dall-e-3", 20),
        ('model = "gpt-image-2"', 'model = "gpt-image-9"', "defaults.model", 12),
        ('key = "{pid}"', 'key = "{sku}"', "item.key", 8),
        ('key = "{pid}"', 'key = "{pid"', "item.key", 8),
        ('key = "{pid}"', 'key = "{pid}"\nmetadata = ["nope"]', "item.metadata", 9),
        ('path = "cat.csv"', 'path = "missing.csv"', "manifest.path", 5),
        ('path = "cat.csv"', 'path = "cat.dat"', "manifest.format", 4),  # no such key: its table's line
    ],
)
def test_spec_errors_name_field_and_line(tmp_path: Path, old: str, new: str, field: str, line: int | None) -> None:
    assert old in GOOD
    error = _error(_spec(tmp_path, GOOD.replace(old, new)))
    assert error.field == field
    assert error.line == line


def test_template_attribute_access_is_an_unknown_column_with_a_hint(tmp_path: Path) -> None:
    error = _error(_spec(tmp_path, GOOD.replace("{product_name}", "{product_name.__class__}")))
    assert error.field == "item.prompt"
    assert "{product_name.__class__}" in error.reason
    assert "plain fields only" in error.reason


def test_column_names_with_spaces_are_usable(tmp_path: Path) -> None:
    spec = JobSpec.load(_spec(tmp_path, GOOD.replace("{pid}", "{Variant SKU}")), workdir=tmp_path)
    assert spec.key_template is not None
    assert spec.key_template.fields == ("Variant SKU",)


def test_csv_needs_templates_and_a_model(tmp_path: Path) -> None:
    error = _error(_spec(tmp_path, GOOD.replace('key = "{pid}"\n', "")))
    assert error.field == "item.key"
    error = _error(_spec(tmp_path, GOOD.replace('model = "gpt-image-2"\n', "")))
    assert error.field == "defaults.model"


def test_bad_csv_header_is_a_spec_error(tmp_path: Path) -> None:
    error = _error(_spec(tmp_path, GOOD, csv="pid,pid\n1,2\n"))
    assert error.field == "manifest.path"
    assert "duplicate column" in error.reason


def test_plain_jsonl_spec_and_absolute_output(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text('{"key": "a", "prompt": "x"}\n')
    out = tmp_path / "elsewhere"
    (tmp_path / "job.toml").write_text(
        f'[job]\nname = "p"\n[manifest]\npath = "items.jsonl"\n[output]\ndir = "{out}"\n'
    )
    spec = JobSpec.load(tmp_path / "job.toml")
    assert spec.prompt_template is None
    assert spec.manifest_format == "jsonl"
    assert spec.output_dir == out
    assert spec.defaults == {}


def test_for_manifest(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"key": "a"}\n')
    spec = JobSpec.for_manifest(path, "adhoc", defaults={"model": "gpt-image-2.5-flare"}, workdir=tmp_path)
    assert spec.name == "adhoc"
    assert spec.defaults == {"model": "gpt-image-2.5-flare"}
    assert spec.output_dir == tmp_path / "out" / "adhoc"
    assert spec.run == RunSection()
    with pytest.raises(JobSpecError) as info:
        JobSpec.for_manifest(path, "bad name")
    assert info.value.field == "job.name"
    with pytest.raises(JobSpecError) as info:
        JobSpec.for_manifest(path, "x", defaults={"n": "3"})
    assert info.value.field == "defaults.n"
    with pytest.raises(JobSpecError) as info:
        JobSpec.for_manifest(path, "x", defaults={"model": "gpt-image-2.6-flare", "size": "999x999"})
    assert info.value.field == "defaults.size"
    csv = tmp_path / "c.csv"
    csv.write_text("a\n1\n")
    with pytest.raises(JobSpecError) as info:
        JobSpec.for_manifest(csv, "x")
    assert info.value.field == "manifest.format"


# --------------------------------------------------------------------------------- rendering, field by field


def test_an_optional_segment_stops_at_its_first_blank_field_and_the_first_bad_field_is_named() -> None:
    template = Template.parse("{a}{? [{b}|{c}]}")
    assert template.render({"a": "x", "b": " ", "c": [1]}) == "x"  # c is never read: b is blank
    assert template.render({"a": "x", "b": "y", "c": 0}) == "x [y|0]"
    with pytest.raises(TypeError, match="'c'"):
        template.render({"a": "x", "b": "y", "c": [1]})
    with pytest.raises(TypeError, match="'a'"):
        Template.parse("{a}{b}").render({"a": [1], "b": {}})


def test_blank_fields_outside_optional_segments_are_named_once_each_in_order() -> None:
    template = Template.parse("{b}: {a} and {a}{? by {c}} {b}")
    assert template.empty_fields({"a": "", "b": " ", "c": ""}) == ("b", "a")  # c is inside an optional segment
    assert template.empty_fields({"a": "x", "b": "y"}) == ()


def test_the_first_filter_applies_inside_and_outside_optional_segments() -> None:
    template = Template.parse('{img|first}{? by {brand|first}}{? in {colors|first:","}}')
    values = {"img": " | a.jpg|b.jpg", "brand": "|Acme|Other", "colors": "red, blue"}
    assert template.render(values) == "a.jpg by Acme in red"
    assert template.render({"img": '["x.png", "y.png"]', "brand": " | ", "colors": ","}) == "x.png"


def test_templates_compare_and_hash_by_source() -> None:
    one, two = Template.parse("{a}{? by {b}}"), Template.parse("{a}{? by {b}}")
    assert one == two and hash(one) == hash(two) and one != Template.parse("{a}")
