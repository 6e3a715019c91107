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
