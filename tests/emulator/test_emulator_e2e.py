"""End to end over real HTTP with the official ``openai`` SDK: upload, batch, poll, download, decode, C2PA."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import c2pa
import httpx
import openai
import pytest
from emu_helpers import data_url, gen_line, png_bytes, read_lines, upload_batch_file, wait_for
from PIL import Image

import batchpipe

EMULATOR_ROOT = Path(batchpipe.__file__).parent / "provenance" / "pki" / "emulator-root.pem"


def _c2pa_state(data: bytes, mime: str, *, trust_root: Path | None) -> str:
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False}}
    if trust_root is not None:
        settings["trust"] = {"trust_anchors": trust_root.read_text()}
    context = c2pa.Context.from_dict(settings)
    with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
        return str(reader.get_validation_state())


def test_batch_of_generations_and_edits_end_to_end(make_emulator, make_client, recorder, schemas) -> None:
    emu = make_emulator()
    client = make_client(emu)
    vision = client.files.create(file=("ref.png", png_bytes((512, 512))), purpose="vision")
    assert vision.purpose == "vision" and vision.expires_at is None
    edit_body = {"model": "gpt-image-2", "prompt": "put it on a beach", "size": "1024x1024", "quality": "low"}
    lines = [
        gen_line("gen-1"),
        gen_line("gen-2", output_format="jpeg", size="1536x1024"),
        gen_line("gen-3", output_format="webp", size="1024x1536", background="transparent"),
        {
            "custom_id": "edit-data",
            "method": "POST",
            "url": "/v1/images/edits",
            "body": {**edit_body, "images": [{"image_url": data_url(png_bytes((256, 256)))}]},
        },
        {
            "custom_id": "edit-file",
            "method": "POST",
            "url": "/v1/images/edits",
            "body": {**edit_body, "images": [{"file_id": vision.id}]},
        },
    ]
    gen_id = upload_batch_file(client, lines[:3], "gen.jsonl")
    edit_id = upload_batch_file(client, lines[3:], "edit.jsonl")
    for line in lines:
        schemas.validate(
            "CreateImageRequest" if line["url"].endswith("generations") else "EditImageBodyJsonParam", line["body"]
        )

    gen_batch = client.batches.create(
        input_file_id=gen_id,
        endpoint="/v1/images/generations",
        completion_window="24h",
        metadata={"job": "e2e", "shard": "1"},
    )
    edit_batch = client.batches.create(input_file_id=edit_id, endpoint="/v1/images/edits", completion_window="24h")
    assert gen_batch.status == "validating" and gen_batch.metadata == {"job": "e2e", "shard": "1"}

    expected = {
        "gen-1": ((1024, 1024), "PNG", "image/png"),
        "gen-2": ((1536, 1024), "JPEG", "image/jpeg"),
        "gen-3": ((1024, 1536), "WEBP", "image/webp"),
        "edit-data": ((1024, 1024), "PNG", "image/png"),
        "edit-file": ((1024, 1024), "PNG", "image/png"),
    }
    seen: set[str] = set()
    for batch_id, model_total in ((gen_batch.id, 3), (edit_batch.id, 2)):
        done = wait_for(client, batch_id)
        assert done.status == "completed"
        assert done.model == "gpt-image-2"
        assert done.request_counts.total == model_total and done.request_counts.completed == model_total
        assert done.error_file_id is None
        assert done.in_progress_at and done.finalizing_at and done.completed_at
        assert done.usage is not None and done.usage.output_tokens > 0
        assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
        out_file = client.files.retrieve(done.output_file_id)
        assert out_file.purpose == "batch_output"
        for row in read_lines(client, done.output_file_id):
            assert row["response"]["status_code"] == 200 and row["error"] is None
            assert row["id"].startswith("batch_req_")
            body = row["response"]["body"]
            schemas.validate("ImagesResponse", body)
            size, fmt, mime = expected[row["custom_id"]]
            data = base64.b64decode(body["data"][0]["b64_json"])
            with Image.open(io.BytesIO(data)) as image:
                assert image.size == size and image.format == fmt
            assert _c2pa_state(data, mime, trust_root=None) == "Valid"
            assert _c2pa_state(data, mime, trust_root=EMULATOR_ROOT) == "Trusted"
            seen.add(row["custom_id"])
    assert seen == set(expected)
    assert recorder.check() > 10


def test_direct_image_routes_and_bad_request(make_emulator, make_client, recorder) -> None:
    emu = make_emulator()
    client = make_client(emu)
    raw = client.images.with_raw_response.generate(model="gpt-image-2", prompt="a lamp", size="1024x1024")
    assert raw.headers["x-request-id"].startswith("req_")
    result = raw.parse()
    assert result.data and result.data[0].b64_json
    with Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))) as image:
        assert image.size == (1024, 1024)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-2", prompt="a lamp", size="999x999")  # type: ignore[arg-type]
    assert info.value.body["param"] == "size"  # type: ignore[index]
    edit = httpx.post(
        f"{emu.base_url}/images/edits",
        headers={"Authorization": "Bearer k"},
        json={"model": "gpt-image-2", "prompt": "x", "images": [{"image_url": data_url(png_bytes((64, 64)))}]},
        timeout=30,
    )
    assert edit.status_code == 200 and edit.json()["data"][0]["b64_json"]
    recorder.check()
