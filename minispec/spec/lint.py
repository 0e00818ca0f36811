"""Lint: schema validation, then semantic rules, reporting every problem with its location.

What one run reports (see :mod:`minispec.spec.load` for the details):

- a file that cannot be read or parsed: that one problem;
- otherwise every malformed ``--set``, every schema error, and every semantic problem found in
  the blocks (and prune variants) that passed the schema.

Problems come sorted: overrides first, then by line and column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from minispec.errors import Problem
from minispec.spec.load import LoadedSpec, load_spec_partial


@dataclass
class LintResult:
    file: Path
    problems: list[Problem] = field(default_factory=list)
    loaded: LoadedSpec | None = None  # None when the file could not be read; partial when invalid

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def lint_file(file: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> LintResult:
    """Load and check one spec; never raises for problems in the spec itself."""
    file = Path(file)
    loaded, problems = load_spec_partial(file, overrides)
    if loaded is not None:
        problems = problems + semantic_problems(loaded)
    return LintResult(file, sort_problems(problems, str(file)), loaded)


def semantic_problems(loaded: LoadedSpec) -> list[Problem]:
    """Rules that relate several fields, or fields to the teacher's config."""
    from minispec.spec import rules

    return rules.check(loaded)


def sort_problems(problems: list[Problem], shown: str) -> list[Problem]:
    """Overrides (and file-level problems) first, then in reading order; stable otherwise."""
    return sorted(problems, key=lambda p: (p.file == shown, p.line or 0, p.col or 0))
