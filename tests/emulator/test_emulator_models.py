"""The emulator follows the model table: ``/v1/models``, shut-down and unknown models (404 ``model_not_found``),
the newer models' sizes, qualities and formats (arbitrary WxH, GIF, SVG), their C2PA state as measured, and the
``--models FILE`` / ``--now`` flags of ``batchpipe emulator serve``. Over real HTTP, with the official SDK."""

from __future__ import annotations

import base64
import datetime as dt
import io
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from emu_helpers import gen_line, openapi_validator, read_lines, upload_batch_file, wait_for
from openai.types import ImagesResponse
from PIL import Image, ImageChops

import batchpipe.emulator.cli as emulator_cli
from batchpipe.domain.modeltable import shipped_table
from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig
from batchpipe.provenance import C2paVerifier, TrustConfig
from batchpipe.provenance.cli import verify_command

GEN = "/v1/images/generations"
SVG_NS = "{http://www.w3.org/2000/svg}"


def _not_found(model: str) -> dict[str, Any]:
    """The API's body for a model it does not serve (M26 §1: ``model_not_found``)."""
    return {
        "error": {
            "message": f"The model '{model}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


@pytest.fixture(scope="module")
def verifiers() -> dict[str, C2paVerifier]:
    """``batchpipe verify``'s verifier under the default trust lists and with the emulator's TEST root."""
    return {name: C2paVerifier(TrustConfig.from_setting(name)) for name in ("default", "emulator")}


Rows = list[dict[str, Any]]


def _run_batch(client: openai.OpenAI, lines: Rows) -> tuple[Any, Rows, Rows]:
    """Upload ``lines``, run them as one batch; returns (finished batch, output rows, error rows)."""
    batch = client.batches.create(input_file_id=upload_batch_file(client, lines), endpoint=GEN, completion_window="24h")
    done = wait_for(client, batch.id, timeout_s=60.0)
    assert done.status == "completed", done
    return done, read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)


def _decoded(row: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """An output row's ImagesResponse (checked against the SDK 3.57.0 type) and its first file's bytes."""
    assert row["error"] is None and row["response"]["status_code"] == 200, row
    body = row["response"]["body"]
    ImagesResponse.model_validate(body)  # SDK 3.57.0 types: size WxH, gif/svg, xhigh/max, svg_usage
    return body, base64.b64decode(body["data"][0]["b64_json"])


# --- /v1/models ---------------------------------------------------------------------------------------------------


def test_models_list_and_retrieve_follow_the_spec(make_emulator, make_client, recorder) -> None:
    emu = make_emulator()
    client = make_client(emu)
    table = shipped_table()
    listed = client.models.list()
    by_id = {model.id: model for model in listed.data}
    assert sorted(by_id) == table.names()  # every row, shut-down ones included
    assert by_id["gpt-image-1.5"].shutdown_date == "2026-12-01"
    assert by_id["gpt-image-1"].shutdown_date == "2026-10-23"
    assert by_id["dall-e-3"].shutdown_date == "2026-05-12"
    assert by_id["gpt-image-2"].shutdown_date is None
    sunburst = client.models.retrieve("gpt-image-2.5-sunburst-2026-09-08")
    assert (sunburst.object, sunburst.owned_by, sunburst.shutdown_date) == ("model", "openai", None)
    assert sunburst.created == int(_utc(2026, 9, 8).timestamp())  # its `launched` date, 00:00 UTC
    # no `launched` in the row (aliases, and rows that do not set it: `like` does not pass it on): created 0
    assert client.models.retrieve("gpt-image-2.5-sunburst").created == 0
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-image-9-imaginary")
    assert info.value.status_code == 404
    assert info.value.body == _not_found("gpt-image-9-imaginary")["error"]
    raw = httpx.get(f"{emu.base_url}/models", headers={"Authorization": "Bearer k"}, timeout=30)
    assert raw.json()["object"] == "list"
    openapi_validator("ListModelsResponse").validate(raw.json())
    for name in ("gpt-image-1.5", "gpt-image-2"):
        one = httpx.get(f"{emu.base_url}/models/{name}", headers={"Authorization": "Bearer k"}, timeout=30)
        openapi_validator("Model").validate(one.json())
        assert set(one.json()) == {"id", "object", "created", "owned_by", "shutdown_date"}
    assert recorder.check() >= 4  # list, two retrieves (Model) and the 404 (ErrorResponse), all schema-valid


def test_model_schema_from_the_spec_rejects_a_bad_date() -> None:
    """The validator used above does check ``shutdown_date`` (format date), so a wrong one would be caught."""
    good = {"id": "m", "object": "model", "created": 0, "owned_by": "openai", "shutdown_date": "2026-12-01"}
    openapi_validator("Model").validate(good)
    with pytest.raises(Exception, match="2026-12-32"):
        openapi_validator("Model").validate({**good, "shutdown_date": "2026-12-32"})


# --- lifecycle ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "served"),
    [
        (_utc(2026, 11, 30, 23, 59, 59), True),  # the last second before the shutdown moment
        (_utc(2026, 12, 1), False),  # 00:00 UTC on the shutdown date: gone
        (_utc(2026, 12, 2, 10), False),
    ],
)
def test_retired_model_lines_fail_with_model_not_found(
    make_emulator, make_client, recorder, schemas, now: dt.datetime, served: bool
) -> None:
    client = make_client(make_emulator(now=now))
    done, ok, errors = _run_batch(client, [gen_line(f"l{i}", model="gpt-image-1.5") for i in range(3)])
    assert done.model == "gpt-image-1.5" and done.request_counts.total == 3
    if served:
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 0) and not errors
        return
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert done.output_file_id is None and not ok
    assert sorted(row["custom_id"] for row in errors) == ["l0", "l1", "l2"]
    for row in errors:
        assert row["error"] is None  # a per-request error: the request ran and was answered 404
        assert row["response"]["status_code"] == 404
        assert row["response"]["body"] == _not_found("gpt-image-1.5")
        schemas.validate("ErrorResponse", row["response"]["body"])


def test_retired_and_unknown_models_answer_404_on_the_image_routes(make_emulator, make_client, recorder) -> None:
    emu = make_emulator(now=_utc(2026, 12, 2))
    client = make_client(emu)
    for model in ("gpt-image-1.5", "chatgpt-image-latest", "gpt-image-1-mini", "gpt-image-1", "dall-e-3", "nope-1"):
        with pytest.raises(openai.NotFoundError) as info:
            client.images.generate(model=model, prompt="a lamp", size="1024x1024")
        assert info.value.body == _not_found(model)["error"]
    edit = httpx.post(
        f"{emu.base_url}/images/edits",
        headers={"Authorization": "Bearer k"},
        json={"model": "gpt-image-1.5", "prompt": "x", "images": [{"image_url": "https://example.invalid/a.png"}]},
        timeout=30,
    )
    assert (edit.status_code, edit.json()) == (404, _not_found("gpt-image-1.5"))
    assert client.images.generate(model="gpt-image-2", prompt="a lamp", size="1024x1024").data
    assert client.models.retrieve("gpt-image-1.5").shutdown_date == "2026-12-01"  # still described
    recorder.check()


# --- new models: sizes, qualities, formats ------------------------------------------------------------------------


def test_flare_xhigh_2048x1152_renders_that_png(make_emulator, make_client, recorder, verifiers) -> None:
    client = make_client(make_emulator())
    line = gen_line("wide", model="gpt-image-2.5-flare", quality="xhigh", size="2048x1152")
    done, ok, errors = _run_batch(client, [line])
    assert not errors and done.model == "gpt-image-2.5-flare"
    body, data = _decoded(ok[0])
    assert (body["size"], body["quality"], body["output_format"]) == ("2048x1152", "xhigh", "png")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("PNG", (2048, 1152))
    assert verifiers["emulator"].verify_bytes(data).state == "trusted"
    assert verifiers["default"].verify_bytes(data).state == "valid"


def test_uhd_size_and_max_quality_on_the_direct_route(make_emulator) -> None:
    emu = make_emulator()
    answer = httpx.post(
        f"{emu.base_url}/images/generations",
        headers={"Authorization": "Bearer k"},
        json={"model": "gpt-image-2.5-sunburst", "prompt": "a skyline", "size": "3840x2160", "quality": "max"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    ImagesResponse.model_validate(body)
    assert (body["size"], body["quality"]) == ("3840x2160", "max")
    with Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))) as image:
        assert image.size == (3840, 2160)


def _frames(data: bytes) -> list[tuple[Image.Image, int]]:
    """Every frame of a GIF (as RGB) with its duration in ms."""
    frames = []
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.format == "GIF"
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append((gif.convert("RGB"), int(gif.info["duration"])))
    return frames


def test_gif_lines_are_animated_with_the_requested_frames(
    make_emulator, make_client, recorder, verifiers, tmp_path: Path
) -> None:
    client = make_client(make_emulator())
    lines = [
        gen_line("five", model="gpt-image-2.5-flare", output_format="gif", frame_count=5, frame_duration_ms=124),
        gen_line("default", model="gpt-image-2.5-flare", output_format="gif", size="1536x1024"),
    ]
    _done, ok, errors = _run_batch(client, lines)
    assert not errors
    rows = {row["custom_id"]: _decoded(row) for row in ok}
    for cid, count, duration, size in (("five", 5, 120, (1024, 1024)), ("default", 9, 200, (1536, 1024))):
        body, data = rows[cid]
        assert body["output_format"] == "gif" and body["size"] == f"{size[0]}x{size[1]}"
        frames = _frames(data)
        assert len(frames) == count  # frame_count (default 9, SDK 3.57.0)
        assert {ms for _, ms in frames} == {duration}  # frame_duration_ms to the nearest 10 ms (default 200)
        assert all(frame.size == size for frame, _ in frames)
        for (before, _), (after, _) in itertools.pairwise(frames):
            assert ImageChops.difference(before, after).getbbox() is not None  # each frame differs
        # C2PA: c2pa-python signs GIF; batchpipe verify reads it from the bytes (measured: trusted / valid)
        assert verifiers["emulator"].verify_bytes(data).state == "trusted"
        assert verifiers["default"].verify_bytes(data).state == "valid"
        (tmp_path / f"{cid}.gif").write_bytes(data)
    assert {r["state"] for r in _batchpipe_verify(tmp_path, "emulator")} == {"trusted"}


def test_svg_line_gives_a_well_formed_signed_svg(make_emulator, make_client, recorder, verifiers, tmp_path) -> None:
    client = make_client(make_emulator())
    prompt = 'A <bold> "logo" for Fish & Chips — ünïcode, 🐟 and a control char \x01'
    line = gen_line(
        "svg",
        prompt=prompt,
        model="gpt-image-2.5-sunburst",
        output_format="svg",
        size="1536x1024",
        svg={"model": "gpt-5-svg", "reasoning": {"effort": "low"}},
        safety_identifier="user-hash-1",
    )
    _done, ok, errors = _run_batch(client, [line])
    assert not errors
    body, data = _decoded(ok[0])
    assert (body["output_format"], body["size"], body["safety_identifier"]) == ("svg", "1536x1024", "user-hash-1")
    assert body["svg_usage"]["model"] == "gpt-5-svg"
    assert body["svg_usage"]["total_tokens"] == body["svg_usage"]["input_tokens"] + body["svg_usage"]["output_tokens"]
    root = ET.fromstring(data)  # noqa: S314 - the emulator's own output; well-formedness is the point
    assert root.tag == f"{SVG_NS}svg"
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("1536", "1024", "0 0 1536 1024")
    shapes = root.findall(f"{SVG_NS}rect") + root.findall(f"{SVG_NS}ellipse")
    assert len(shapes) >= 5  # background, bands and 3..5 shapes
    assert root.findtext(f"{SVG_NS}title") == prompt.replace("\x01", "")  # escaped, round-trips exactly
    texts = [t.text or "" for t in root.findall(f"{SVG_NS}text")]
    assert any("gpt-image-2.5-sunburst" in t for t in texts) and any("Fish & Chips" in t for t in texts)
    assert b"&lt;bold&gt;" in data and b"Fish &amp; Chips" in data
    # C2PA: c2pa-python signs SVG (a <metadata> element holding the manifest) and reads it back when told the
    # MIME type; batchpipe verify detects the type from the bytes, which c2pa cannot do for SVG (measured).
    assert verifiers["emulator"].verify_bytes(data, "image/svg+xml").state == "trusted"
    assert verifiers["default"].verify_bytes(data, "image/svg+xml").state == "valid"
    assert verifiers["emulator"].verify_bytes(data).state == "trusted"  # SVG recognised from its text
    (tmp_path / "logo.svg").write_bytes(data)
    (report,) = _batchpipe_verify(tmp_path, "emulator")
    assert report["state"] == "trusted"


def _batchpipe_verify(folder: Path, trust: str) -> list[dict[str, Any]]:
    """``batchpipe verify FOLDER --trust TRUST --json`` → one ``{"path", "state", "reason"}`` per file."""
    result = CliRunner().invoke(verify_command, [str(folder), "--trust", trust, "--json"])
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert rows, result.output
    return [{"path": r["path"], "state": r["c2pa_state"], "reason": r["reason"]} for r in rows]


# --- batchpipe emulator serve --models FILE --now ISO ------------------------------------------------------------


def _served_config(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> EmulatorConfig:
    seen: dict[str, EmulatorConfig] = {}

    def fake_run(config: EmulatorConfig, *, host: str, port: int) -> None:
        seen["config"] = config

    monkeypatch.setattr(emulator_cli, "run_server", fake_run)
    result = CliRunner().invoke(emulator_cli.emulator_group, ["serve", *args])
    assert result.exit_code == 0, result.output
    return seen["config"]


def test_serve_models_file_and_now_change_what_http_shows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rows = tmp_path / "models.toml"
    rows.write_text(
        '[models."gpt-image-2"]\n'
        "shutdown = 2027-01-15\n"
        'replacement = ["gpt-image-2.5-flare"]\n'
        '[models."gpt-image-3-drill"]\n'
        'like = "gpt-image-2-2026-04-21"\n'
        "launched = 2026-11-20\n"
        'source = "drill"\n'
        "checked = 2026-11-30\n",
        encoding="utf-8",
    )
    state = tmp_path / "state"
    config = _served_config(
        monkeypatch, ["--state-dir", str(state), "--models", str(rows), "--now", "2027-01-15T00:00:00Z"]
    )
    assert config.lifecycle_now() == _utc(2027, 1, 15)
    assert str(rows) in config.models.origin
    with EmbeddedEmulator(config) as emu:
        client = openai.OpenAI(api_key="k", base_url=emu.base_url, max_retries=0)
        try:
            assert client.models.retrieve("gpt-image-2").shutdown_date == "2027-01-15"
            assert client.models.retrieve("gpt-image-2-2026-04-21").shutdown_date is None  # only the alias moved
            drill = client.models.retrieve("gpt-image-3-drill")
            assert drill.created == int(_utc(2026, 11, 20).timestamp())
            assert "gpt-image-3-drill" in {m.id for m in client.models.list().data}
            with pytest.raises(openai.NotFoundError) as info:  # pinned clock = its new shutdown moment
                client.images.generate(model="gpt-image-2", prompt="a lamp")
            assert info.value.body == _not_found("gpt-image-2")["error"]
            assert client.images.generate(model="gpt-image-3-drill", prompt="a lamp", size="1280x720").data
            # gpt-image-1.5 shut down on 2026-12-01, before the pinned clock
            with pytest.raises(openai.NotFoundError):
                client.images.generate(model="gpt-image-1.5", prompt="a lamp")
        finally:
            client.close()
    default = _served_config(monkeypatch, ["--state-dir", str(state)])
    assert default.now is None and default.models is shipped_table()
    assert default.models.get("gpt-image-2").shutdown is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--now", "tomorrow"], "--now expects an ISO 8601 date"),
        (["--models", "{bad}"], "models.gpt-image-2.shutdown"),
    ],
)
def test_serve_rejects_bad_models_file_or_now(tmp_path: Path, args: list[str], needle: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."gpt-image-2"]\nshutdown = "someday"\n', encoding="utf-8")
    argv = ["serve", "--state-dir", str(tmp_path / "s"), *[str(bad) if a == "{bad}" else a for a in args]]
    result = CliRunner().invoke(emulator_cli.emulator_group, argv)
    assert result.exit_code == 2, result.output
    assert needle in result.output
