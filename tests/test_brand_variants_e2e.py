"""Brand variants end to end over real HTTP on the embedded emulator: the shipped job, the upload cache across
runs, and unreachable image URLs reported per item (and retried only when the user asks)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from PIL import Image

from batchpipe.adapters.sqlite_ledger import open_ledger
from batchpipe.cli.main import main
from batchpipe.domain.items import ItemStatus
from batchpipe.domain.records import ItemRow
from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped jobs and their data, with the API key removed from the environment."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("flipkart-*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--log-json", "--log-level", "error", *args], catch_exceptions=False)
    return result.exit_code, result.stderr


def _service_files(workspace: Path, purpose: str) -> list[dict[str, object]]:
    with EmbeddedEmulator(EmulatorConfig(state_dir=workspace / ".batchpipe" / "emulator")) as emulator:
        listed = httpx.get(
            f"{emulator.base_url}/files", params={"purpose": purpose}, headers={"Authorization": "Bearer x"}
        ).json()
    data: list[dict[str, object]] = listed["data"]
    return data


def _latest(workspace: Path, job: str) -> dict[str, ItemRow]:
    ledger = open_ledger(workspace / ".batchpipe")
    try:
        return {row.item_key: row for row in ledger.items(job=job, latest_only=True)}
    finally:
        ledger.close()


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


@pytest.mark.slow
def test_brand_variants_job_on_the_emulator(workspace: Path) -> None:
    code, err = _invoke("run", "jobs/brand-variants.toml", "--limit", "12", "--poll-interval", "0.1")
    assert code == 0, err
    assert "matrix: 20 products x 4 variants = 80 items (2 row(s) folded into their product)" in err
    assert "references: 3 local file(s): 3 uploaded, 0 reused (purpose 'vision')" in err
    rows = _latest(workspace, "brand-variants")
    products = ["ocean-blue-shirt", "classic-varsity-top", "yellow-wool-jumper"]
    variants = ["autumn-en", "autumn-fr", "winter-de", "cutout"]
    assert set(rows) == {f"{p}/{v}" for p in products for v in variants}
    photos = workspace / "jobs" / "data" / "photos"
    for row in rows.values():
        assert row.status == ItemStatus.SUCCEEDED and row.c2pa_state == "trusted", row
        assert row.endpoint == "/v1/images/edits" and row.product_key in products and row.variant in variants
        assert row.item_key == f"{row.product_key}/{row.variant}"
        inputs = orjson.loads(row.inputs_json or "[]")
        photo, logo, palette = inputs[:3]
        assert photo["kind"] == "url" and photo["ref"].startswith("http://127.0.0.1:")  # fetched over HTTP
        assert photo["sha256"] and (photos / photo["ref"].rsplit("/", 1)[1]).is_file()
        assert logo["kind"] == palette["kind"] == "file" and logo["ref"].startswith("file-") and logo["sha256"]
        assert len(inputs) == (4 if row.variant == "autumn-fr" else 3)  # the variant's mask comes last
        assert row.body["images"][0] == {"image_url": photo["ref"]}  # type: ignore[index]
    blue = rows["ocean-blue-shirt/autumn-fr"]
    assert blue.body["mask"]["file_id"] == orjson.loads(blue.inputs_json or "[]")[3]["ref"]  # type: ignore[index]
    expected = {
        "autumn-en": ((1024, 1024), "PNG"),
        "autumn-fr": ((1024, 1536), "PNG"),
        "winter-de": ((1536, 1024), "WEBP"),
    }
    for variant, (size, fmt) in expected.items():
        with Image.open(str(rows[f"ocean-blue-shirt/{variant}"].output_path)) as image:
            assert (image.size, image.format) == (size, fmt)
            centre = image.convert("RGB").getpixel((size[0] // 2, size[1] // 2))
            assert isinstance(centre, tuple) and _near(centre, (48, 99, 180))  # the blue shirt of the reference photo
    with Image.open(str(rows["yellow-wool-jumper/autumn-en"].output_path)) as image:
        centre = image.convert("RGB").getpixel((512, 512))
        assert isinstance(centre, tuple) and _near(centre, (235, 190, 40))  # each item shows its own product
    with Image.open(str(rows["ocean-blue-shirt/cutout"].output_path)) as image:
        # the background is fully transparent wherever no shape or reference lands; which pixels those are depends
        # on the request (its reference URLs carry the mirror's port), so count instead of probing one pixel
        alpha = image.getchannel("A").histogram()
        assert image.mode == "RGBA" and alpha[0] >= 0.3 * image.width * image.height, alpha[0]

    assert len(_service_files(workspace, "vision")) == 3  # logo, palette, mask: once each (photos are mirrored)

    # the nightly re-run: nothing new is uploaded, nothing is rendered twice (the mirror kept its port)
    code, err = _invoke("run", "jobs/brand-variants.toml", "--limit", "12", "--poll-interval", "0.1")
    assert code == 0, err
    assert "references: 3 local file(s): 0 uploaded, 3 reused" in err and "skipped 12 item(s)" in err
    assert len(_service_files(workspace, "vision")) == 3


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _unreachable_job(workspace: Path, name: str, retry_codes: str) -> Path:
    data = workspace / "jobs" / "data"
    (data / "two.csv").write_text(
        "Handle,Title,Image Src\n"
        "shirt,Red Sports Tee,https://burst.shopifycdn.com/photos/womens-red-t-shirt_925x.jpg\n"
        f"ghost,Ghost Chair,http://127.0.0.1:{_closed_port()}/photos/ghost-chair.jpg\n"
    )
    spec = workspace / "jobs" / f"{name}.toml"
    spec.write_text(
        f'[job]\nname = "{name}"\n[manifest]\npath = "data/two.csv"\n'
        '[item]\nkey = "{Handle}/{variant}"\nprompt = "The {Title} on {background}."\n'
        '[matrix]\nproduct = "{Handle}"\n[[matrix.variant]]\nname = "beach"\nbackground = "a beach"\n'
        '[references]\nimages = ["{Image Src}"]\n'
        '[references.mirror]\n"https://burst.shopifycdn.com/photos/" = "data/photos/"\n'
        '[defaults]\nmodel = "gpt-image-2.5-flare"\nsize = "1024x1024"\nquality = "low"\n'
        f"[run]\nmax_attempts = 2\nretry_error_codes = {retry_codes}\n"
    )
    return spec


@pytest.mark.slow
def test_unreachable_image_url_is_reported_per_item_and_retried_only_on_request(workspace: Path) -> None:
    spec = _unreachable_job(workspace, "bv-no-retry", "[]")
    code, err = _invoke("run", str(spec), "--poll-interval", "0.1")
    assert code == 1, err
    rows = _latest(workspace, "bv-no-retry")
    assert rows["shirt/beach"].status == ItemStatus.SUCCEEDED
    ghost = rows["ghost/beach"]
    assert (ghost.status, ghost.error_code, ghost.attempt, ghost.retryable) == ("failed", "invalid_image_url", 1, 0)
    assert "ghost-chair.jpg" in str(ghost.error_message)
    assert ghost.product_key == "ghost" and ghost.variant == "beach"

    # the user asked for invalid_image_url to be resubmitted: a second attempt, then it stays failed
    spec = _unreachable_job(workspace, "bv-retry", '["invalid_image_url"]')
    code, err = _invoke("run", str(spec), "--poll-interval", "0.1")
    assert code == 1, err
    rows = _latest(workspace, "bv-retry")
    assert rows["shirt/beach"].attempt == 1 and rows["shirt/beach"].status == ItemStatus.SUCCEEDED
    assert (rows["ghost/beach"].attempt, rows["ghost/beach"].error_code) == (2, "invalid_image_url")

    # and a failed variant can be retried alone
    code, err = _invoke("retry", "--job", "bv-no-retry", "--status", "failed", "--poll-interval", "0.1")
    assert code == 1, err
    rows = _latest(workspace, "bv-no-retry")
    assert rows["ghost/beach"].attempt == 2 and rows["ghost/beach"].error_code == "invalid_image_url"
    assert rows["shirt/beach"].attempt == 1
    first = ghost
    assert rows["ghost/beach"].inputs_json == first.inputs_json is not None  # the retry keeps its references
    assert rows["ghost/beach"].product_key == "ghost" and rows["ghost/beach"].variant == "beach"


@pytest.mark.slow
def test_retry_of_a_mirrored_variant_serves_the_mirror_again(workspace: Path) -> None:
    spec = _unreachable_job(workspace, "bv-mirror", "[]")
    code, err = _invoke("run", str(spec), "--poll-interval", "0.1")
    assert code == 1, err
    # the mirrored shirt succeeded; ask for it again at another quality: its URL points at the loopback mirror,
    # which `retry` must serve again for the new attempt to fetch its reference photo
    code, err = _invoke(
        "retry", "--job", "bv-mirror", "--status", "succeeded", "--set", "quality=medium", "--poll-interval", "0.1"
    )
    assert code == 0, err
    rows = _latest(workspace, "bv-mirror")
    assert rows["shirt/beach"].attempt == 2 and rows["shirt/beach"].status == ItemStatus.SUCCEEDED
