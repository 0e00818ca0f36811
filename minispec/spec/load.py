"""Read a spec file (YAML or JSON) with positions, apply ``--set`` overrides, validate.

Loading never raises on the first problem: it collects :class:`~minispec.errors.Problem`
records, each with file, line, column and key path, and raises one
:class:`~minispec.errors.SpecError` carrying all of them.

Relative paths in a spec are relative to the spec file's directory; relative paths given with
``--set`` are relative to the current directory. Both are made absolute here, so a loaded
:class:`Spec` holds absolute local paths; the compiler rewrites them relative to the
``dvc.yaml`` it writes.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minispec.errors import Problem, SpecError, format_key_path
from minispec.spec.model import Spec

MAX_SPEC_BYTES = 1024 * 1024  # a spec is a few KiB; anything near this is not a spec
Position = tuple[int, int]  # 1-based line, column
KeyPath = tuple[str | int, ...]

# Spec fields that may hold local paths (rebased as described in the module docstring).
PATH_FIELDS: tuple[KeyPath, ...] = (("teacher", "source"), ("data", "source"), ("data", "tokenizer"))
REMOTE_PREFIXES = ("hf://", "pkg://")


@dataclass
class Override:
    """One ``--set KEY=VALUE`` as the user typed it."""

    text: str
    path: KeyPath
    value: Any

    @property
    def where(self) -> str:
        return f"--set {self.text}"


@dataclass
class LoadedSpec:
    """A validated spec plus what is needed to point at its source."""

    file: Path
    spec: Spec
    raw: dict[str, Any]
    positions: dict[KeyPath, Position] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)

    def locate(self, path: KeyPath, message: str, *, hint: str | None = None, severity: str = "error") -> Problem:
        """A problem at ``path``: on the override that set it, else at its line in the file."""
        return locate(self.file, self.positions, self.overrides, path, message, hint=hint, severity=severity)


# --------------------------------------------------------------------------------------------
# reading


def read_document(file: Path) -> tuple[Any, dict[KeyPath, Position]]:
    """Parse one YAML/JSON file into plain Python data plus a position for every key path."""
    shown = str(file)
    if not file.exists():
        raise SpecError([Problem(shown, "no such file", hint="check the path to the spec")])
    if file.is_dir():
        raise SpecError([Problem(shown, "is a directory, not a spec file", hint="pass the spec's .yaml or .json file")])
    size = file.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError([Problem(shown, f"file is {size} bytes; a spec must be under {MAX_SPEC_BYTES} bytes")])
    data = file.read_bytes()
    if b"\x00" in data:
        raise SpecError([Problem(shown, "binary file (contains NUL bytes), not a YAML or JSON spec")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(shown, f"not valid UTF-8 (byte {exc.start})", line=line, col=1)]) from None
    return parse_yaml(text, shown)


def parse_yaml(text: str, shown: str) -> tuple[Any, dict[KeyPath, Position]]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt", pure=True)  # round-trip loader: safe (no object construction) and keeps positions
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        if "found character '\\t'" in str(exc) or "\t" in message:
            hint = "YAML does not allow tabs for indentation; indent with spaces"
        elif "duplicate key" in message:
            hint = "each key may appear once per mapping; remove or merge the repeated key"
        else:
            hint = None
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise SpecError([Problem(shown, f"invalid YAML: {_one_line(message)}", line=line, col=col, hint=hint)]) from None
    except YAMLError as exc:
        raise SpecError([Problem(shown, f"invalid YAML: {_one_line(str(exc))}")]) from None
    positions: dict[KeyPath, Position] = {}
    return _to_plain(document, (), positions), positions


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _to_plain(node: Any, path: KeyPath, positions: dict[KeyPath, Position]) -> Any:
    """ruamel's Commented* containers → dict/list, recording where each key and item starts."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        out = {}
        for key in node:
            line, col = node.lc.key(key)
            positions[path + (str(key),)] = (line + 1, col + 1)
            out[str(key)] = _to_plain(node[key], path + (str(key),), positions)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, item in enumerate(node):
            line, col = node.lc.item(index)
            positions[path + (index,)] = (line + 1, col + 1)
            items.append(_to_plain(item, path + (index,), positions))
        return items
    if isinstance(node, str):
        return str(node)  # drop ruamel's scalar string subclasses
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


# --------------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> Override:
    """``a.b.c=VALUE`` → Override; VALUE is read as YAML (``4`` is an int, ``[1, 2]`` a list)."""
    where = f"--set {text}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError([Problem(where, "expected KEY=VALUE with a dotted key, e.g. --set finetune.lr=2e-4")])
    parts = key.split(".")
    if any(not part for part in parts):
        raise SpecError([Problem(where, f"malformed key '{key}'", hint="use dots between names, e.g. prune.width.target_hidden_size")])
    try:
        value, _ = parse_yaml(value_text, where) if value_text.strip() else (None, {})
    except SpecError as exc:
        raise SpecError([Problem(where, p.message, path=tuple(parts), hint="quote the value if it is meant as text") for p in exc.problems]) from None
    return Override(text=text, path=tuple(parts), value=value)


def apply_override(raw: dict[str, Any], override: Override) -> Problem | None:
    """Set ``override.value`` at its dotted path, creating mappings on the way."""
    node: Any = raw
    for depth, part in enumerate(override.path[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            at = format_key_path(override.path[: depth + 1])
            return Problem(override.where, f"'{at}' is not a mapping, so it has no key '{override.path[depth + 1]}'", path=override.path)
        node = child
    node[override.path[-1]] = override.value
    return None


# --------------------------------------------------------------------------------------------
# validation


def load_spec(file: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Read, override and validate a spec; raise :class:`SpecError` with every problem found."""
    file = Path(file)
    shown = str(file)
    raw, positions = read_document(file)
    problems: list[Problem] = []
    if raw is None:
        raise SpecError([Problem(shown, "the spec is empty", hint="start from specs/quickstart.yaml")])
    if not isinstance(raw, dict):
        kind = type(raw).__name__ if not isinstance(raw, list) else "list"
        raise SpecError([Problem(shown, f"the spec must be a mapping of keys to values, not a {kind}", line=1, col=1)])

    parsed: list[Override] = []
    for text in overrides:
        try:
            parsed.append(parse_override(text))
        except SpecError as exc:
            problems.extend(exc.problems)
    for override in parsed:
        problem = apply_override(raw, override)
        if problem:
            problems.append(problem)
    if problems:
        raise SpecError(problems)

    _absolutize_paths(raw, base=file.resolve().parent, overrides=parsed)
    try:
        spec = Spec.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError; imported lazily with pydantic below
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        raise SpecError(validation_problems(exc, raw, file, positions, parsed)) from None
    return LoadedSpec(file=file, spec=spec, raw=raw, positions=positions, overrides=parsed)


def _absolutize_paths(raw: dict[str, Any], *, base: Path, overrides: list[Override]) -> None:
    overridden = {o.path for o in overrides}
    for path in PATH_FIELDS:
        parent = raw
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = parent.get(path[-1])
        if not isinstance(value, str) or not value or value.startswith(REMOTE_PREFIXES) or "://" in value:
            continue
        root = Path.cwd() if path in overridden else base
        parent[path[-1]] = str((root / os.path.expanduser(value)).resolve())


def locate(
    file: Path,
    positions: dict[KeyPath, Position],
    overrides: list[Override],
    path: KeyPath,
    message: str,
    *,
    hint: str | None = None,
    severity: str = "error",
) -> Problem:
    """Place a problem on the override that set ``path`` (or a parent of it), else in the file."""
    for override in reversed(overrides):
        if path[: len(override.path)] == override.path:
            return Problem(override.where, message, path=path, hint=hint, severity=severity)
    probe = path
    while probe and probe not in positions:
        probe = probe[:-1]
    line, col = positions.get(probe, (None, None))
    return Problem(str(file), message, path=path, line=line, col=col, hint=hint, severity=severity)


def validation_problems(exc: Any, raw: dict[str, Any], file: Path, positions: dict[KeyPath, Position], overrides: list[Override]) -> list[Problem]:
    """pydantic errors → located problems with messages that say how to fix them."""
    problems = []
    seen = set()
    for error in exc.errors(include_url=False):
        path = data_path(error["loc"], raw)
        message, hint = _explain(error, path, raw)
        key = (path, message)
        if key in seen:
            continue
        seen.add(key)
        problems.append(locate(file, positions, overrides, path, message, hint=hint))
    return problems


def data_path(loc: tuple[Any, ...], raw: Any) -> KeyPath:
    """pydantic's error location → the key path in the user's data.

    pydantic inserts union tags (``'width'`` for a ``kind: width`` variant) and validator names
    into ``loc``; those are not keys of the data, so they are skipped.
    """
    path: list[str | int] = []
    node = raw
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif last and isinstance(node, dict) and isinstance(part, str) and part.isidentifier():
            path.append(part)  # a missing or unknown key: point at it by name
            node = None
    return tuple(path)


def _explain(error: dict[str, Any], path: KeyPath, raw: dict[str, Any]) -> tuple[str, str | None]:
    kind = error["type"]
    name = path[-1] if path else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1], raw)
        close = difflib.get_close_matches(str(name), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else (f"allowed keys: {', '.join(allowed)}" if allowed else None)
        return f"unknown key '{name}'", hint
    if kind == "missing":
        return f"missing required key '{name}'", None
    if kind == "union_tag_invalid":
        return f"unknown kind {error.get('input', {}).get('kind')!r}", "use kind: depth or kind: width"
    if kind == "union_tag_not_found":
        return "a prune variant needs a 'kind'", "add kind: depth or kind: width"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"invalid value {error.get('input')!r}", f"expected {expected}"
    if kind == "string_pattern_mismatch" and path and path[0] in ("prune", "name"):
        return f"invalid name {error.get('input')!r}", "start with a letter; use letters, digits, '_' and '-' (at most 64)"
    return f"{error['msg']} (got {_short(error.get('input'))})", None


def _allowed_keys(path: KeyPath, raw: dict[str, Any]) -> list[str]:
    """Field names of the model found at ``path`` (for 'did you mean' hints)."""
    from minispec.spec.model import DepthPrune, Spec, WidthPrune

    model: Any = Spec
    node: Any = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if model is Spec and part == "prune":
            model = "variants"
            continue
        if model == "variants":
            kind = node.get("kind") if isinstance(node, dict) else None
            model = {"depth": DepthPrune, "width": WidthPrune}.get(kind)
            if model is None:
                return []
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return []
        model = _model_of(info.annotation)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {})) if model not in (None, "variants") else []


def _model_of(annotation: Any) -> Any:
    from typing import get_args

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
