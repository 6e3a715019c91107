"""Variant matrices: expansion counts, per-variant overrides, located errors, image limits, data URL shard bytes."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from PIL import Image

from batchpipe.cli.main import main
from batchpipe.domain import spec as rules
from batchpipe.domain.items import Item
from batchpipe.domain.problems import Problem
from batchpipe.errors import JobSpecError, ManifestError
from batchpipe.input.jobspec import JobSpec
from batchpipe.input.matrix import MatrixStats
from batchpipe.input.validate import make_items, validate_job
from batchpipe.stages.shard import ShardBuilder


@pytest.fixture(autouse=True)
def _models_live_on_2026_11_01(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the request rules of models that were live on 2026-11-01 (gpt-image-1.5 and
    gpt-image-1-mini take input_fidelity); lifecycle refusals have their own tests (tests/test_models_lineup.py)."""
    monkeypatch.setenv("BATCHPIPE_NOW", "2026-11-01T00:00:00+00:00")


REPO = Path(__file__).resolve().parents[1]

CSV = """\
Handle,Title,Photo,Mask
mug,Red Mug,photos/mug.png,
mug,,photos/other.png,
lamp,Desk Lamp,photos/lamp.jpg,
vase,Blue Vase,https://cdn.example.com/vase.jpg,
"""

SPEC = """\
[job]
name = "bv"
[manifest]
path = "catalog.csv"
[item]
key = "{Handle}/{variant}"
prompt = "The {Title} on {background}.{? Headline '{slogan}' in {font}.}"
[matrix]
product = "{Handle}"
[matrix.vars]
font = "a serif"
[[matrix.variant]]
name = "autumn"
background = "autumn leaves"
slogan = "Fall"
[[matrix.variant]]
name = "banner"
background = "a beach"
slogan = ""
font = "a script"
[matrix.variant.request]
size = "1536x1024"
quality = "medium"
output_format = "webp"
[[matrix.variant]]
name = "cutout"
background = "nothing"
slogan = "Clean"
[matrix.variant.request]
background = "transparent"
[references]
images = ["{Photo}"]
brand_assets = ["brand/logo.png"]
[defaults]
model = "gpt-image-1.5"
size = "1024x1024"
quality = "low"
input_fidelity = "high"
"""


def _csv_spec(spec: str, variants_file: str = "variants.csv") -> str:
    """``spec`` with its [[matrix.variant]] tables replaced by ``variants_file``."""
    head, _, _ = spec.partition("[[matrix.variant]]")
    head = head.replace('product = "{Handle}"', f'product = "{{Handle}}"\nvariants_file = "{variants_file}"')
    return head + spec[spec.index("[references]") :]


def _png(path: Path, size: tuple[int, int] = (40, 50), mode: str = "RGB", fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour: int | tuple[int, ...] = (200, 10, 10, 255) if mode == "RGBA" else 1 if mode == "P" else (200, 10, 10)
    Image.new(mode, size, colour).save(path, fmt)
    return path


def _job(tmp_path: Path, spec: str = SPEC, csv: str = CSV) -> Path:
    (tmp_path / "catalog.csv").write_text(csv)
    _png(tmp_path / "photos" / "mug.png")
    _png(tmp_path / "photos" / "other.png")
    _png(tmp_path / "photos" / "lamp.jpg", fmt="JPEG")
    _png(tmp_path / "brand" / "logo.png", (64, 64), "RGBA")
    (tmp_path / "job.toml").write_text(spec)
    return tmp_path / "job.toml"


def _run(spec: JobSpec, **kwargs: object) -> tuple[list[Item], list[Problem]]:
    items: list[Item] = []
    problems: list[Problem] = []
    for entry in make_items(spec, **kwargs):  # type: ignore[arg-type]
        (items if isinstance(entry, Item) else problems).append(entry)  # type: ignore[arg-type]
    return items, problems


def test_matrix_expands_products_times_variants(tmp_path: Path) -> None:
    spec = JobSpec.load(_job(tmp_path), workdir=tmp_path)
    stats = MatrixStats()
    items, problems = _run(spec, stats=stats)
    assert problems == []
    assert (stats.products, stats.variants, stats.items, stats.folded_rows) == (3, 3, 9, 1)
    assert stats.line() == "matrix: 3 products x 3 variants = 9 items (1 row(s) folded into their product)"
    assert [i.key for i in items[:3]] == ["mug/autumn", "mug/banner", "mug/cutout"]
    assert {(i.product_key, i.variant) for i in items} == {
        (p, v) for p in ("mug", "lamp", "vase") for v in ("autumn", "banner", "cutout")
    }
    by_key = {i.key: i for i in items}
    autumn, banner, cutout = by_key["mug/autumn"], by_key["mug/banner"], by_key["mug/cutout"]
    assert all(i.endpoint == "/v1/images/edits" for i in items)
    assert autumn.body["prompt"] == "The Red Mug on autumn leaves. Headline 'Fall' in a serif."
    assert banner.body["prompt"] == "The Red Mug on a beach."  # empty slogan: the optional segment is dropped
    assert (autumn.body["size"], autumn.body["quality"], autumn.body["input_fidelity"]) == ("1024x1024", "low", "high")
    assert (banner.body["size"], banner.body["quality"], banner.body["output_format"]) == (
        "1536x1024",
        "medium",
        "webp",
    )
    assert cutout.body["background"] == "transparent" and "background" not in autumn.body
    # images: the product photo (first row of the Handle, not the folded row's), then the brand logo
    assert [r.kind for r in autumn.inputs] == ["file", "file"]
    assert len(autumn.body["images"]) == 2  # type: ignore[arg-type]
    vase = by_key["vase/autumn"]
    assert vase.body["images"][0] == {"image_url": "https://cdn.example.com/vase.jpg"}  # type: ignore[index]
    assert vase.inputs[0].kind == "url" and vase.inputs[0].ref == "https://cdn.example.com/vase.jpg"
    assert vase.source.endswith("catalog.csv:5")

    report = validate_job(spec)
    assert report.ok and report.items == 9 and report.matrix is not None and report.matrix.products == 3


def test_variants_from_a_csv_file(tmp_path: Path) -> None:
    (tmp_path / "variants.csv").write_text(
        "name,background,slogan,mask,request.size,request.n\nsq,studio,Hi,,,\ntall,street,Yo,masks/m.png,1024x1536,2\n"
    )
    _png(tmp_path / "masks" / "m.png", (40, 50), "RGBA")
    spec = JobSpec.load(_job(tmp_path, _csv_spec(SPEC)), workdir=tmp_path)
    items, problems = _run(spec)
    assert problems == [] and len(items) == 6
    tall = next(i for i in items if i.key == "mug/tall")
    assert (tall.body["size"], tall.body["n"]) == ("1024x1536", 2)
    assert "mask" in tall.body and tall.inputs[-1].kind == "file" and tall.metadata["reference_mask"]
    assert "mask" not in next(i for i in items if i.key == "mug/sq").body


def test_the_shipped_jobs_validate_with_their_matrix_counts() -> None:
    for name, line in (
        ("brand-variants.toml", "matrix: 20 products x 4 variants = 80 items (2 row(s) folded into their product)"),
        (
            "brand-variants-home.toml",
            "matrix: 20 products x 3 variants = 60 items (1 row(s) folded into their product)",
        ),
    ):
        result = CliRunner().invoke(main, ["validate", str(REPO / "jobs" / name)])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == line


@pytest.mark.parametrize(
    ("edit", "field", "line", "message"),
    [
        (('key = "{Handle}/{variant}"', 'key = "{Handle}"'), "item.key", 6, "must use {variant}"),
        (('slogan = "Clean"\n', ""), "item.prompt", 7, "variant 'cutout'"),
        (('size = "1536x1024"', 'size = "2048x2048"'), "matrix.variant[1].request.size", 22, "Supported values"),
        (('quality = "medium"', "quality = 3"), "matrix.variant[1].request.quality", 23, "must be a string"),
        (('name = "banner"', 'name = "autumn"'), "matrix.variant[1].name", 17, "repeats"),
        (('name = "banner"', 'name = "a/b"'), "matrix.variant[1].name", 17, "name"),
        (('background = "a beach"', "background = 7"), "matrix.variant[1].background", 18, "text"),
        (('"brand/logo.png"', '"brand/nope.png"'), "references.brand_assets[0]", 33, "no such file"),
        (('images = ["{Photo}"]', 'images = ["{Picture}"]'), "references.images", 32, "no manifest column"),
        (('font = "a serif"', 'Title = "x"'), "matrix.vars.Title", 11, "manifest column"),
        (
            ('product = "{Handle}"', 'product = "{Handle}"\nvariants_file = "v.csv"'),
            "matrix.variants_file",
            10,
            "exactly one",
        ),
        (('input_fidelity = "high"', 'input_fidelity = "max"'), "defaults.input_fidelity", 38, "Supported values"),
    ],
)
def test_bad_matrix_specs_name_file_line_and_field(
    tmp_path: Path, edit: tuple[str, str], field: str, line: int, message: str
) -> None:
    assert edit[0] in SPEC
    path = _job(tmp_path, SPEC.replace(edit[0], edit[1], 1))
    with pytest.raises(JobSpecError) as caught:
        JobSpec.load(path)
    error = caught.value
    assert (error.field, error.line, error.file) == (field, line, str(path)), str(error)
    assert message in error.reason


def test_bad_variant_mask_is_refused_at_load(tmp_path: Path) -> None:
    _png(tmp_path / "masks" / "rgb.png", (40, 50), "RGB")
    spec = SPEC.replace('slogan = "Fall"\n', 'slogan = "Fall"\nmask = "masks/rgb.png"\n')
    with pytest.raises(JobSpecError) as caught:
        JobSpec.load(_job(tmp_path, spec))
    assert caught.value.field == "matrix.variant[0].mask" and caught.value.line == 16
    assert "alpha channel" in caught.value.reason
    (tmp_path / "variants.csv").write_text("name,background,slogan,mask\nv1,sea,Hi,masks/rgb.png\n")
    with pytest.raises(ManifestError) as csv_caught:
        JobSpec.load(_job(tmp_path, _csv_spec(SPEC)))
    assert (csv_caught.value.file, csv_caught.value.line, csv_caught.value.field) == (
        str(tmp_path / "variants.csv"),
        2,
        "mask",
    )


def test_row_level_reference_problems_name_the_row_and_column(tmp_path: Path) -> None:
    csv = CSV.replace("photos/lamp.jpg", "photos/lamp.gif").replace(
        "mug,Red Mug,photos/mug.png,", "mug,Red Mug,photos/mug.png,masks/small.png"
    )
    spec_text = SPEC.replace('images = ["{Photo}"]', 'images = ["{Photo}"]\nmask = "{Mask}"')
    path = _job(tmp_path, spec_text, csv)
    _png(tmp_path / "photos" / "lamp.gif", fmt="GIF", mode="P")
    _png(tmp_path / "masks" / "small.png", (20, 20), "RGBA")
    items, problems = _run(JobSpec.load(path))
    located = {(p.line, p.field) for p in problems}
    assert located == {(2, "mask"), (4, "Photo")}, problems
    gif = next(p for p in problems if p.field == "Photo")
    assert "format GIF is not accepted" in gif.message and gif.file == str(tmp_path / "catalog.csv")
    size = next(p for p in problems if p.field == "mask")
    assert "mask 20x20" in size.message and "40x50" in size.message
    assert [i.product_key for i in items] == ["vase"] * 3


def test_more_than_16_images_is_a_problem_before_spending(tmp_path: Path) -> None:
    assets = [f"brand/a{i}.png" for i in range(15)]
    for asset in assets:
        _png(tmp_path / asset, (8, 8))
    spec_text = SPEC.replace('brand_assets = ["brand/logo.png"]', f"brand_assets = {orjson.dumps(assets).decode()}")
    spec_text = spec_text.replace('slogan = "Fall"\n', 'slogan = "Fall"\nimages = ["brand/logo.png"]\n')
    items, problems = _run(JobSpec.load(_job(tmp_path, spec_text)))
    assert len(items) == 6  # banner and cutout: 1 + 15 = 16 images
    assert {(p.field, p.key) for p in problems} == {("images", f"{h}/autumn") for h in ("mug", "lamp", "vase")}
    assert "17 images" in problems[0].message and f"at most {rules.MAX_EDIT_IMAGES}" in problems[0].message
    too_many = SPEC.replace(
        'brand_assets = ["brand/logo.png"]', f"brand_assets = {orjson.dumps([*assets, 'brand/logo.png']).decode()}"
    )
    with pytest.raises(JobSpecError, match="leave no room"):
        JobSpec.load(_job(tmp_path, too_many))


def test_bad_mask_run_exits_2_with_file_line_field_and_submits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = CSV.replace("mug,Red Mug,photos/mug.png,", "mug,Red Mug,photos/mug.png,photos/lamp.jpg")
    path = _job(tmp_path, SPEC.replace('images = ["{Photo}"]', 'images = ["{Photo}"]\nmask = "{Mask}"'), csv)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    workdir = tmp_path / "work"
    result = CliRunner().invoke(main, ["--log-level", "error", "run", str(path), "--workdir", str(workdir)])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'catalog.csv'}:2: field 'Mask': mask:" in result.stderr
    assert "a mask must be a PNG with an alpha channel, not JPEG" in result.stderr
    assert "matrix: 3 products x 3 variants = 9 items (1 row(s) folded into their product; 6 valid)" in result.stderr
    from batchpipe.adapters.sqlite_ledger import open_ledger

    ledger = open_ledger(workdir)
    assert ledger.files() == [] and ledger.batches() == [] and ledger.count_items() == {}
    ledger.close()


# --------------------------------------------------------------------------------------------- data URLs


def _data_url_spec(tmp_path: Path, max_shard_bytes: int) -> JobSpec:
    spec_text = SPEC.replace("[references]", '[references]\nlocal_files = "data_url"')
    spec_text += f"[run]\nmax_shard_bytes = {max_shard_bytes}\n"
    path = _job(tmp_path, spec_text)
    noise = Image.frombytes("RGB", (128, 128), random.Random(7).randbytes(128 * 128 * 3))  # incompressible
    noise.save(tmp_path / "photos" / "mug.png")
    return JobSpec.load(path)


def _line_size(custom_id: str, item: Item) -> int:
    return len(orjson.dumps({"custom_id": custom_id, "method": "POST", "url": item.endpoint, "body": item.body})) + 1


async def _build(tmp_path: Path, items: list[Item], max_bytes: int) -> list[tuple[int, int]]:
    builder = ShardBuilder(tmp_path / "shards", prefix="t", max_bytes=max_bytes)
    for index, item in enumerate(items):
        await builder.add(f"bp-{index:020d}-a1", item)
    return [(s.requests, s.bytes) for s in await builder.close()]


def test_data_urls_count_toward_the_shard_byte_limit_exactly(tmp_path: Path) -> None:
    spec = _data_url_spec(tmp_path, 1024 * 1024)
    items, problems = _run(spec)
    assert problems == []
    mug = [i for i in items if i.product_key == "mug" and i.body["model"] == "gpt-image-1.5"]
    assert all(i.inputs[0].kind == "data" for i in mug)
    url = mug[0].body["images"][0]["image_url"]  # type: ignore[index]
    assert base64.b64decode(url.partition(",")[2]) == (tmp_path / "photos" / "mug.png").read_bytes()
    same = [i for i in mug if i.variant == "autumn"] * 3  # identical lines (one custom_id each)
    sizes = [_line_size(f"bp-{n:020d}-a1", item) for n, item in enumerate(same)]
    exact = sizes[0] + sizes[1]
    assert asyncio.run(_build(tmp_path / "a", same, exact)) == [(2, exact), (1, sizes[2])]
    assert asyncio.run(_build(tmp_path / "b", same, exact - 1)) == [(1, sizes[0]), (1, sizes[1]), (1, sizes[2])]
    for shard in (tmp_path / "a" / "shards").glob("*.jsonl"):
        assert shard.stat().st_size <= exact


def test_a_line_over_the_shard_limit_is_refused_at_validation(tmp_path: Path) -> None:
    spec = _data_url_spec(tmp_path, 2048)  # the mug's data URL alone is ~70 KB
    items, problems = _run(spec)
    over = [p for p in problems if p.field == "images"]
    assert {p.key for p in over} == {"mug/autumn", "mug/banner", "mug/cutout"}  # the lamp's tiny JPEG fits
    assert all("over the 2,048-byte shard limit" in p.message and p.line == 2 for p in over)
    assert len(problems) == 3 and sorted({i.product_key for i in items}) == ["lamp", "vase"]


def test_the_real_200_mb_limit_holds_in_the_builder_arithmetic(tmp_path: Path) -> None:
    """Ten 20,000,000-byte lines fill a shard to exactly spec.MAX_BATCH_FILE_BYTES; the 11th starts a new one.

    Lines are built one at a time (about 20 MB each in memory, never 200 MB)."""
    custom_id = "bp-00000000000000000000-a1"
    empty = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/images/edits",
        "body": {"model": "gpt-image-1.5", "prompt": "x", "images": [{"image_url": "data:image/png;base64,"}]},
    }
    pad = 20_000_000 - (len(orjson.dumps(empty)) + 1)

    async def build() -> list[tuple[int, int]]:
        builder = ShardBuilder(tmp_path / "shards", prefix="big")
        assert builder.max_bytes == rules.MAX_BATCH_FILE_BYTES == 200_000_000
        for n in range(11):
            body: dict[str, object] = {
                "model": "gpt-image-1.5",
                "prompt": "x",
                "images": [{"image_url": "data:image/png;base64," + "A" * pad}],
            }
            await builder.add(f"bp-{n:020d}-a1", Item(key=f"k{n}", endpoint="/v1/images/edits", body=body))
        return [(s.requests, s.bytes) for s in await builder.close()]

    assert asyncio.run(build()) == [(10, 200_000_000), (1, 20_000_000)]
    sizes = sorted(p.stat().st_size for p in (tmp_path / "shards").glob("*.jsonl"))
    assert sizes == [20_000_000, 200_000_000]


def test_a_semicolon_catalog_for_a_matrix_job_says_which_delimiter_to_set(tmp_path: Path) -> None:
    """The product-level template is checked first in a [matrix] job: its error carries the delimiter hint too."""
    path = _job(tmp_path, csv=CSV.replace(",", ";"))
    with pytest.raises(JobSpecError) as refused:
        JobSpec.load(path)
    assert refused.value.field == "matrix.product", refused.value
    assert "template field '{Handle}' names no manifest column" in str(refused.value)
    assert 'if the file is semicolon-separated, set [manifest] delimiter = ";"' in str(refused.value)
    path.write_text(SPEC.replace('path = "catalog.csv"', 'path = "catalog.csv"\ndelimiter = ";"'))
    assert JobSpec.load(path).matrix is not None
