"""Every fixture spec declares what lint must say about it; these tests hold lint to it.

A fixture's header comments (for JSON fixtures: a sibling ``NAME.json.expect`` file with the
same lines, without ``# ``) declare:

    # set: KEY=VALUE                      an override passed with --set (repeatable)
    # expect: LINE | key.path | text      an error: its line ('-': none, '*': any; '--set K=V': on that
                                          override), key path ('-': none) and a substring of
                                          its message or hint
    # warn: LINE | key.path | text        a warning, same fields
    # jsonschema: valid | invalid         whether the committed JSON Schema accepts the data

Lint must report exactly the declared errors and warnings: nothing missing, nothing extra.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from minispec.spec.lint import lint_file

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "specs"
SCHEMA_FILE = REPO / "schemas" / "minispec.schema.json"
SHIPPED = sorted((REPO / "specs").glob("*.yaml"))
HEADER = re.compile(r"^(?:# )?(set|expect|warn|jsonschema):\s*(.*)$")
# Shipped specs carry no expectation headers; the tutorial's hub teacher gets this one warning.
SHIPPED_WARNINGS = {
    "llama31-8b-minitron.yaml": ["* | teacher.source | teacher shapes unknown: lint works offline"],
}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """Lint reads hub teachers' configs from the local hub cache: keep it empty here."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@dataclass
class Expectation:
    where: str  # a line number, '-', or '--set KEY=VALUE'
    path: str
    text: str

    def matches(self, problem, file: Path) -> bool:
        if self.where.startswith("--set "):
            where_ok = problem.file == self.where
        elif self.where == "*":
            where_ok = problem.file == str(file)  # any line of the file
        else:
            line = None if self.where == "-" else int(self.where)
            where_ok = problem.file == str(file) and problem.line == line
        path_ok = problem.key_path == ("" if self.path == "-" else self.path)
        return (
            where_ok
            and path_ok
            and (self.text in problem.message or self.text in (problem.hint or ""))
        )


@dataclass
class Fixture:
    file: Path
    overrides: list[str] = field(default_factory=list)
    errors: list[Expectation] = field(default_factory=list)
    warnings: list[Expectation] = field(default_factory=list)
    jsonschema: str | None = None


def read_fixture(file: Path) -> Fixture:
    sidecar = file.with_name(file.name + ".expect")
    header = (sidecar if sidecar.exists() else file).read_text(encoding="utf-8", errors="replace")
    fixture = Fixture(file)
    lines = header.splitlines() + [f"warn: {w}" for w in SHIPPED_WARNINGS.get(file.name, [])]
    for line in lines:
        match = HEADER.match(line.strip())
        if not match:
            continue
        key, value = match.groups()
        if key == "set":
            fixture.overrides.append(value)
        elif key == "jsonschema":
            fixture.jsonschema = value.strip()
        else:
            where, path, text = (part.strip() for part in value.split(" | ", 2))
            (fixture.errors if key == "expect" else fixture.warnings).append(
                Expectation(where, path, text)
            )
    return fixture


def fixture_files(kind: str) -> list[Path]:
    return sorted(p for p in (FIXTURES / kind).iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def assert_exactly(expected: list[Expectation], problems: list, file: Path, kind: str) -> None:
    unmatched = list(problems)
    missing = []
    for expectation in expected:
        hit = next((p for p in unmatched if expectation.matches(p, file)), None)
        if hit is None:
            missing.append(expectation)
        else:
            unmatched.remove(hit)
    report = "\n".join(p.format() for p in problems)
    assert not missing, f"{kind} not reported: {missing}\nlint said:\n{report}"
    assert not unmatched, f"unexpected {kind}: {[p.format() for p in unmatched]}"


def test_there_are_enough_invalid_fixtures():
    assert len(fixture_files("invalid")) >= 30
    assert len(fixture_files("valid")) >= 5


@pytest.mark.parametrize("file", fixture_files("invalid"), ids=lambda p: p.name)
def test_invalid_fixture_reports_exactly_what_it_declares(file: Path):
    fixture = read_fixture(file)
    assert fixture.errors, f"{file.name} declares no expected error"
    result = lint_file(file, fixture.overrides)
    assert not result.ok
    assert_exactly(fixture.errors, result.errors, file, "errors")
    assert_exactly(fixture.warnings, result.warnings, file, "warnings")


@pytest.mark.parametrize("file", fixture_files("valid") + SHIPPED, ids=lambda p: p.name)
def test_valid_fixture_and_shipped_spec_lint_clean(file: Path):
    fixture = read_fixture(file)
    result = lint_file(file, fixture.overrides)
    assert result.ok, "\n".join(p.format() for p in result.problems)
    assert_exactly(fixture.warnings, result.warnings, file, "warnings")


# --------------------------------------------------------------------------------------------
# the committed JSON Schema agrees with the models


@pytest.fixture(scope="module")
def validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def document_of(fixture: Fixture):
    """The fixture's data as an editor sees it, with its well-formed overrides applied."""
    from minispec.errors import SpecError
    from minispec.spec.load import apply_override, parse_override, read_document

    data, _ = read_document(fixture.file)
    for text in fixture.overrides:
        try:
            apply_override(data, parse_override(text))
        except SpecError:
            continue
    return data


@pytest.mark.parametrize("file", fixture_files("valid") + SHIPPED, ids=lambda p: p.name)
def test_jsonschema_accepts_valid_specs(file: Path, validator):
    errors = [e.message for e in validator.iter_errors(document_of(read_fixture(file)))]
    assert not errors


SCHEMA_LEVEL = [f for f in fixture_files("invalid") if read_fixture(f).jsonschema == "invalid"]
SEMANTIC_LEVEL = [f for f in fixture_files("invalid") if read_fixture(f).jsonschema == "valid"]


@pytest.mark.parametrize("file", SCHEMA_LEVEL, ids=lambda p: p.name)
def test_jsonschema_rejects_schema_level_invalid_specs(file: Path, validator):
    assert list(validator.iter_errors(document_of(read_fixture(file))))


@pytest.mark.parametrize("file", SEMANTIC_LEVEL, ids=lambda p: p.name)
def test_jsonschema_accepts_specs_only_semantic_rules_reject(file: Path, validator):
    """The schema is not stricter than the models: these pass it and fail only semantic rules."""
    errors = [e.message for e in validator.iter_errors(document_of(read_fixture(file)))]
    assert not errors


def test_fixtures_cover_both_schema_and_semantic_levels():
    assert len(SCHEMA_LEVEL) >= 10 and len(SEMANTIC_LEVEL) >= 15
