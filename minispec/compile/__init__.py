"""Compile a validated spec into ``dvc.yaml`` + ``params.yaml`` (see :mod:`.graph`, :mod:`.dvc`).

``params.yaml`` is the resolved spec (defaults filled in) with local paths relative to the
pipeline directory: the stages read their settings from it, and DVC tracks the keys each stage
declares, so ``dvc exp run -S finetune.lr=2e-4`` works as DVC users expect.

Nothing here imports DVC, torch or transformers: ``minispec compile`` stays fast.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from minispec import layout
from minispec.compile.dvc import (
    generated_by_minispec,
    has_minispec_header,
    pipeline_document,
    render_yaml,
    with_header,
)
from minispec.compile.graph import attach_commands, build_graph, owner_of, upstream_closure
from minispec.errors import CompileError, PipelineError
from minispec.params import params_text
from minispec.report.dvcplots import dvc_plots
from minispec.shapes import teacher_paths_relative_to
from minispec.sources import parse_source
from minispec.spec.load import PATH_FIELDS, LoadedSpec
from minispec.spec.model import Spec
from minispec.steps import BY_NAME, Stage, step_of


@dataclass
class CompiledPipeline:
    out_dir: Path
    spec: Spec  # paths relative to out_dir, as written to params.yaml
    stages: list[Stage]
    dvc_yaml: str
    params_yaml: str

    @property
    def files(self) -> dict[Path, str]:
        return {
            self.out_dir / layout.PARAMS_FILE: self.params_yaml,
            self.out_dir / layout.DVC_FILE: self.dvc_yaml,
        }

    # what the runner asks of the pipeline (it never reads the graph's internals)

    def upstream(self, names: list[str]) -> list[Stage]:
        """``names`` and every stage they need, in graph order (what ``dvc repro NAME`` considers)."""
        return upstream_closure(self.stages, names)

    def select(self, stage: str | None) -> list[Stage]:
        """Every stage, or ``stage`` and what it needs, in graph order."""
        if stage is None:
            return list(self.stages)
        names = [s.name for s in self.stages]
        if stage not in names:
            raise PipelineError(
                f"no stage '{stage}' in this pipeline", hint=f"stages: {', '.join(names)}"
            )
        return self.upstream([stage])

    def direct_upstream(self, name: str) -> list[str]:
        """The stages whose outputs ``name`` reads, in graph order."""
        producer = {out.path: s.name for s in self.stages for out in s.outs + s.metrics}
        by_name = {s.name: s for s in self.stages}
        owners = {owner_of(dep, producer) for dep in by_name[name].deps}
        return [s.name for s in self.stages if s.name in owners]


def is_training_stage(name: str) -> bool:
    """A stage of a training step (the step table's ``trains``): it keeps resumable checkpoints."""
    step = BY_NAME.get(step_of(name))
    return step is not None and step.trains


def compile_pipeline(loaded: LoadedSpec, out_dir: str | os.PathLike[str]) -> CompiledPipeline:
    """The text of ``dvc.yaml`` and ``params.yaml`` for ``loaded`` in ``out_dir`` (nothing written)."""
    out_dir = Path(out_dir).absolute()
    refuse_braces(out_dir)
    spec = relative_spec(loaded.spec, out_dir)
    with teacher_paths_relative_to(out_dir):  # the paths of `spec` are, from here on
        stages = attach_commands(spec, build_graph(spec))
    source = source_description(loaded, out_dir)
    dvc_body = render_yaml(pipeline_document(stages, report_plots=dvc_plots(spec, stages)))
    return CompiledPipeline(
        out_dir=out_dir,
        spec=spec,
        stages=stages,
        dvc_yaml=with_header(dvc_body, source, "The DVC pipeline of the spec."),
        params_yaml=params_text(spec, source),
    )


def refuse_braces(out_dir: Path) -> None:
    """DVC formats paths into its progress messages with str.format: '{x}' in the pipeline's
    path fails every stage (KeyError 'x') after it ran. Refuse it before anything runs."""
    if "{" in str(out_dir) or "}" in str(out_dir):
        raise CompileError(
            f"{out_dir}: DVC cannot run a pipeline in a directory whose path holds '{{' or '}}'",
            hint="choose a --out without braces",
        )


def relative_spec(spec: Spec, out_dir: Path) -> Spec:
    """A copy of ``spec`` whose local paths are relative to ``out_dir`` (POSIX separators)."""
    data = spec.model_dump(mode="python")
    for path in PATH_FIELDS:
        parent = data
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or not isinstance(parent.get(path[-1]), str):
            continue
        value = parent[path[-1]]
        if parse_source(value).is_local:
            parent[path[-1]] = Path(os.path.relpath(Path(value).absolute(), out_dir)).as_posix()
    return Spec.model_validate(data)


def source_description(loaded: LoadedSpec, out_dir: Path) -> str:
    """The spec's path relative to ``out_dir`` plus its ``--set`` overrides, for the header."""
    spec_path = Path(os.path.relpath(loaded.file.absolute(), out_dir)).as_posix()
    return " ".join([spec_path, *(f"--set {o.text}" for o in loaded.overrides)])


# --------------------------------------------------------------------------------------------
# writing and checking


def write_pipeline(compiled: CompiledPipeline, *, force: bool = False) -> list[Path]:
    """Write both files atomically; return those whose content changed.

    A ``dvc.yaml`` that minispec did not write (or that was edited since) is never replaced
    unless ``force``; nor is a ``params.yaml`` without minispec's header beside such a file.
    Both files are prepared before either is replaced, so a failure leaves the old pair.
    """
    out_dir = compiled.out_dir
    refuse_foreign_files(out_dir, force=force)
    changed = {path: text for path, text in compiled.files.items() if read_text(path) != text}
    if not changed:
        return []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        temps = {path: write_temp(path, text) for path, text in changed.items()}
    except OSError as exc:
        raise CompileError(
            f"cannot write the pipeline to {out_dir}: {exc.strerror or exc}",
            hint="choose a writable directory with --out",
        ) from None
    try:
        for path, temp in temps.items():
            os.replace(temp, path)
    except OSError as exc:
        raise CompileError(f"cannot replace {exc.filename}: {exc.strerror or exc}") from None
    finally:
        for temp in temps.values():
            Path(temp).unlink(missing_ok=True)
    return list(changed)


def write_temp(path: Path, text: str) -> str:
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return temp


def refuse_foreign_files(out_dir: Path, *, force: bool) -> None:
    if force:
        return
    dvc_file = out_dir / layout.DVC_FILE
    params_file = out_dir / layout.PARAMS_FILE
    dvc_text = read_text(dvc_file)
    if dvc_text is not None and not generated_by_minispec(dvc_text):
        what = (
            "was generated by minispec but edited by hand since"
            if has_minispec_header(dvc_text)
            else "was not generated by minispec"
        )
        raise CompileError(
            f"{dvc_file} {what}; refusing to overwrite it",
            hint="move it away, or replace it with `minispec compile --force`",
        )
    params_text = read_text(params_file)
    # params.yaml beside a minispec dvc.yaml is ours even if DVC rewrote it (dvc exp run -S)
    if params_text is not None and dvc_text is None and not has_minispec_header(params_text):
        raise CompileError(
            f"{params_file} was not generated by minispec; refusing to overwrite it",
            hint="move it away, or replace it with `minispec compile --force`",
        )


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (NotADirectoryError, IsADirectoryError) as exc:
        raise CompileError(
            f"cannot read {path}: {exc.strerror}", hint="choose another directory with --out"
        ) from None
    except UnicodeDecodeError:
        return ""  # not text, so not ours


def drift(compiled: CompiledPipeline) -> list[str]:
    """Unified diffs of every file that differs from what the spec compiles to (empty: in sync)."""
    diffs = []
    for path, expected in compiled.files.items():
        actual = read_text(path)
        if actual == expected:
            continue
        if actual is None:
            diffs.append(f"{path} is missing\n")
            continue
        name = path.name
        diffs.append(
            "".join(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    fromfile=f"{name} (on disk)",
                    tofile=f"{name} (compiled from the spec)",
                )
            )
        )
    return diffs
