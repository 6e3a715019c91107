"""Extract the components.schemas the emulator's tests validate against from the official OpenAPI spec.

Usage: ``python scripts/extract_openai_schemas.py [SPEC_YAML] [OUT_JSON]``
(defaults: ``../shared/reference/openai-openapi.yaml`` beside the checkout → ``tests/spec/openai-schemas.json``).

The output is one JSON document ``{"$schema", "$id", "x-source", "components": {"schemas": {...}}}`` holding
the named schemas plus everything they reference (transitively), unchanged, so the spec's own
``#/components/schemas/X`` references resolve inside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT_SCHEMAS = (
    "CreateBatchRequest",
    "Batch",
    "BatchError",
    "BatchRequestCounts",
    "BatchFileExpirationAfter",
    "ListBatchesResponse",
    "Metadata",
    "OpenAIFile",
    "FileExpirationAfter",
    "ListFilesResponse",
    "DeleteFileResponse",
    "CreateImageRequest",
    "EditImageBodyJsonParam",
    "ImageRefParam",
    "InputFidelity",
    "ImagesResponse",
    "Image",
    "ImageGenUsage",
    "Error",
    "ErrorResponse",
    "Model",
    "ListModelsResponse",
)
SCHEMA_ID = "https://batchpipe.invalid/openai-openapi-f85dbe2.json"
PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    """Names of every ``#/components/schemas/<name>`` reference inside ``node``."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX) :])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def extract(spec: dict[str, Any], roots: tuple[str, ...] = ROOT_SCHEMAS) -> dict[str, Any]:
    """The roots and their transitive ``$ref`` closure from ``spec['components']['schemas']``.

    Raises ``KeyError`` naming a schema that the spec does not have.
    """
    schemas: dict[str, Any] = spec["components"]["schemas"]
    wanted: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        if name not in schemas:
            raise KeyError(f"schema not in spec: {name}")
        wanted[name] = schemas[name]
        todo.extend(sorted(_refs(schemas[name]) - wanted.keys()))
    return dict(sorted(wanted.items()))


def main(argv: list[str]) -> int:
    """Read the YAML spec, write the JSON subset; prints the schema names written."""
    repo = Path(__file__).resolve().parents[1]
    source = Path(argv[1]) if len(argv) > 1 else repo.parent / "shared" / "reference" / "openai-openapi.yaml"
    target = Path(argv[2]) if len(argv) > 2 else Path(__file__).resolve().parents[1] / "tests/spec/openai-schemas.json"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with source.open("rb") as fh:
        spec = yaml.load(fh, Loader=loader)  # noqa: S506 - a SafeLoader variant
    subset = extract(spec)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "x-source": {
            "repository": "https://github.com/openai/openai-openapi",
            "commit": "f85dbe223d40e1a31cba812ab2d755c7e98a92a3",
            "file": "openapi.yaml",
            "licence": "MIT, Copyright (c) OpenAI",
            "info.version": spec.get("info", {}).get("version"),
        },
        "components": {"schemas": subset},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=1, sort_keys=False, ensure_ascii=False) + "\n")
    print(f"wrote {len(subset)} schemas to {target}: {', '.join(subset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
