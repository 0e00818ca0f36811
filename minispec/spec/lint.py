"""Lint: schema validation, then semantic rules, reporting every problem with its location."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from minispec.errors import Problem, SpecError
from minispec.spec.load import LoadedSpec, load_spec


@dataclass
class LintResult:
    file: Path
    problems: list[Problem] = field(default_factory=list)
    loaded: LoadedSpec | None = None

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def lint_file(file: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> LintResult:
    """Load and check one spec; never raises for problems in the spec itself."""
    file = Path(file)
    try:
        loaded = load_spec(file, overrides)
    except SpecError as exc:
        return LintResult(file, exc.problems)
    return LintResult(file, semantic_problems(loaded), loaded)


def semantic_problems(loaded: LoadedSpec) -> list[Problem]:
    """Rules that relate several fields, or fields to the teacher's config."""
    from minispec.spec import rules

    return rules.check(loaded)


def load_valid_spec(file: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> LoadedSpec:
    """Load a spec and raise :class:`SpecError` unless it is clean (warnings are allowed)."""
    result = lint_file(file, overrides)
    if not result.ok:
        raise SpecError(result.problems)
    assert result.loaded is not None
    return result.loaded
