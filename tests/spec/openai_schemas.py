"""Validate API bodies against the official spec's schemas (``openai-schemas.json``, see README.md).

``SpecSchemas.validate(name, instance)`` raises ``jsonschema.ValidationError``. The one deviation from the
spec (null for unset optional fields) is handled in ``normalise`` and nowhere else.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_FILE = Path(__file__).with_name("openai-schemas.json")

#: For list envelopes: which schema their ``data`` items follow.
_LIST_ITEMS = {"ListBatchesResponse": "Batch", "ListFilesResponse": "OpenAIFile"}


class SpecSchemas:
    """The extracted schemas, one validator per schema name (cached)."""

    def __init__(self, path: Path = SCHEMA_FILE) -> None:
        self.document: dict[str, Any] = json.loads(path.read_text())
        self.base = str(self.document["$id"])
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(self.base, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    def schema(self, name: str) -> dict[str, Any]:
        """The raw schema ``components.schemas[name]``."""
        return dict(self.document["components"]["schemas"][name])

    def _validator(self, name: str) -> Draft202012Validator:
        if name not in self._validators:
            ref = {"$ref": f"{self.base}#/components/schemas/{name}"}
            self._validators[name] = Draft202012Validator(ref, registry=self.registry)
        return self._validators[name]

    def normalise(self, name: str, instance: Any) -> Any:
        """THE documented deviation: drop null-valued keys the schema does not require (the service and the
        spec's examples send null for unset fields the spec types as non-nullable). Applied to the object and,
        for list envelopes, to each item of ``data``."""
        if not isinstance(instance, dict):
            return instance
        schema = self.schema(name)
        required = set(schema.get("required", []))
        out = {k: v for k, v in instance.items() if v is not None or k in required}
        item_schema = _LIST_ITEMS.get(name)
        if item_schema and isinstance(out.get("data"), list):
            out["data"] = [self.normalise(item_schema, item) for item in out["data"]]
        return out

    def validate(self, name: str, instance: Any) -> None:
        """Validate ``instance`` (after ``normalise``) against ``components.schemas[name]``."""
        self._validator(name).validate(self.normalise(name, copy.deepcopy(instance)))

    def assert_all_properties(self, name: str, instance: dict[str, Any]) -> None:
        """Every property the schema declares is present as a key (null allowed)."""
        missing = set(self.schema(name).get("properties", {})) - set(instance)
        assert not missing, f"{name} lacks keys {sorted(missing)}"
