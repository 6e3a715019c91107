"""Helpers for the emulator service tests (batch lines, uploads, polling, images)."""

from __future__ import annotations

import base64
import io
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from openai import OpenAI
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

TERMINAL = ("completed", "failed", "expired", "cancelled")
#: Response schemas validated with format checks (``Model.shutdown_date`` is a ``date``): extracted from the official
#: spec into tests/spec/openai-schemas.json by scripts/extract_openai_schemas.py, like every other schema here.
YAML_SCHEMAS = frozenset({"Model", "ListModelsResponse"})
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "spec" / "openai-schemas.json"


@cache
def openapi_validator(name: str) -> Draft202012Validator:
    """A validator for ``components.schemas[name]`` of the extracted official spec (formats such as ``date`` are
    checked)."""
    document = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    base = str(document["$id"])
    registry: Registry[Any] = Registry().with_resource(
        base, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return Draft202012Validator(
        {"$ref": f"{base}#/components/schemas/{name}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def gen_line(custom_id: str, prompt: str = "a red cube on a table", **body: Any) -> dict[str, Any]:
    """A batch input line for ``/v1/images/generations`` (model gpt-image-2, 1024x1024 unless given).

    gpt-image-2 has no announced shutdown, so lines built here keep working on the real clock (gpt-image-1.5,
    the previous default, shuts down on 2026-12-01: batchpipe/data/image-models.toml)."""
    payload = {"model": "gpt-image-2", "prompt": prompt, "size": "1024x1024", "quality": "low", **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/images/generations", "body": payload}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    """Lines as JSONL bytes (one trailing newline)."""
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload_batch_file(client: OpenAI, lines: list[dict[str, Any]], name: str = "input.jsonl") -> str:
    """Upload ``lines`` with purpose batch; returns the file id."""
    return client.files.create(file=(name, jsonl(lines)), purpose="batch").id


def wait_for(client: OpenAI, batch_id: str, statuses: tuple[str, ...] = TERMINAL, *, timeout_s: float = 30.0) -> Any:
    """Poll the batch until its status is in ``statuses``; returns the SDK Batch. Fails after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert batch.status not in TERMINAL, f"batch {batch_id} ended {batch.status}: {batch.errors}"
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(0.05)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The JSONL lines of a file ([] for None)."""
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines() if line]


def png_bytes(size: tuple[int, int] = (1024, 1024), color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A plain RGB PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    """A base64 data URL."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
