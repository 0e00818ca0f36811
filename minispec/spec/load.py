"""Read a spec file (YAML or JSON) with positions, apply ``--set`` overrides, validate.

Loading never raises on the first problem: it collects :class:`~minispec.errors.Problem`
records, each with file, line, column and key path, and raises one
:class:`~minispec.errors.SpecError` carrying all of them.

How far one run gets, so that a single lint lists as many problems as it honestly can:

1. Reading: a file that cannot be read or parsed (missing, a directory, binary, too big, bad
   YAML, a duplicated key, tabs) stops here with one problem — there is nothing to validate.
2. Overrides: every malformed ``--set`` is reported; the well-formed ones are still applied.
3. Schema: pydantic validates the whole spec (strictly: ``"4"`` is not an integer, as in the
   JSON Schema) and every error becomes a located problem.
4. If the schema found errors, the *units* that validated — each top-level block, and each
   prune variant on its own — are kept in a partial :class:`Spec` (``LoadedSpec.invalid`` names
   the units that did not), and the semantic rules that only read valid units still run
   (:mod:`minispec.spec.rules`). A rule that reads an invalid unit is skipped: its verdict
   would rest on a value the user has already been told is wrong.

Relative paths in a spec are relative to the spec file's directory; relative paths given with
``--set`` are relative to the current directory. Both are made absolute here, so a loaded
:class:`Spec` holds absolute local paths; the compiler rewrites them relative to the
``dvc.yaml`` it writes.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minispec.errors import Problem, SpecError, format_key_path
from minispec.spec.messages import KeyPath, explain
from minispec.spec.model import Spec

MAX_SPEC_BYTES = 1024 * 1024  # a spec is a few KiB; anything near this is not a spec
MAX_NODES = 100_000  # values after alias expansion: stops "billion laughs" documents
MAX_FLOW_DEPTH = 64  # [[[...]]] nesting; a spec needs 3
Position = tuple[int, int]  # 1-based line, column

# Spec fields that may hold local paths (rebased as described in the module docstring).
PATH_FIELDS: tuple[KeyPath, ...] = (
    ("teacher", "source"),
    ("data", "source"),
    ("data", "tokenizer"),
    ("evaluate", "harness", "include_path"),
)
REMOTE_PREFIXES = ("hf://", "pkg://")

# The only YAML tags a spec may carry (implicitly): plain data, nothing that builds objects.
PLAIN_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
}


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
    """A validated spec plus what is needed to point at its source.

    ``invalid`` is empty for a spec that passed the schema. After schema errors (see the
    module docstring) ``spec`` holds only the units that validated and ``invalid`` names the
    others: top-level keys (``("finetune",)``) or prune variants (``("prune", "width")``).
    """

    file: Path
    spec: Spec
    raw: dict[str, Any]
    positions: dict[KeyPath, Position] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)
    invalid: set[KeyPath] = field(default_factory=set)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # e.g. the teacher's shapes

    def locate(
        self, path: KeyPath, message: str, *, hint: str | None = None, severity: str = "error"
    ) -> Problem:
        """A problem at ``path``: on the override that set it, else at its line in the file."""
        return locate(
            self.file, self.positions, self.overrides, path, message, hint=hint, severity=severity
        )

    def is_valid(self, block: str) -> bool:
        """Whether the top-level ``block`` (all of it, every prune variant included) validated."""
        return not any(not unit or unit[0] == block for unit in self.invalid)  # (): everything

    def is_set(self, path: KeyPath) -> bool:
        """Whether the user wrote ``path`` (in the file or with ``--set``), as opposed to a default."""
        node: Any = self.raw
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                return False
        return True


# --------------------------------------------------------------------------------------------
# reading


def read_document(file: Path) -> tuple[Any, dict[KeyPath, Position]]:
    """Parse one YAML/JSON file into plain Python data plus a position for every key path."""
    shown = str(file)
    try:
        info = file.stat()
    except FileNotFoundError:
        raise SpecError(
            [Problem(shown, "no such file", hint="check the path to the spec")]
        ) from None
    except OSError as exc:
        raise SpecError([Problem(shown, f"cannot read: {exc.strerror or exc}")]) from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(
            [
                Problem(
                    shown,
                    "is a directory, not a spec file",
                    hint="pass the spec's .yaml or .json file",
                )
            ]
        )
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(
            [
                Problem(
                    shown,
                    "is not a regular file (a device, pipe or socket)",
                    hint="pass the spec's .yaml or .json file",
                )
            ]
        )
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)  # never trust st_size alone
    except OSError as exc:
        raise SpecError([Problem(shown, f"cannot read: {exc.strerror or exc}")]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            [
                Problem(
                    shown,
                    f"file is over {MAX_SPEC_BYTES} bytes ({info.st_size} bytes); a spec is a few KiB of YAML or JSON",
                )
            ]
        )
    if b"\x00" in data:
        raise SpecError(
            [Problem(shown, "binary file (contains NUL bytes), not a YAML or JSON spec")]
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(
            [
                Problem(
                    shown,
                    f"not valid UTF-8 text (byte {exc.start}); a spec is a YAML or JSON text file",
                    line=line,
                    col=1,
                )
            ]
        ) from None
    if file.suffix.lower() == ".json":
        return parse_json(text, shown)
    return parse_yaml(text, shown)


def parse_json(text: str, shown: str) -> tuple[Any, dict[KeyPath, Position]]:
    """JSON is YAML 1.2, so the YAML reader gives positions; JSON's own parser words its errors."""
    import json

    try:
        return parse_yaml(text, shown)
    except SpecError as yaml_error:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = Problem(shown, f"invalid JSON: {exc.msg}", line=exc.lineno, col=exc.colno)
            raise SpecError([problem]) from None
        except ValueError:  # what the YAML reader refused too (a 5000-digit number)
            raise yaml_error from None
        if any(p.path for p in yaml_error.problems):  # parsed, but holds what a spec may not
            raise
        return data, {}  # valid JSON the YAML reader refuses: no positions, but no false error


def parse_yaml(text: str, shown: str) -> tuple[Any, dict[KeyPath, Position]]:
    """YAML 1.2 (a superset of JSON) → plain data and positions; never builds Python objects."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt", pure=True)  # round-trip loader: no object construction, keeps positions
    yaml.allow_duplicate_keys = False
    if flow_depth(text) > MAX_FLOW_DEPTH:
        # the YAML parser recurses per level and slows down quadratically long before it fails
        message = f"invalid YAML: brackets nested more than {MAX_FLOW_DEPTH} levels deep"
        raise SpecError([Problem(shown, message)])
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        raise SpecError([_yaml_problem(exc, shown)]) from None
    except YAMLError as exc:
        raise SpecError([Problem(shown, f"invalid YAML: {_one_line(str(exc))}")]) from None
    except RecursionError:
        raise SpecError([Problem(shown, "invalid YAML: nested too deeply")]) from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4300 digits)
        raise SpecError([_value_problem(exc, text, shown)]) from None
    converter = _Converter(shown)
    plain = converter.convert(document, ())
    if converter.problems:
        raise SpecError(converter.problems)
    return plain, converter.positions


# a quote opens a quoted scalar only where a token starts (after a space, a bracket or a comma):
# in `[a'b, [[[...]]], c'd]` the quotes belong to plain scalars, so the brackets between count
_QUOTED = re.compile(r'(?<![^\s\[\]{},])(?:"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\n]|\'\')*\')')
_COMMENT = re.compile(r"(?:^|\s)#.*$", re.MULTILINE)
_BRACKETS = re.compile(r"[\[\]{}]")


def flow_depth(text: str) -> int:
    """Deepest nesting of flow brackets outside quotes and comments (a cheap over-estimate)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_COMMENT.sub("", _QUOTED.sub("", text))):
        depth = depth + 1 if match.group() in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest


_LONG_NUMBER = re.compile(r"[0-9_]{4000,}")


def _value_problem(exc: ValueError, text: str, shown: str) -> Problem:
    """A value the YAML reader cannot build, located where it can be found in the text."""
    match = _LONG_NUMBER.search(text)
    if match is None or "digits" not in str(exc):
        return Problem(shown, f"invalid YAML: {_one_line(str(exc))}")
    line = text.count("\n", 0, match.start()) + 1
    col = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
    return Problem(
        shown,
        f"a number of {len(match.group())} digits: longer than any setting can use",
        line=line,
        col=col,
        hint="write a number of sensible size (or quote it if it is meant as text)",
    )


def _yaml_problem(exc: Any, shown: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
    if "found character '\\t'" in str(exc) or "\t" in message:
        hint = "YAML does not allow tabs for indentation; indent with spaces"
    elif "duplicate key" in message:
        hint = "each key may appear once per mapping; remove or merge the repeated key"
    elif "expected a single document" in message:
        hint = "a spec is one YAML document; remove the extra '---' and what follows"
    elif "block end" in message or "block mapping" in message or "block collection" in message:
        hint = "check the indentation: the keys of one mapping start in the same column"
    elif "could not find expected ':'" in message:
        hint = "a line holds text that is not 'key: value'; add the ':' or remove the line"
    elif "mapping values are not allowed" in message:
        hint = "put a space after ':' and quote values that contain ': '"
    else:
        hint = None
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(shown, f"invalid YAML: {_one_line(message)}", line=line, col=col, hint=hint)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Converter:
    """ruamel's Commented* containers → dict/list, recording where each key and item starts.

    Refuses what plain data cannot hold: explicit tags (``!!python/object``, ``!!binary``,
    ``!custom``), recursive aliases and alias bombs.
    """

    def __init__(self, shown: str):
        self.shown = shown
        self.positions: dict[KeyPath, Position] = {}
        self.problems: list[Problem] = []
        self.nodes = 0
        self.active: set[int] = set()  # containers on the current path (recursive aliases)

    def convert(self, node: Any, path: KeyPath) -> Any:
        from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar

        self.nodes += 1
        if self.nodes > MAX_NODES:
            if self.nodes == MAX_NODES + 1:
                self._problem(
                    path,
                    f"the document expands to over {MAX_NODES} values (aliases?); a spec is small",
                )
            return None
        tag = getattr(getattr(node, "tag", None), "value", None)
        if isinstance(node, TaggedScalar) or (tag and tag not in PLAIN_TAGS):
            self._problem(
                path,
                f"YAML tag '{str(tag).replace('tag:yaml.org,2002:', '!!')}' is not allowed in a spec",
                hint="remove the tag: a spec holds plain data only",
            )
            return None
        if isinstance(node, (CommentedMap, CommentedSeq)):
            if id(node) in self.active:
                self._problem(path, "recursive alias: a value contains itself")
                return None
            self.active.add(id(node))
            try:
                return (
                    self._mapping(node, path)
                    if isinstance(node, CommentedMap)
                    else self._sequence(node, path)
                )
            finally:
                self.active.discard(id(node))
        if isinstance(node, str):
            if "\x00" in node:  # no path, name or option can hold one; the OS refuses it later
                self._problem(
                    path,
                    "contains a NUL character (\\0)",
                    hint="remove the \\0 escape from the value",
                )
                return None
            return str(node)  # drop ruamel's scalar string subclasses
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, datetime.date):
            return node  # an unquoted date: the schema says what it expected instead
        self._problem(
            path,
            f"a YAML {type(node).__name__} value is not allowed in a spec",
            hint="use plain strings, numbers, lists and mappings",
        )
        return None

    def _mapping(self, node: Any, path: KeyPath) -> dict[str, Any]:
        out = {}
        own = getattr(node.lc, "data", None) or {}
        for key in node:
            # keys merged in with `<<: *anchor` have no position of their own: use the mapping's
            line, col = node.lc.key(key) if key in own else (node.lc.line, node.lc.col)
            if key is None or not isinstance(key, (str, int, float)):
                shown = (
                    "null" if key is None else ("a mapping" if hasattr(key, "keys") else "a list")
                )
                problem = Problem(
                    self.shown,
                    f"a key must be a name, not {shown}",
                    path=path,
                    line=line + 1,
                    col=col + 1,
                )
                self.problems.append(problem)
                continue
            self.positions[path + (str(key),)] = (line + 1, col + 1)
            out[str(key)] = self.convert(node[key], path + (str(key),))
        return out

    def _sequence(self, node: Any, path: KeyPath) -> list[Any]:
        items = []
        own = getattr(node.lc, "data", None) or {}
        for index, item in enumerate(node):
            line, col = node.lc.item(index) if index in own else (node.lc.line, node.lc.col)
            self.positions[path + (index,)] = (line + 1, col + 1)
            items.append(self.convert(item, path + (index,)))
        return items

    def _problem(self, path: KeyPath, message: str, hint: str | None = None) -> None:
        line, col = self.positions.get(path, (None, None))
        self.problems.append(Problem(self.shown, message, path=path, line=line, col=col, hint=hint))


# --------------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> Override:
    """``a.b.c=VALUE`` → Override; VALUE is read as YAML (``4`` is an int, ``[1, 2]`` a list)."""
    where = f"--set {text}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(
            [
                Problem(
                    where,
                    "expected KEY=VALUE with a dotted key",
                    hint="e.g. --set finetune.lr=2e-4",
                )
            ]
        )
    parts = key.split(".")
    if any(not part.strip() for part in parts):
        raise SpecError(
            [
                Problem(
                    where,
                    f"malformed key '{key}'",
                    hint="use dots between names, e.g. prune.width.target_hidden_size",
                )
            ]
        )
    path: KeyPath = tuple(int(part) if part.isdigit() else part.strip() for part in parts)
    try:
        value, _ = parse_yaml(value_text, where) if value_text.strip() else (None, {})
    except SpecError as exc:
        raise SpecError(
            [
                Problem(
                    where,
                    p.message,
                    path=path,
                    hint=p.hint or "quote the value if it is meant as text",
                )
                for p in exc.problems
            ]
        ) from None
    return Override(text=text, path=path, value=value)


def apply_override(raw: dict[str, Any], override: Override) -> Problem | None:
    """Set ``override.value`` at its dotted path, creating mappings on the way.

    A numeric part indexes an existing list (``distill.students.0=depth``).
    """
    node: Any = raw
    for depth, part in enumerate(override.path):
        last = depth == len(override.path) - 1
        at = format_key_path(override.path[:depth]) or "the spec"
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                return Problem(
                    override.where,
                    f"{at} is a list of {len(node)} items; '{part}' is not an index of it",
                    path=override.path,
                )
        elif isinstance(node, dict):
            part = str(part)
        else:
            return Problem(
                override.where,
                f"{at} is not a mapping, so it has no key '{part}'",
                path=override.path,
            )
        if last:
            node[part] = override.value
            return None
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            child = {}
            node[part] = child
        node = child
    return None


# --------------------------------------------------------------------------------------------
# validation


def load_spec(
    file: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> LoadedSpec:
    """Read, override and validate a spec; raise :class:`SpecError` with every problem found."""
    loaded, problems = load_spec_partial(file, overrides)
    if problems or loaded is None:
        raise SpecError(problems)
    return loaded


def load_spec_partial(
    file: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> tuple[LoadedSpec | None, list[Problem]]:
    """Like :func:`load_spec`, but return the problems instead of raising, together with what
    validated (see the module docstring); the LoadedSpec is None when nothing could be read."""
    file = Path(file)
    shown = str(file)
    try:
        raw, positions = read_document(file)
    except SpecError as exc:
        return None, exc.problems
    if raw is None:
        return None, [
            Problem(
                shown,
                "the spec is empty",
                hint="start from specs/quickstart.yaml; a spec needs at least version, name, teacher and data",
            )
        ]
    if not isinstance(raw, dict):
        message = f"the spec must be a mapping of keys to values, not {_kind_of(raw)}"
        line = _first_content_line(file)
        hint = "a spec starts with keys such as 'version: 1'"
        return None, [Problem(shown, message, line=line, col=1 if line else None, hint=hint)]

    raw.pop("$schema", None)  # JSON specs name their schema for editors; it is not a setting
    problems: list[Problem] = []
    parsed: list[Override] = []
    for text in overrides:
        try:
            parsed.append(parse_override(text))
        except SpecError as exc:
            problems.extend(exc.problems)
    applied = []
    for override in parsed:
        problem = apply_override(raw, override)
        if problem:
            problems.append(problem)
        else:
            applied.append(override)

    _absolutize_paths(raw, base=file.resolve().parent, overrides=applied)
    from pydantic import ValidationError

    try:
        spec = Spec.model_validate(raw, strict=True)
    except ValidationError as exc:
        schema_problems = validation_problems(exc, raw, file, positions, applied)
        invalid = {_unit(p.path) for p in schema_problems}
        spec = _partial_spec(raw, invalid)
        return LoadedSpec(file, spec, raw, positions, applied, invalid), problems + schema_problems
    return LoadedSpec(
        file=file, spec=spec, raw=raw, positions=positions, overrides=applied
    ), problems


def _first_content_line(file: Path) -> int | None:
    """The first line that is neither blank nor a comment (where the document starts)."""
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for number, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "plain text" if " " in value.strip() else f"the single word {value!r}"
    return f"a single {type(value).__name__} value"


def _unit(path: KeyPath) -> KeyPath:
    """The unit an error invalidates: a prune variant, else its top-level block."""
    if len(path) >= 2 and path[0] == "prune":
        return path[:2]
    return path[:1]


def _partial_spec(raw: dict[str, Any], invalid: set[KeyPath]) -> Spec:
    """A Spec holding the units that validate on their own; the others keep their defaults
    (required ones stay unset) and are named in ``invalid``, so rules can skip them."""
    from pydantic import ValidationError

    validator = Spec.__pydantic_validator__
    spec = Spec.model_construct()
    for name in Spec.model_fields:
        if name not in raw or (name,) in invalid:
            continue
        value = raw[name]
        if name == "prune" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if ("prune", k) not in invalid}
        elif any(unit[:1] in ((), (name,)) for unit in invalid):
            continue
        try:
            validator.validate_assignment(spec, name, value, strict=True)
        except ValidationError:  # an error the first pass reported under another path
            invalid.add((name,))
    return spec


def _absolutize_paths(raw: dict[str, Any], *, base: Path, overrides: list[Override]) -> None:
    overridden = {o.path for o in overrides}
    for path in PATH_FIELDS:
        parent = raw
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = parent.get(path[-1])
        if (
            not isinstance(value, str)
            or not value
            or value.startswith(REMOTE_PREFIXES)
            or "://" in value
        ):
            continue
        root = Path.cwd() if any(path[: len(o)] == o for o in overridden) else base
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
        # `--set prune.0=1` reads 0 as an index; the problem may name it as the key '0'
        if [str(p) for p in path[: len(override.path)]] == [str(p) for p in override.path]:
            return Problem(override.where, message, path=path, hint=hint, severity=severity)
    for override in reversed(overrides):
        # a key the file does not have, brought in only by this override (`--set distil.steps=3`)
        if override.path[: len(path)] == path and path not in positions:
            return Problem(override.where, message, path=path, hint=hint, severity=severity)
    probe = path
    while probe and probe not in positions:
        probe = probe[:-1]
    line, col = positions.get(probe, (None, None))
    return Problem(str(file), message, path=path, line=line, col=col, hint=hint, severity=severity)


def validation_problems(
    exc: Any,
    raw: dict[str, Any],
    file: Path,
    positions: dict[KeyPath, Position],
    overrides: list[Override],
) -> list[Problem]:
    """pydantic errors → located problems with messages that say how to fix them."""

    problems = []
    seen = set()
    for error in exc.errors(include_url=False):
        path = data_path(error["loc"], raw)
        message, hint = explain(error, path, raw)
        if error["type"] == "union_tag_invalid" and isinstance(error.get("input"), dict):
            path = path + ("kind",)  # the bad value stands at the variant's `kind:`
        key = (path, message)
        if key in seen:
            continue
        seen.add(key)
        problems.append(locate(file, positions, overrides, path, message, hint=hint))
    return problems


def data_path(loc: tuple[Any, ...], raw: Any) -> KeyPath:
    """pydantic's error location → the key path in the user's data.

    pydantic inserts union tags (``'width'`` for a ``kind: width`` variant), ``[key]`` markers
    and validator names into ``loc``; those are not keys of the data, so they are skipped.
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
