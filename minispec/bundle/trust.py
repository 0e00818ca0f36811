"""What a bundle may make ``reproduce`` do: only what minispec itself would do.

A manifest is a sha256 list that anyone can recompute, so its checksums say nothing about who
wrote the bundle. What protects a machine that reproduces a stranger's bundle:

- **commands**: the bundled ``dvc.yaml`` must be exactly what this minispec compiles from the
  bundled ``params.yaml`` (validated as a spec); the first difference is named and the bundle
  refused. DVC then runs only commands minispec wrote.
- **paths**: every path the bundle writes to or copies from (``dvc.lock`` outs and deps,
  manifest fields) is relative, normalized and inside the workspace, outside ``.dvc``/``.git``.
  Inputs outside the pipeline directory (absolute, or leading ``../`` as a spec beside its data
  compiles to) are never copied or written, only looked for where the original run had them;
  a path with ``..`` inside it is a forgery (DVC and minispec write normalized paths).

``verify`` reports these problems with the others; ``reproduce`` checks them again on the
unpacked workspace right before DVC runs.
"""

from __future__ import annotations

import posixpath
from typing import Any

from minispec import layout
from minispec.bundle.dvchash import Lock
from minispec.params import parse_params, validate_params

PIPELINE = "pipeline"
SPEC_DIR = "spec"
RESOLVED_SPEC = f"{SPEC_DIR}/resolved.json"
RESERVED_TOPS = (".dvc", ".git")
PIPELINE_NAMES = (layout.DVC_FILE, layout.PARAMS_FILE, "dvc.lock", ".dvcignore")


def escapes(path: str) -> str | None:
    """Why the relative ``path`` would leave the workspace (or touch DVC's/git's files), else None."""
    if not isinstance(path, str) or not path:
        return "not a path"
    if "\x00" in path:
        return "NUL in path"
    text = path.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return "absolute path"
    normalized = posixpath.normpath(text)
    if normalized == ".." or normalized.startswith("../") or ".." in text.split("/"):
        return "'..' leads outside the workspace"
    if normalized.split("/")[0] in RESERVED_TOPS:
        return f"inside {normalized.split('/')[0]}/, which belongs to DVC or git"
    return None


def is_external(path: str) -> bool:
    """An input outside the pipeline directory: absolute, or a normalized path leading up with
    ``../`` (a spec beside the data, compiled with --out runs/x). Never copied or written;
    reproduce looks for it at the same place relative to the workspace, as the original run did."""
    text = path.replace("\\", "/")
    normalized = posixpath.normpath(text)
    return text.startswith("/") or (
        normalized == text.rstrip("/") and (normalized == ".." or normalized.startswith("../"))
    )


def input_problem(path: str) -> str | None:
    """Why a dep or input path is refused: forged (not normalized), or in DVC's/git's files."""
    if not isinstance(path, str) or "\x00" in path:
        return "not a path"
    if is_external(path):
        return None
    text = path.replace("\\", "/").rstrip("/")
    if posixpath.normpath(text) != text:
        return "'..' or '.' inside the path would lead outside the workspace (DVC and minispec write normalized paths)"
    return escapes(path)


def lock_problems(lock: Lock) -> list[str]:
    """Every out must stay in the workspace; deps too, unless external inputs (read only)."""
    problems = []
    for kind, entries in (("out", lock.outs), ("dep", lock.deps)):
        for entry in entries:
            why = escapes(entry.path) if kind == "out" else input_problem(entry.path)
            if why:
                problems.append(
                    f"{PIPELINE}/dvc.lock: {kind} {entry.path!r} of stage '{entry.stage}': {why}; refused"
                )
    return problems


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """The manifest's fields name members of this bundle, in their fixed places."""
    problems = []
    where = "manifest.json"
    if manifest.get("pipeline_dir", PIPELINE) != PIPELINE:
        problems.append(
            f"{where}: pipeline_dir {manifest.get('pipeline_dir')!r} must be {PIPELINE!r}"
        )
    if manifest.get("resolved_spec", RESOLVED_SPEC) != RESOLVED_SPEC:
        problems.append(
            f"{where}: resolved_spec {manifest.get('resolved_spec')!r} must be {RESOLVED_SPEC!r}"
        )
    spec_file = manifest.get("spec_file")
    if spec_file is not None:
        name = spec_file[len(SPEC_DIR) + 1 :] if isinstance(spec_file, str) else ""
        if (
            not isinstance(spec_file, str)
            or not spec_file.startswith(f"{SPEC_DIR}/")
            or escapes(spec_file)
            or "/" in name
            or name.startswith(".")
            or name in PIPELINE_NAMES
            or spec_file == RESOLVED_SPEC
        ):
            problems.append(
                f"{where}: spec_file {spec_file!r} is not a file name under {SPEC_DIR}/ (refused: it would be copied into the workspace)"
            )
        elif spec_file not in (manifest.get("files") or {}):
            problems.append(f"{where}: spec_file {spec_file!r} is not a member of the bundle")
    outs = manifest.get("outs") or []
    if not isinstance(outs, list):
        problems.append(f"{where}: outs must be a list of paths")
        outs = []
    for out in outs:
        why = escapes(out) if isinstance(out, str) else "not a path"
        if why:
            problems.append(f"{where}: out {out!r}: {why}; refused")
    return problems


def params_path_problems(params: dict[str, Any]) -> list[str]:
    """Local relative paths in params.yaml (teacher, data) must not lead out of the workspace."""
    from minispec.sources import parse_source
    from minispec.spec.load import PATH_FIELDS

    problems = []
    for key in PATH_FIELDS:
        value: Any = params
        for part in key:
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, str):
            continue
        try:
            local = parse_source(value).is_local
        except Exception:  # an invalid source is the spec validation's problem
            continue
        if local:
            why = input_problem(value)
            if why:
                problems.append(
                    f"{PIPELINE}/params.yaml: {'.'.join(key)} {value!r}: {why}; refused"
                )
    return problems


# ---- commands ---------------------------------------------------------------------------------


def command_problems(dvc_text: str, params_text: str) -> list[str]:
    """Differences between the bundled ``dvc.yaml`` and what minispec compiles from ``params.yaml``."""
    from minispec.compile.dvc import split_header

    try:
        compiled = compile_params(params_text)
    except Exception as exc:  # invalid params: nothing to compile, so nothing may run
        return [
            f"{PIPELINE}/params.yaml: not a spec minispec can compile ({_one_line(exc)}); refused"
        ]
    body = split_header(dvc_text)[1]
    if body == compiled:
        return []
    return [
        f"{PIPELINE}/dvc.yaml: {difference}; minispec compiles something else from the bundled params.yaml, so the bundle's commands are refused"
        for difference in describe_differences(body, compiled)
    ]


def compile_params(params_text: str) -> str:
    """The body of ``dvc.yaml`` (no header) that minispec compiles from a resolved ``params.yaml``.

    params.yaml's paths are already relative to the pipeline directory, as the compiler wrote them.
    """
    from minispec.compile.dvc import pipeline_document, render_yaml
    from minispec.compile.graph import attach_commands, build_graph
    from minispec.report.dvcplots import dvc_plots

    spec = validate_params(parse_params(params_text))
    stages = attach_commands(spec, build_graph(spec))
    return render_yaml(pipeline_document(stages, report_plots=dvc_plots(spec, stages)))


def describe_differences(actual_text: str, expected_text: str) -> list[str]:
    """Per stage and field: what the bundle has that the compiler does not (first few)."""
    from minispec.spec.load import parse_yaml

    try:
        actual, _ = parse_yaml(actual_text, layout.DVC_FILE)
    except Exception as exc:
        return [f"not readable YAML ({_one_line(exc)})"]
    expected, _ = parse_yaml(expected_text, layout.DVC_FILE)
    if not isinstance(actual, dict):
        return ["not a mapping"]
    found = []
    for top in sorted(set(actual) | set(expected)):
        a, e = actual.get(top), expected.get(top)
        if a == e:
            continue
        if top != "stages" or not isinstance(a, dict) or not isinstance(e, dict):
            found.append(f"'{top}' differs")
            continue
        for stage in sorted(set(a) | set(e)):
            if stage not in e:
                found.append(f"stage '{stage}' is not one minispec compiles")
            elif stage not in a:
                found.append(f"stage '{stage}' is missing")
            elif a[stage] != e[stage]:
                found += _field_differences(stage, a[stage], e[stage])
    return found[:10] or ["differs in formatting or comments from the compiled text"]


def _field_differences(stage: str, actual: Any, expected: Any) -> list[str]:
    if not isinstance(actual, dict):
        return [f"stage '{stage}' is not a mapping"]
    found = []
    for key in sorted(set(actual) | set(expected)):
        if actual.get(key) != expected.get(key):
            shown = _short(actual.get(key))
            found.append(f"stage '{stage}' {key}: {shown} (compiled: {_short(expected.get(key))})")
    return found


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
