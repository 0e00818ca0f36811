"""``minispec bundle reproduce``: rerun a bundled pipeline in a fresh workspace and compare.

Steps: verify the bundle; unpack it (safely) into ``DIR/bundle``; build ``DIR/workspace`` from
the pipeline definition and its inputs only (dvc.yaml, params.yaml, the spec, source deps — no
outputs, no dvc.lock); ``dvc init --no-scm``; run the pipeline; compare every metric in
``metrics/`` with the bundle's and the environment with the recorded one.

Timing metrics (tokens/s, latency, seconds) are shown but never fail a reproduction: they
measure the machine, not the result. Everything else must agree within ``rtol``/``atol``
(``|new - old| <= atol + rtol * |old|``); CPU runs are deterministic, so the defaults are 0.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minispec import layout
from minispec.bundle import dvchash, trust
from minispec.bundle.archive import BundleError, safe_extract
from minispec.bundle.create import LOCK_FILE, PIPELINE, PIPELINE_FILES
from minispec.bundle.verify import verify_bundle
from minispec.dvcdriver import dvc_argv, dvc_env
from minispec.errors import PipelineError
from minispec.params import parse_params, read_params

TIMING = re.compile(r"(per_second|seconds|latency|throughput|duration|elapsed|(^|_)time$)")
# how a run came about, not what it produced: a run resumed after a kill records the step it
# resumed from; a rerun from scratch has none
PROVENANCE = re.compile(r"^resumed_from")


def run_pipeline(workspace: Path) -> None:
    """Run the whole pipeline in ``workspace``: ``dvc repro --force`` (no run-cache shortcuts),
    with the DVC of this environment (:mod:`minispec.dvcdriver`, as ``minispec run``)."""
    done = subprocess.run(
        [*dvc_argv(), "repro", "--force"], cwd=workspace, env=dvc_env(offline=True), check=False
    )
    if done.returncode != 0:
        raise PipelineError(
            f"the pipeline failed in {workspace} (`dvc repro` exited with {done.returncode})",
            hint="see the stage output above",
        )


def init_dvc(workspace: Path) -> None:
    done = subprocess.run(
        [*dvc_argv(), "init", "--no-scm", "-q"],
        cwd=workspace,
        env=dvc_env(offline=True),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PipelineError(f"`dvc init` failed in {workspace}: {done.stderr.strip()}")


# ---- metrics --------------------------------------------------------------------------------


@dataclass
class MetricDiff:
    file: str
    key: str
    old: Any
    new: Any
    status: str  # same | within | differs | timing | provenance | missing | added

    @property
    def fails(self) -> bool:
        return self.status in ("differs", "missing")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def read_metrics(pipeline_dir: Path) -> dict[str, dict[str, Any]]:
    """``{metrics/<file>.json: {flat.key: value}}`` of a pipeline directory."""
    folder = pipeline_dir / layout.METRICS_DIR
    found = {}
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        rel = path.relative_to(pipeline_dir).as_posix()
        try:
            found[rel] = flatten(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            found[rel] = {"<unreadable>": str(exc)}
    return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_metrics(
    old: dict[str, dict[str, Any]],
    new: dict[str, dict[str, Any]],
    rtol: float = 0.0,
    atol: float = 0.0,
) -> list[MetricDiff]:
    diffs = []
    for file in sorted(set(old) | set(new)):
        before, after = old.get(file, {}), new.get(file, {})
        for key in sorted(set(before) | set(after)):
            a, b = before.get(key), after.get(key)
            if PROVENANCE.search(key.rsplit(".", 1)[-1]) and a != b:
                status = "provenance"
            elif key not in after:
                status = "missing"
            elif key not in before:
                status = "added"
            elif a == b:
                status = "same"
            elif TIMING.search(key.rsplit(".", 1)[-1]):
                status = "timing"
            elif _number(a) and _number(b) and math.isfinite(a) and math.isfinite(b):
                status = "within" if abs(b - a) <= atol + rtol * abs(a) else "differs"
            else:
                status = "differs"
            diffs.append(MetricDiff(file, key, a, b, status))
    return diffs


# ---- reproduce ------------------------------------------------------------------------------


@dataclass
class ReproduceResult:
    directory: Path
    workspace: Path
    metrics: list[MetricDiff]
    environment: list[str]
    outs_same: list[str] = field(default_factory=list)
    outs_changed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.fails for d in self.metrics) and any(
            d.status not in ("added", "provenance") for d in self.metrics
        )


def prepare_directory(directory: Path | None) -> Path:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="minispec-reproduce-"))
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BundleError(
            f"{directory} is not empty: reproduce needs a fresh directory",
            hint="pass a new --dir (or remove this one)",
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def reproduce_bundle(
    bundle: Path,
    directory: Path | None = None,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    runner: Callable[[Path], None] | None = None,
    trust_remote_code: bool = False,
) -> ReproduceResult:
    """Rerun ``bundle`` in ``directory`` (fresh); ``runner(workspace)`` runs the pipeline
    (default :func:`run_pipeline`). A bundle whose spec enables ``teacher.trust_remote_code``
    is refused unless the caller passes ``trust_remote_code`` too."""
    verified = verify_bundle(bundle).raise_for_problems()
    refuse_remote_code(verified, trust_remote_code)
    directory = prepare_directory(directory)
    unpacked = directory / "bundle"
    safe_extract(bundle, unpacked)
    recorded = unpacked / PIPELINE
    lock = dvchash.read_lock((recorded / LOCK_FILE).read_text(encoding="utf-8"))

    workspace = directory / "workspace"
    build_workspace(recorded, workspace, lock, verified.manifest, unpacked)
    check_workspace_commands(workspace)
    init_dvc(workspace)
    (runner or run_pipeline)(workspace)

    from minispec.bundle.environment import capture, differences

    params = read_params(workspace / layout.PARAMS_FILE)
    result = ReproduceResult(
        directory,
        workspace,
        compare_metrics(read_metrics(recorded), read_metrics(workspace), rtol, atol),
        differences(verified.environment, capture(workspace, params)),
    )
    _compare_outs(lock, workspace, result)
    return result


def build_workspace(
    recorded: Path, workspace: Path, lock: dvchash.Lock, manifest: dict[str, Any], unpacked: Path
) -> None:
    """The pipeline's definition and inputs, without any of its outputs."""
    workspace.mkdir(parents=True)
    for name in PIPELINE_FILES:
        if (recorded / name).is_file():
            shutil.copy2(recorded / name, workspace / name)
    spec_file = manifest.get("spec_file")
    if spec_file and not trust.manifest_problems(manifest) and (unpacked / spec_file).is_file():
        shutil.copy2(unpacked / spec_file, workspace / Path(spec_file).name)
    problems = trust.lock_problems(lock)  # verify said so too; the copy below relies on it
    if problems:
        raise BundleError("\n  ".join(["the bundle's paths leave the workspace:", *problems]))
    missing = []
    for dep in lock.source_deps():
        source = recorded / dep.path
        if not trust.is_external(dep.path) and source.exists():  # inside: lock_problems checked
            target = workspace / dep.path
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        elif not (workspace / dep.path).exists():  # an input outside the pipeline directory
            missing.append(dep.path)
    if missing:
        raise BundleError(
            "inputs outside the pipeline directory are not in the bundle and not found from "
            f"{workspace}: {', '.join(sorted(missing))}",
            hint="make them available at the same paths (absolute paths in the spec make this easy), then rerun",
        )


def refuse_remote_code(verified, allowed: bool) -> None:
    """The bundle's author chose trust_remote_code; the person reproducing must choose it too."""
    from minispec.bundle.verify import PARAMS_MEMBER

    params = parse_params(verified.contents[PARAMS_MEMBER].decode("utf-8"))
    teacher = params.get("teacher")
    if isinstance(teacher, dict) and teacher.get("trust_remote_code") is True and not allowed:
        raise BundleError(
            f"{verified.path}: the bundled spec sets teacher.trust_remote_code: true, so reproducing it would run Python code from the teacher's repository ({teacher.get('source')}); refused",
            hint="pass --trust-remote-code if you trust that repository",
        )


def check_workspace_commands(workspace: Path) -> None:
    """Right before DVC runs: the workspace's dvc.yaml is what minispec compiles from its params."""
    problems = trust.command_problems(
        (workspace / layout.DVC_FILE).read_text(encoding="utf-8"),
        (workspace / layout.PARAMS_FILE).read_text(encoding="utf-8"),
    )
    if problems:
        raise BundleError(
            "refusing to run the bundle's pipeline:\n  " + "\n  ".join(problems),
            hint="only pipelines minispec compiled from the bundled spec are reproduced",
        )


def _compare_outs(lock: dvchash.Lock, workspace: Path, result: ReproduceResult) -> None:
    """Which outs came out bit-identical (informational: logs carry timestamps, GPUs differ)."""
    new_lock_file = workspace / LOCK_FILE
    if not new_lock_file.is_file():
        return
    new = {e.path: e.md5 for e in dvchash.read_lock(new_lock_file.read_text(encoding="utf-8")).outs}
    for entry in lock.outs:
        (result.outs_same if new.get(entry.path) == entry.md5 else result.outs_changed).append(
            entry.path
        )


def format_result(result: ReproduceResult, verbose: bool = False) -> str:
    """The metrics diff (changed values only unless ``verbose``), outputs and environment."""
    lines = [f"workspace: {result.workspace}", "", "metrics (bundle → reproduction):"]
    for d in result.metrics:
        if verbose or d.status != "same":
            lines.append(
                f"  {d.status.upper():8} {d.file}  {d.key}: {_fmt(d.old)} → {_fmt(d.new)}{_change(d)}"
            )
    compared = [d for d in result.metrics if d.status != "added"]
    same = sum(1 for d in result.metrics if d.status == "same")
    if not compared:
        lines.append("  the bundle holds no metrics to compare")
    lines.append(f"  {same} of {len(result.metrics)} values identical")
    if result.outs_same or result.outs_changed:
        total = len(result.outs_same) + len(result.outs_changed)
        lines += [
            "",
            f"DVC outputs bit-identical to the bundle's dvc.lock: {len(result.outs_same)} of {total}",
        ]
        lines += [f"  differs: {path}" for path in result.outs_changed]
    lines += [
        "",
        "environment differences:" if result.environment else "environment: no differences",
    ]
    lines += [f"  {line}" for line in result.environment]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.10g}"
    return value if isinstance(value, str) else json.dumps(value)


def _change(d: MetricDiff) -> str:
    if _number(d.old) and _number(d.new) and d.old and d.old != d.new:
        return f" ({(d.new - d.old) / abs(d.old):+.2%})"
    return ""
