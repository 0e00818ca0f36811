"""``minispec run`` and ``minispec status``: lint → compile → DVC.

DVC does the bookkeeping (what changed, what is cached, dvc.lock); minispec drives it:

* :func:`run` writes the compiled pipeline, makes sure a DVC repository holds it (``dvc init``,
  with ``--no-scm`` outside git, ``--subdir`` below a git root), then runs ``dvc repro`` as a
  subprocess and reads its output line by line: a progress line per stage (cached / running /
  done, elapsed), each stage's output echoed and also written to ``logs/<stage>.log``, and on a
  failure the stage name, its log and its exit code. DVC records every finished stage in
  ``dvc.lock`` as it goes, so a rerun resumes after them.
* :func:`status` asks ``dvc status --json`` and ``dvc.lock`` about every stage.

DVC is imported by nobody here: :mod:`minispec.dvcdriver` runs it as ``python -m dvc`` of the
interpreter that runs minispec, so the two always come from the same environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from minispec import layout
from minispec.compile import (
    CompiledPipeline,
    compile_pipeline,
    drift,
    is_training_stage,
    write_pipeline,
)
from minispec.console import StageOutput
from minispec.dvcdriver import dvc_argv, dvc_env, run_dvc, tool_path
from minispec.engines import get_engine
from minispec.errors import PipelineError
from minispec.offline_plots import ensure_offline_plots
from minispec.params import parse_params
from minispec.runlock import holding_run_lock
from minispec.shell import join as shell_join
from minispec.spec.load import LoadedSpec
from minispec.steps import Stage, resolve

Echo = Callable[[str], None]

# What `dvc repro` prints (dvc/stage/run.py, dvc/stage/__init__.py, dvc/stage/cache.py,
# dvc/stage/exceptions.py); tests run real DVC, so a change in these messages shows up there.
RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':$")
SKIPPED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping$")
RUN_CACHED = re.compile(
    r"^Stage '(?P<stage>[^']+)' is cached - skipping run, checking out outputs$"
)
LOCK_UPDATED = re.compile(r"^(Updating|Generating) lock file '.*'$")
FAILED = re.compile(
    r"^ERROR: failed to reproduce '(?P<stage>[^']+)': (?P<why>.*?)(, exited with (?P<code>-?\d+))?$"
)
DVC_NOISE = re.compile(
    r"^(Use `dvc push` to send your updates to remote storage\.|To track the changes with git, run:|To enable auto staging, run:|\tgit add .*|\tdvc config core\.autostage true)$"
)


# --------------------------------------------------------------------------------------------
# DVC itself (how it is called: minispec.dvcdriver)


def find_up(start: Path, name: str, want_dir: bool = True) -> Path | None:
    """The nearest directory at or above ``start`` that holds ``name`` (DVC and git search so)."""
    probe = start.absolute()
    while True:
        candidate = probe / name
        if candidate.is_dir() if want_dir else candidate.exists():
            return probe
        if probe.parent == probe or os.path.ismount(probe):
            return None
        probe = probe.parent


def ensure_repo(out_dir: Path, echo: Echo) -> Path:
    """The DVC repository that holds ``out_dir``; ``dvc init`` one there if there is none."""
    root = find_up(out_dir, ".dvc")
    git_root = find_up(out_dir, ".git", want_dir=False)
    ignored = git_root is not None and git_ignored(git_root, out_dir)
    # a DVC project above a git-ignored out_dir is used only when it is git-ignored too (a
    # project of its own, made by an earlier run); the enclosing versioned project is not
    if root is not None and (not ignored or git_ignored(git_root, root)):
        return root
    args = ["init", "--quiet"]
    if git_root is None:
        args.append("--no-scm")
        how = "without git"
    elif ignored:
        # e.g. runs/quickstart in this repository: git ignores it, so the enclosing DVC project
        # could not version it, and `dvc metrics show` there would list the enclosing
        # pipeline's metrics too. It becomes a DVC project of its own.
        args.append("--no-scm")
        how = f"without git: {git_root} ignores it"
    elif git_root.resolve() != out_dir.resolve():
        args.append("--subdir")
        how = f"inside the git repository {git_root}"
    else:
        how = "in its git repository"
    result = run_dvc(args, out_dir)
    if result.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed in {out_dir}: {last_error(result.stderr + result.stdout)}"
        )
    echo(f"initialized a DVC repository in {out_dir} ({how})")
    return out_dir


def git_ignored(git_root: Path, path: Path) -> bool:
    """Whether git ignores ``path`` (``git check-ignore``; False when git is unavailable)."""
    git = shutil.which("git")
    if git is None:
        return False
    done = subprocess.run(
        [git, "check-ignore", "-q", str(path.absolute())], cwd=git_root, capture_output=True
    )
    return done.returncode == 0


# Outputs DVC leaves to git that do not belong there: resumable training state (large, not
# cached on purpose) and the stage logs minispec writes.
GIT_IGNORED = ("/" + layout.CHECKPOINTS_DIR + "/", "/" + layout.LOGS_DIR + "/*.log")


def ensure_gitignore(out_dir: Path) -> None:
    """Inside git, keep checkpoints and stage logs out of ``git status`` (as DVC does for its outputs)."""
    if find_up(out_dir, ".git", want_dir=False) is None:
        return
    path = out_dir / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in text.splitlines()}
    missing = [entry for entry in GIT_IGNORED if entry not in present]
    if missing:
        prefix = "" if not text or text.endswith("\n") else "\n"
        with path.open("a", encoding="utf-8") as handle:
            handle.write(
                prefix
                + "# minispec: resumable checkpoints and stage logs\n"
                + "".join(e + "\n" for e in missing)
            )


def last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]


def check_tools(compiled: CompiledPipeline, stages: list[Stage]) -> None:
    """The programs stage commands start must be on PATH, or DVC fails with a bare 127."""
    needed = sorted({argv[0] for stage in stages for argv in stage.cmd})
    search = tool_path(os.environ.get("PATH", ""))  # what the stages will see (dvc_env)
    missing = [tool for tool in needed if shutil.which(tool, path=search) is None]
    if missing:
        raise PipelineError(
            f"stage commands need {', '.join(missing)} on PATH, which is not found",
            hint=f"activate the environment minispec is installed in (e.g. PATH={Path(sys.executable).parent}:$PATH)",
        )


# --------------------------------------------------------------------------------------------
# run


def select_stages(compiled: CompiledPipeline, stage: str | None) -> list[Stage]:
    """Every stage, or ``stage`` and what it needs, in graph order."""
    return compiled.select(stage)


def dry_run(compiled: CompiledPipeline, stage: str | None, echo: Echo) -> None:
    for item in select_stages(compiled, stage):
        commands = " && ".join(shell_join(argv) for argv in item.cmd)  # ShellWords stay bare
        echo(f"{item.name}: {commands}")


@holding_run_lock  # before anything is written: a second run in out_dir refuses at once
def run(
    loaded: LoadedSpec,
    out_dir: Path,
    *,
    stage: str | None = None,
    force: bool = False,
    dry: bool = False,
    echo: Echo = print,
    verbose: bool = False,
    warm_start: bool = True,
) -> None:
    """Compile ``loaded`` into ``out_dir`` and reproduce it (or print its commands when ``dry``).

    The console gets one line per stage; stage output goes to ``logs/`` (and, ``verbose``,
    to the console too; :mod:`minispec.console`). With ``warm_start`` the torch stages are
    forks of one process that imported torch once (:mod:`minispec.engines.torch.warm`)."""
    compiled = compile_pipeline(loaded, out_dir)
    selected = select_stages(compiled, stage)
    if dry:
        dry_run(compiled, stage, echo)
        return
    dvc_argv()  # fail before writing anything when DVC is missing
    check_tools(compiled, selected)
    for line in params_edits(compiled):
        echo(line)
    for path in write_pipeline(compiled):
        echo(f"compiled {path}")
    repo = ensure_repo(compiled.out_dir, echo)
    ensure_gitignore(compiled.out_dir)
    ensure_offline_plots(repo, echo)
    monitor = ReproMonitor(
        compiled.out_dir, total=len(selected), echo=echo, output=StageOutput.for_console(verbose)
    )
    if force:
        discard_checkpoints(
            compiled.out_dir, [stage] if stage else [s.name for s in selected], echo
        )
    with warm_stages(compiled.spec.engine, warm_start) as server_env:
        if stage is not None and force:
            # `dvc repro -f X` would force everything X needs too: bring those up to date
            # normally, then force X alone.
            parents = compiled.direct_upstream(stage)
            if parents:
                repro(compiled.out_dir, parents, monitor, env=server_env)
            repro(compiled.out_dir, [stage], monitor, force=True, single_item=True, env=server_env)
        else:
            repro(compiled.out_dir, [stage] if stage else [], monitor, force=force, env=server_env)
    monitor.summary()


def warm_stages(engine: str, enabled: bool) -> contextlib.AbstractContextManager[dict[str, str]]:
    """The engine's warm stage server for one ``dvc repro`` (``Engine.STAGE_SERVER``): the
    environment entries its stages find it by; none for an engine without one."""
    server = get_engine(engine).STAGE_SERVER
    return resolve(server)(enabled=enabled) if server else contextlib.nullcontext({})


def params_edits(compiled: CompiledPipeline) -> list[str]:
    """A warning naming every ``params.yaml`` value that differs from what the spec compiles to
    (e.g. after ``dvc exp run -S KEY=VALUE``): ``minispec run`` rewrites ``params.yaml`` from
    the spec, so such an edit is about to be undone."""
    from minispec.compile.dvc import generated_by_minispec

    path = compiled.out_dir / layout.PARAMS_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if generated_by_minispec(text):
        return []  # untouched since it was compiled: a spec change is no edit to warn about
    try:
        on_disk = parse_params(text, path.name)
    except Exception:  # unreadable: compiling replaces it, nothing to compare
        return []
    differing = leaf_differences(on_disk, compiled.spec.model_dump(mode="json"))
    if not differing:
        return []
    shown = ", ".join(f"{key} ({old!r} there, {new!r} in the spec)" for key, old, new in differing)
    return [
        f"warning: {path} differs from the spec in {shown}; it is recompiled from the spec now "
        "(to keep such a value, write it in the spec or pass --set KEY=VALUE)"
    ]


def leaf_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every leaf that differs (missing = None)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(new) + [k for k in old if k not in new]:
            out += leaf_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def discard_checkpoints(out_dir: Path, names: list[str], echo: Echo) -> None:
    """A forced rerun starts training afresh: a checkpoint would make it resume (or skip) instead."""
    for name in names:
        if not is_training_stage(name):
            continue
        path = out_dir / layout.checkpoint_dir(name)
        if path.exists():
            shutil.rmtree(path)
            echo(f"removed {path} (--force re-runs {name} from scratch)")


def repro(
    out_dir: Path,
    targets: list[str],
    monitor: ReproMonitor,
    *,
    force: bool = False,
    single_item: bool = False,
    env: dict[str, str] | None = None,
) -> None:
    args = ["repro"]
    if force:
        args.append("--force")
    if single_item:
        args.append("--single-item")
    args += targets
    process = subprocess.Popen(
        dvc_argv() + args,
        cwd=out_dir,
        env={**dvc_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # a signal to minispec alone reaches DVC only through stop_repro
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            monitor.feed(line.rstrip("\n"))
    except KeyboardInterrupt:
        stop_repro(process)
        raise
    finally:
        code = process.wait()
        monitor.close()
    if code != 0:
        raise monitor.failure(code)


def stop_repro(process: subprocess.Popen, grace: float = 30.0) -> None:
    """Ctrl-C (or SIGINT to minispec alone): interrupt DVC and the stage it runs, now.

    DVC ignores SIGINT while a stage runs and leaves it to the stage, which only a terminal's
    Ctrl-C reaches; so the whole process group gets SIGINT (the stage stops, DVC records
    nothing), then SIGTERM and SIGKILL if it lingers.
    """
    import signal

    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class ReproMonitor:
    """Turns ``dvc repro`` output into progress lines and per-stage logs."""

    out_dir: Path
    total: int
    echo: Echo
    seen: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    current: str | None = None
    started: float = 0.0
    log: IO[str] | None = None
    failed: tuple[str, str, int | None] | None = None  # stage, reason, exit code
    errors: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)  # stages whose command ran in this repro
    output: StageOutput = field(default_factory=StageOutput)  # stage lines: log only by default

    def feed(self, line: str) -> None:
        if match := RUNNING.match(line):
            self.finish()
            self.start(match["stage"])
        elif match := SKIPPED.match(line):
            self.finish()
            self.progress(match["stage"], "cached (up to date)")
        elif match := RUN_CACHED.match(line):
            self.finish()
            self.progress(match["stage"], "cached (restored from DVC's run cache)")
        elif LOCK_UPDATED.match(line):
            self.finish()
        elif match := FAILED.match(line):
            code = int(match["code"]) if match["code"] is not None else None
            self.failed = (match["stage"], match["why"], code)
            self.write_log(line)
            self.finish(ok=False)
        elif line.startswith("ERROR"):
            self.errors.append(line)
            self.output.clear()
            self.echo(line)
        elif DVC_NOISE.match(line) or (not line.strip() and self.current is None):
            pass
        else:
            self.write_log(line)
            self.output.line(line, self.echo)

    def progress(self, stage: str, state: str) -> None:
        if stage not in self.seen:
            self.seen.append(stage)
        index = self.seen.index(stage) + 1
        self.output.clear()
        self.echo(f"[{index:>2}/{self.total}] {stage:<20} {state}")

    def start(self, stage: str) -> None:
        self.current = stage
        self.launched.append(stage)
        self.started = time.monotonic()
        path = self.out_dir / layout.stage_log_path(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log = path.open("w", encoding="utf-8")
        if self.output.verbose:  # heads the stage's output; otherwise its `done` line suffices
            self.progress(stage, f"running (log: {layout.stage_log_path(stage)})")
        elif stage not in self.seen:
            self.seen.append(stage)  # its number in the summary is its place in the run
        self.output.begin(stage)

    def write_log(self, line: str) -> None:
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()

    def finish(self, ok: bool = True) -> None:
        if self.current is None:
            return
        elapsed = time.monotonic() - self.started
        stage = self.current
        self.close()
        if ok:
            self.ran.append(stage)
            self.progress(stage, f"done in {format_seconds(elapsed)}")
        else:
            self.progress(stage, f"FAILED after {format_seconds(elapsed)}")

    def close(self) -> None:
        self.output.end()
        if self.log is not None:
            self.log.close()
            self.log = None
        self.current = None

    def failure(self, code: int) -> PipelineError:
        if self.failed is None:
            detail = self.errors[-1] if self.errors else f"dvc repro exited with {code}"
            return PipelineError(f"dvc repro failed: {detail.removeprefix('ERROR: ')}")
        stage, why, exit_code = self.failed
        if stage not in self.launched:  # e.g. DVC's lock held elsewhere: its old log says nothing
            return not_started_failure(stage, why)
        log = self.out_dir / layout.stage_log_path(stage)
        shown = f"exit code {exit_code}" if exit_code is not None else why
        return PipelineError(
            f"stage '{stage}' failed ({shown}); its output is in {log}",
            hint=f"the stages before it are cached; fix the problem and run again to resume from '{stage}'",
        )

    def summary(self) -> None:
        ran = len(self.ran)
        cached = len(self.seen) - ran
        self.echo(f"pipeline up to date: {ran} stage{'s' if ran != 1 else ''} ran, {cached} cached")


def not_started_failure(stage: str, why: str) -> PipelineError:
    busy = "is busy" in why or "lock" in why
    return PipelineError(
        f"DVC could not start stage '{stage}': {why}",
        hint=(
            "another DVC process is using this pipeline; wait for it to finish, then run again"
            if busy
            else "nothing of this stage ran; fix the problem and run again"
        ),
    )


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


# --------------------------------------------------------------------------------------------
# status


@dataclass
class StageStatus:
    name: str
    state: str  # "up to date" | "changed" | "never run" | "stale" | "not compiled"
    details: list[str] = field(default_factory=list)

    def line(self, width: int) -> str:
        text = f"{self.name:<{width}}  {self.state}"
        return text + (f": {'; '.join(self.details)}" if self.details else "")


@dataclass
class PipelineStatus:
    stages: list[StageStatus]
    in_sync: bool  # dvc.yaml/params.yaml on disk are what the spec compiles to
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        width = max((len(s.name) for s in self.stages), default=5)
        return [*self.notes, *(s.line(width) for s in self.stages)]


def status(loaded: LoadedSpec, out_dir: Path) -> PipelineStatus:
    """Every stage of the spec's pipeline: up to date, changed (and what), never run, or stale."""
    compiled = compile_pipeline(loaded, out_dir)
    in_sync = not drift(compiled)
    notes = []
    dvc_file = compiled.out_dir / layout.DVC_FILE
    if not dvc_file.exists():
        notes.append(
            f"{dvc_file} does not exist yet: `minispec run` (or `minispec compile`) writes it"
        )
        return PipelineStatus(
            [StageStatus(s.name, "never run") for s in compiled.stages], in_sync, notes
        )
    if find_up(compiled.out_dir, ".dvc") is None:
        notes.append(
            f"{compiled.out_dir} is not in a DVC repository yet: `minispec run` creates one"
        )
        return PipelineStatus(
            [StageStatus(s.name, "never run") for s in compiled.stages], in_sync, notes
        )
    changes = dvc_status(compiled.out_dir)
    locked = locked_stages(compiled.out_dir)
    pending = spec_changes(compiled) if not in_sync else {}
    if not in_sync:
        notes.append(
            "dvc.yaml/params.yaml differ from what the spec compiles to; `minispec run` recompiles them (changes marked 'spec:')"
        )
    result = []
    dirty: set[str] = set()
    for stage in compiled.stages:
        details = describe_changes(changes.get(stage.name, []))
        details += [f"spec: {d}" for d in pending.get(stage.name, [])]
        if stage.name not in locked:
            state, details = "never run", []
        elif details:
            state = "changed"
        else:
            upstream = [s.name for s in compiled.upstream([stage.name]) if s.name in dirty]
            state = "stale" if upstream else "up to date"
            if upstream:
                details = [f"upstream {', '.join(upstream)} will re-run first"]
        if state != "up to date":
            dirty.add(stage.name)
        result.append(StageStatus(stage.name, state, details))
    return PipelineStatus(result, in_sync, notes)


def dvc_status(out_dir: Path) -> dict[str, list[Any]]:
    import json

    result = run_dvc(["status", "--json", layout.DVC_FILE], out_dir)
    if result.returncode != 0:
        raise PipelineError(
            f"`dvc status` failed in {out_dir}: {last_error(result.stderr + result.stdout)}"
        )
    text = result.stdout.strip()
    return json.loads(text) if text else {}


def locked_stages(out_dir: Path) -> set[str]:
    from ruamel.yaml import YAML

    lock = out_dir / "dvc.lock"
    if not lock.exists():
        return set()
    data = YAML(typ="safe", pure=True).load(lock.read_text(encoding="utf-8")) or {}
    return set((data.get("stages") or {}).keys())


def describe_changes(changes: list[Any]) -> list[str]:
    """DVC's status entries → 'params finetune.lr', 'deps models/teacher (modified)', ..."""
    details = []
    for change in changes:
        if isinstance(change, str):
            details.append(change)  # "changed command", "always changed"
            continue
        for kind, entries in change.items():
            what = kind.removeprefix("changed ")
            params, paths = [], []
            for path, state in entries.items():
                if isinstance(state, dict):  # params.yaml: {key: "modified"}
                    params += [
                        f"{key} ({s})" if s != "modified" else key for key, s in state.items()
                    ]
                else:
                    paths.append(f"{path} ({state})")
            if params:
                details.append(f"params {', '.join(params)}")
            if paths:
                details.append(f"{what} {', '.join(paths)}")
    return details


def spec_changes(compiled: CompiledPipeline) -> dict[str, list[str]]:
    """Per stage, what compiling the spec would change: new stages and params whose values differ."""
    from minispec.compile.dvc import split_header
    from minispec.spec.load import parse_yaml

    out_dir = compiled.out_dir
    params_text = (
        (out_dir / layout.PARAMS_FILE).read_text(encoding="utf-8")
        if (out_dir / layout.PARAMS_FILE).exists()
        else ""
    )
    dvc_text = (out_dir / layout.DVC_FILE).read_text(encoding="utf-8")
    on_disk = parse_params(params_text) if params_text else {}
    compiled_params = compiled.spec.model_dump(mode="json")
    declared, _ = parse_yaml(split_header(dvc_text)[1], layout.DVC_FILE)
    declared_names = stage_names(declared)
    pending: dict[str, list[str]] = {}
    for stage in compiled.stages:
        if stage.name not in declared_names:
            pending.setdefault(stage.name, []).append("new stage")
            continue
        changed = [
            key for key in stage.params if lookup(on_disk, key) != lookup(compiled_params, key)
        ]
        if changed:
            pending.setdefault(stage.name, []).append(f"params {', '.join(sorted(set(changed)))}")
    return pending


def stage_names(document: Any) -> set[str]:
    names = set()
    for name, entry in ((document or {}).get("stages") or {}).items():
        foreach = entry.get("foreach") if isinstance(entry, dict) else None
        if isinstance(foreach, list):
            names |= {f"{name}@{item}" for item in foreach}
        elif isinstance(foreach, dict):
            names |= {f"{name}@{key}" for key in foreach}
        else:
            names.add(name)
    return names


def lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return KeyError
        data = data[part]
    return data
