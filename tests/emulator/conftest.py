"""Fixtures for the emulator service tests: emulators over real HTTP, SDK clients that record every
exchange, and validation of those exchanges against the official spec's schemas (tests/spec)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from emu_helpers import YAML_SCHEMAS, openapi_validator
from openai import OpenAI

from batchpipe.emulator import EmbeddedEmulator, EmulatorConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec"))
from openai_schemas import SpecSchemas

#: (method, path regex under /v1) → (request schema or None, response schema for 2xx or None).
_ROUTE_SCHEMAS: tuple[tuple[str, re.Pattern[str], str | None, str | None], ...] = (
    ("POST", re.compile(r"^/v1/files$"), None, "OpenAIFile"),
    ("GET", re.compile(r"^/v1/files$"), None, "ListFilesResponse"),
    ("GET", re.compile(r"^/v1/files/[^/]+$"), None, "OpenAIFile"),
    ("DELETE", re.compile(r"^/v1/files/[^/]+$"), None, "DeleteFileResponse"),
    ("GET", re.compile(r"^/v1/files/[^/]+/content$"), None, None),
    ("POST", re.compile(r"^/v1/batches$"), "CreateBatchRequest", "Batch"),
    ("GET", re.compile(r"^/v1/batches$"), None, "ListBatchesResponse"),
    ("GET", re.compile(r"^/v1/batches/[^/]+$"), None, "Batch"),
    ("POST", re.compile(r"^/v1/batches/[^/]+/cancel$"), None, "Batch"),
    ("POST", re.compile(r"^/v1/images/generations$"), "CreateImageRequest", "ImagesResponse"),
    ("POST", re.compile(r"^/v1/images/edits$"), "EditImageBodyJsonParam", "ImagesResponse"),
    ("GET", re.compile(r"^/v1/models$"), None, "ListModelsResponse"),  # tests/spec, with format checks
    ("GET", re.compile(r"^/v1/models/[^/]+$"), None, "Model"),
)


@dataclass
class Exchange:
    """One recorded HTTP exchange (bodies parsed when JSON)."""

    method: str
    path: str
    status: int
    request_json: Any
    response_json: Any


@dataclass
class Recorder:
    """Collects exchanges from an httpx event hook; ``check`` validates them all against the spec."""

    schemas: SpecSchemas
    exchanges: list[Exchange] = field(default_factory=list)

    def hook(self, response: httpx.Response) -> None:
        """httpx response hook: record method, path, status and JSON bodies."""
        request = response.request
        request_json = None
        if request.headers.get("content-type", "").startswith("application/json") and request.content:
            request_json = orjson.loads(request.content)
        response_json = None
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()
            response_json = orjson.loads(response.content)
        self.exchanges.append(
            Exchange(request.method, request.url.path, response.status_code, request_json, response_json)
        )

    def check(self) -> int:
        """Validate every recorded body; returns how many bodies were validated."""
        checked = 0
        for ex in self.exchanges:
            match = [(rq, rs) for m, p, rq, rs in _ROUTE_SCHEMAS if ex.method == m and p.match(ex.path)]
            assert match, f"unexpected route {ex.method} {ex.path}"
            req_schema, resp_schema = match[0]
            if req_schema and ex.request_json is not None and ex.status < 400:  # accepted requests only
                self.schemas.validate(req_schema, ex.request_json)
                checked += 1
            if ex.status >= 400:
                assert ex.response_json is not None, ex
                self.schemas.validate("ErrorResponse", ex.response_json)
                checked += 1
            elif resp_schema in YAML_SCHEMAS:
                openapi_validator(resp_schema).validate(ex.response_json)
                checked += 1
            elif resp_schema:
                self.schemas.validate(resp_schema, ex.response_json)
                if resp_schema == "Batch":
                    self.schemas.assert_all_properties("Batch", ex.response_json)
                    check_batch_parts(self.schemas, ex.response_json)
                checked += 1
        return checked


def check_batch_parts(schemas: SpecSchemas, batch: dict[str, Any]) -> None:
    """Validate the nested pieces of a Batch that carry their own schema names."""
    errors = batch.get("errors")
    if errors:
        for item in errors["data"]:
            schemas.validate("BatchError", item)
    schemas.validate("BatchRequestCounts", batch["request_counts"])
    if batch.get("metadata") is not None:
        schemas.validate("Metadata", batch["metadata"])


@pytest.fixture(scope="session")
def schemas() -> SpecSchemas:
    """The official spec's schemas (tests/spec/openai-schemas.json)."""
    return SpecSchemas()


@pytest.fixture
def recorder(schemas: SpecSchemas) -> Iterator[Recorder]:
    """Records every exchange of clients made by ``make_client``; validates them all at teardown."""
    rec = Recorder(schemas)
    yield rec
    rec.check()


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., EmbeddedEmulator]]:
    """``make_emulator(**config_fields)`` → a started ``EmbeddedEmulator`` (stopped at teardown)."""
    started: list[EmbeddedEmulator] = []

    def make(**fields: Any) -> EmbeddedEmulator:
        emu = EmbeddedEmulator(EmulatorConfig(**fields))
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


@pytest.fixture
def make_client(recorder: Recorder) -> Iterator[Callable[..., OpenAI]]:
    """``make_client(emu, max_retries=0)`` → an ``openai.OpenAI`` client on the emulator, recording exchanges."""
    clients: list[OpenAI] = []

    def make(emu: EmbeddedEmulator, *, max_retries: int = 0, api_key: str = "sk-emulator-test") -> OpenAI:
        http = httpx.Client(event_hooks={"response": [recorder.hook]}, timeout=30.0)
        client = OpenAI(api_key=api_key, base_url=emu.base_url, max_retries=max_retries, http_client=http)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
