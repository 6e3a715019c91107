"""`batchpipe report`: the HTML contact sheet on a real emulator run, and its size and speed at 20,000 items."""

from __future__ import annotations

import csv
import re
import shutil
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchpipe.adapters.sqlite_ledger import open_ledger
from batchpipe.cli.main import main
from batchpipe.domain.items import ItemStatus
from batchpipe.emulator.config import EmulatorConfig, FaultConfig
from batchpipe.runtime.report import c2pa_badge, write_report
from batchpipe.runtime.wiring import run_job


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--log-json", "--log-level", "warning", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _data(report_dir: Path) -> dict[str, object]:
    text = (report_dir / "items.js").read_text(encoding="utf-8")
    parsed: dict[str, object] = orjson.loads(text.removeprefix("window.BP_DATA = ").rstrip().rstrip(";"))
    return parsed


@pytest.fixture(scope="module")
def emulator_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 items on the embedded emulator: two blocked by moderation, the first batch expired mid-way (attempt 2s)."""
    tmp = tmp_path_factory.mktemp("report")
    lines = []
    for i in range(12):
        prompt = f"Product shot number {i} of a blue teapot" + (" EMULATOR_BLOCK" if i in (3, 7) else "")
        lines.append(orjson.dumps({"key": f"sku-{i}", "prompt": prompt, "model": "gpt-image-2", "quality": "low"}))
    manifest = tmp / "m.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    workdir = tmp / "w"
    config = EmulatorConfig(
        state_dir=workdir / "emulator", faults=FaultConfig(expire_after_lines=5, expire_first_n_batches=1)
    )
    code = run_job(
        job_spec=None, manifest=manifest, job_name="tea", api_label="emulator", base_url=None, environ={},
        workdir=workdir, poll_interval_s=0.05, echo=lambda _: None, emulator_config=config, trust="emulator",
    )  # fmt: skip
    assert code == 1
    return workdir


@pytest.mark.slow
def test_report_of_an_emulator_run(emulator_run: Path) -> None:
    workdir = emulator_run
    code, out, err = _invoke("report", "--workdir", str(workdir))
    assert code == 0, err
    index = Path(out.strip())
    assert index.name == "index.html" and index.parent.parent == workdir / "reports"
    assert "thumbnails: 10 made, 0 reused" in err
    page = index.read_text(encoding="utf-8")
    assert "data:image" not in page and "http://" not in page and "https://" not in page  # offline, nothing inlined
    assert "moderation_blocked</code> × 2" in page
    batches = re.findall(r"<td>(batch_[^<]+)</td><td>[^<]*</td><td>(\w+)</td><td>(\d+)/(\d+)</td>", page)
    assert len(batches) == 2 and sum(int(n) for _, _, n, _ in batches) == 10  # per batch: N of M items succeeded
    assert re.search(r"estimated <b>\$[0-9.]+</b> for 12 current request\(s\) · actual <b>\$[0-9.]+</b>", page)

    data = _data(index.parent)
    tables = data["tables"]
    assert isinstance(tables, dict)
    items = data["items"]
    assert isinstance(items, list)
    current = [it for it in items if tables["status"][it[2]] != "superseded"]
    assert len(current) == 12
    for it in current:
        status = tables["status"][it[2]]
        if status == "succeeded":
            thumb = index.parent / tables["dir"][it[9]] / f"{it[10]}.webp"
            from PIL import Image

            with Image.open(thumb) as image:
                assert max(image.size) <= 256
            assert thumb.stat().st_size < 40_000
            full = (index.parent / it[11]).resolve()
            assert full.is_file() and full.suffix == ".png"
            assert tables["c2pa"][it[3]] == "trusted"
            assert tables["issuer"][it[4]] and tables["generator"][it[5]]
        else:
            assert tables["code"][it[7]] == "moderation_blocked" and it[10] == ""
        record_page = index.parent / "records" / f"{it[12]:04d}.html"
        assert f'id="{it[0]}"' in record_page.read_text(encoding="utf-8")

    with (index.parent / "items.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(items)
    assert all(r["prompt"].startswith("Product shot") for r in rows)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["updated_at"]) for r in rows)
    assert len((index.parent / "items.jsonl").read_text().splitlines()) == len(items)

    # written again into the same folder: every thumbnail is reused; --job shows each item once
    code, _, err = _invoke("report", "--workdir", str(workdir))
    assert code == 0 and "thumbnails: 0 made, 10 reused" in err
    code, out, err = _invoke("report", "--workdir", str(workdir), "--job", "tea", "--output", str(workdir / "r2"))
    assert code == 0, err
    assert len(_data(Path(out.strip()).parent)["items"]) == 12  # type: ignore[arg-type]
    code, _, err = _invoke("report", "--workdir", str(workdir), "--run", "nope")
    assert code == 2 and "no run 'nope'" in err


def test_c2pa_badge_reads_one_image_or_the_first_of_several() -> None:
    one = orjson.dumps({"state": "trusted", "issuer": "OpenAI", "claim_generator": "ChatGPT"}).decode()
    assert c2pa_badge(one) == ("OpenAI", "ChatGPT")
    many = orjson.dumps([{"c2pa": {"issuer": "A", "claim_generator": "G"}}, {"c2pa": {}}]).decode()
    assert c2pa_badge(many) == ("A", "G")
    assert c2pa_badge(None) == (None, None) and c2pa_badge("not json") == (None, None)


@pytest.mark.slow
def test_report_at_20000_items_stays_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """20,000 synthetic ledger rows (a few hundred distinct images, the rest failures): size and time printed."""
    from PIL import Image

    images = tmp_path / "img"
    images.mkdir()
    paths = []
    for i in range(200):
        path = images / f"{i}.png"
        Image.new("RGB", (1024, 1024), (i, 100, 200 - i // 2)).save(path)
        paths.append(path)
    ledger = open_ledger(tmp_path / "w")
    run_id, _ = ledger.open_run("big", "hash", "emulator")
    rows = []
    for i in range(20_000):
        body = {"prompt": f"Studio product photo of item {i}", "model": "gpt-image-2", "quality": "low"}
        rows.append(
            {
                "custom_id": f"bp-{i:06d}-a1", "job": "big", "item_key": f"item-{i}", "attempt": 1, "run_id": run_id,
                "endpoint": "/v1/images/generations", "model": "gpt-image-2", "request_hash": f"h{i}",
                "body_json": orjson.dumps(body).decode(), "metadata_json": "{}", "source": f"m.jsonl:{i + 1}",
                "input_tokens_est": 10, "status": "pending", "variant": ["hero", "banner", "square"][i % 3],
            }
        )  # fmt: skip
    ledger.insert_items(rows)
    ids = [str(r["custom_id"]) for r in rows]
    ledger.transition_items(ids, ItemStatus.SUBMITTED)
    ok, bad = ids[:19_000], ids[19_000:]
    c2pa = orjson.dumps({"state": "trusted", "issuer": "OpenAI", "claim_generator": "gpt-image"}).decode()
    with ledger.transaction():
        for n, cid in enumerate(ok):
            path = paths[n % len(paths)]
            ledger.transition_items(
                [cid], ItemStatus.SUCCEEDED, fields={
                    "output_uri": path.as_uri(), "sha256": f"{n % len(paths):064x}", "c2pa_state": "trusted",
                    "c2pa_json": c2pa, "cost_usd": 0.0031,
                },
            )  # fmt: skip
    ledger.transition_items(
        bad, ItemStatus.FAILED, fields={"error_code": "moderation_blocked", "error_message": "blocked", "retryable": 0}
    )
    start = time.monotonic()
    result = write_report(ledger, tmp_path / "report")
    seconds = time.monotonic() - start
    ledger.close()
    js = (tmp_path / "report" / "items.js").stat().st_size
    with capsys.disabled():
        print(
            f"\nreport of 20,000 items: {seconds:.1f} s, {result.total_bytes / 1e6:.1f} MB in all, items.js "
            f"{js / 1e6:.2f} MB, index.html {result.index.stat().st_size / 1e3:.1f} kB, {result.thumbs_made} thumbnails"
        )
    assert result.items == 20_000 and result.thumbs_made == 200
    assert len(list((tmp_path / "report" / "records").glob("*.html"))) == 40
    assert result.index.stat().st_size < 100_000  # the page itself is small; the data block is loaded beside it
    assert js < 4_000_000


def _chromium() -> str | None:

    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no Chromium (`make browser` installs it as root)")
def test_report_in_headless_chromium(emulator_run: Path, tmp_path: Path) -> None:
    """The page loads in a real browser, its script renders the cards and thumbnails, and the filters work."""
    import subprocess

    code, out, err = _invoke("report", "--workdir", str(emulator_run), "--output", str(tmp_path / "r"))
    assert code == 0, err
    index = Path(out.strip())

    def dom(fragment: str) -> str:
        done = subprocess.run(
            [_chromium() or "", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
             "--dump-dom", index.as_uri() + fragment],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return done.stdout

    page = dom("")
    assert "12 of 19 item(s)" in page  # superseded attempts hidden by default
    assert page.count('<div class="card">') == 12
    assert page.count('<img loading="lazy"') == 10 and ".webp" in page
    blocked = dom("#code=moderation_blocked")
    assert "2 of 19 item(s)" in blocked and blocked.count('<div class="card">') == 2
    assert "sku-3" in blocked and "sku-7" in blocked
    assert "10 of 19 item(s)" in dom("#c2pa=trusted")
    assert "7 of 19 item(s)" in dom("#status=superseded")
    shot = tmp_path / "report.png"
    subprocess.run(
        [_chromium() or "", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
         "--virtual-time-budget=3000", f"--screenshot={shot}", index.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 50_000  # thumbnails drawn, not an empty page


@pytest.mark.slow
def test_item_history(emulator_run: Path) -> None:
    """`batchpipe item KEY`: every attempt with its events, error code and message, C2PA state, times in UTC."""
    code, out, err = _invoke("item", "sku-7", "--workdir", str(emulator_run), "--json")
    assert code == 0, err
    history = orjson.loads(out)
    assert history["job"] == "tea" and history["key"] == "sku-7"
    last = history["attempts"][-1]
    assert last["status"] == "failed" and last["error_code"] == "moderation_blocked" and last["retryable"] is False
    assert last["error_message"] and "EMULATOR_BLOCK" in last["prompt"]
    assert [e["to_status"] for e in last["events"]][-2:] == ["submitted", "failed"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["at"]) for e in last["events"])

    # an item that expired with the first batch and succeeded as attempt 2: both attempts, linked
    for key in (f"sku-{i}" for i in range(12)):
        code, out, _ = _invoke("item", key, "--workdir", str(emulator_run), "--json")
        attempts = orjson.loads(out)["attempts"]
        if len(attempts) == 2:
            break
    first, second = attempts
    assert first["status"] == "superseded" and first["error_code"] == "batch_expired"
    assert second["previous_custom_id"] == first["custom_id"] and second["status"] == "succeeded"
    assert second["c2pa_state"] == "trusted" and second["c2pa_issuer"] and Path(second["output_path"]).is_file()

    code, out, err = _invoke("show", key, "--workdir", str(emulator_run))  # the text form, under its other name
    assert code == 0, err
    assert f"item {key} of job tea: 2 attempt(s)" in out
    assert "batch_expired" in out and "c2pa_state:" in out and "-> succeeded" in out
    code, _, err = _invoke("item", "nope", "--workdir", str(emulator_run))
    assert code == 2 and "no item 'nope'" in err


@pytest.mark.slow
def test_ledger_verify_reads_back_every_local_image(emulator_run: Path) -> None:
    """`ledger verify` on a local run: every succeeded item's file matches its sha256 and size and is trusted
    again; with one file changed and one removed it names both and exits 1."""
    code, out, err = _invoke("ledger", "verify", "--workdir", str(emulator_run), "--json")
    assert code == 0, err
    summary = orjson.loads(out)
    assert summary["checked"] == summary["matched"] == 10 and summary["c2pa"] == {"trusted": 10} and summary["ok"]

    code, out, _ = _invoke("ledger", "export", "--workdir", str(emulator_run), "--format", "jsonl")
    done = [r for r in map(orjson.loads, out.splitlines()) if r["status"] == "succeeded"]
    # one file changed in place and one moved away (both put back after: the fixture is shared)
    changed, removed = Path(done[0]["output_path"]), Path(done[1]["output_path"])
    original = changed.read_bytes()
    try:
        changed.write_bytes(original[:-10] + b"0123456789")  # same size, other bytes
        removed.rename(removed.with_suffix(".moved"))
        code, out, _ = _invoke("ledger", "verify", "--workdir", str(emulator_run), "--json")
    finally:
        changed.write_bytes(original)
        removed.with_suffix(".moved").rename(removed)
    assert code == 1
    summary = orjson.loads(out)
    problems = {p["key"]: p["problem"] for p in summary["problems"]}
    assert problems.keys() == {done[0]["key"], done[1]["key"]} and summary["matched"] == 8
    assert problems[done[0]["key"]].startswith("other bytes") and problems[done[1]["key"]].startswith("missing")


def test_the_report_of_a_run_that_sent_nothing_says_why_and_points_to_the_jobs(
    tmp_path: Path, emulator_run: Path
) -> None:
    """A nightly re-run of an unchanged catalog sends nothing, and its run has no item: its contact sheet says so,
    and names the report of the job's items, instead of a bare "0 item(s)". A run with items says nothing of it."""
    ledger = open_ledger(tmp_path / "ledger.sqlite")
    try:
        run_id, _ = ledger.open_run("nightly <shoes>", "spec", "emulator")
        ledger.finish_build(run_id, [])
        ledger.finish_run(run_id, "finished")
        result = write_report(ledger, tmp_path / "report", run_id=run_id)
    finally:
        ledger.close()
    page = result.index.read_text(encoding="utf-8")
    assert result.items == 0 and "0 item(s)" in page
    assert "No item in this run" in page and "batchpipe report --job nightly &lt;shoes&gt;" in page
    code, _, err = _invoke("report", "--workdir", str(emulator_run), "--output", str(tmp_path / "full"))
    assert code == 0, err
    assert "No item in this run" not in (tmp_path / "full" / "index.html").read_text(encoding="utf-8")
