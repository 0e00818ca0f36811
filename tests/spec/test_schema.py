"""The committed JSON Schema is the one the models generate, and shipped specs point at it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minispec.spec.model import SCHEMA_ID, json_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas" / "minispec.schema.json"
SHIPPED = sorted((REPO / "specs").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=../schemas/minispec.schema.json"


def test_committed_schema_matches_the_models():
    expected = json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, (
        "schemas/minispec.schema.json is stale: run `minispec schema -o schemas/minispec.schema.json`"
    )


def test_schema_is_draft_2020_12_with_every_field_documented():
    from jsonschema import Draft202012Validator

    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID

    def documented(prop: dict) -> bool:  # a $ref may leave its description to the definition
        target = prop.get("$ref", "").rsplit("/", 1)[-1]
        return bool(prop.get("description") or schema["$defs"].get(target, {}).get("description"))

    undocumented = [
        f"{name}.{key}"
        for name, definition in [("Spec", schema), *schema["$defs"].items()]
        for key, prop in definition.get("properties", {}).items()
        if not documented(prop)
    ]
    assert not undocumented
    assert all(
        d.get("additionalProperties") is False
        for d in schema["$defs"].values()
        if "properties" in d
    )


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_name_the_schema_for_editors(spec: Path):
    assert spec.read_text(encoding="utf-8").splitlines()[0] == MODELINE
    assert (spec.parent / "../schemas/minispec.schema.json").resolve() == SCHEMA_FILE
