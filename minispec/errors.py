"""The one exception hierarchy of minispec.

Every error a user can cause is a :class:`MinispecError`. The CLI prints ``error: <message>``
(plus ``hint: ...``), exits with the error's ``exit_code`` and shows a traceback only with
``--verbose``. Spec problems are collected as :class:`Problem` records so that lint can report all
of them at once, each with its file, line, column and key path.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_FAILURE = 1
EXIT_BAD_SPEC = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in a spec, located as precisely as we can."""

    file: str
    message: str
    path: tuple[str | int, ...] = ()
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based
    hint: str | None = None
    severity: str = "error"  # "error" | "warning"

    @property
    def key_path(self) -> str:
        return format_key_path(self.path)

    def format(self) -> str:
        """``FILE:LINE:COL: key.path: message (hint: ...)`` — the lint output line."""
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        parts = [where]
        if self.path:
            parts.append(self.key_path)
        text = ": ".join(parts) + ": "
        if self.severity == "warning":
            text += "warning: "
        text += self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


def format_key_path(path: tuple[str | int, ...] | list[str | int]) -> str:
    """``("prune", "width", "drop_layers", 2)`` → ``prune.width.drop_layers[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class MinispecError(Exception):
    """Base of every error minispec reports to a user."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class SpecError(MinispecError):
    """A spec (or an override) is invalid; carries every problem found."""

    exit_code = EXIT_BAD_SPEC

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        noun = "problem" if len(errors) == 1 else "problems"
        files = sorted({p.file for p in errors})
        super().__init__(f"{len(errors)} {noun} in {', '.join(files) or 'spec'}")

    def render(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class CompileError(MinispecError):
    """The spec is valid but cannot be compiled or written (e.g. a hand-written dvc.yaml)."""


class PipelineError(MinispecError):
    """DVC is missing, or a pipeline stage failed."""


class StageError(MinispecError):
    """A stage cannot run on its inputs (bad data, bad checkpoint, unsupported model...)."""


class NotBuiltError(StageError):
    """A stage whose engine code does not exist: fail loudly, never write fake outputs."""
