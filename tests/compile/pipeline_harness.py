"""Play the part of stage commands against real DVC, for tests of the compiled pipeline.

The engine stages are built elsewhere; to test what DVC does with the compiled ``dvc.yaml``
(which stages it finds changed, what ``minispec run`` reports) the harness writes each stage's
declared outputs itself and records them with ``dvc commit -f`` — real DVC hashing and a real
``dvc.lock``. Whether a stage must re-run is always DVC's answer (``Repo.status``), never ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from minispec.compile import CompiledPipeline, compile_pipeline, write_pipeline
from minispec.compile.graph import Stage
from minispec.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

QUICKSTART = REPO / "specs" / "quickstart.yaml"


def env() -> dict[str, str]:
    """Environment of a minispec/DVC subprocess: this worktree's code, the venv's tools."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["PATH"] = str(VENV_BIN) + os.pathsep + e.get("PATH", "")
    e["DVC_NO_ANALYTICS"] = "1"
    return e


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env(), capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def minispec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minispec", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
    )


def compile_into(
    spec_file: Path, out_dir: Path, overrides: list[str] | tuple[str, ...] = ()
) -> CompiledPipeline:
    compiled = compile_pipeline(load_spec(spec_file, overrides), out_dir)
    write_pipeline(compiled)
    return compiled


@contextlib.contextmanager
def inside(directory: Path):
    """DVC's Python API resolves targets (and its run cache) against the current directory."""
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def is_file_output(path: str) -> bool:
    return Path(path).suffix in {".json", ".md", ".safetensors", ".tsv", ".log"}


def write_outputs(root: Path, stage: Stage, run: int) -> None:
    """What a run of ``stage`` leaves behind: every declared output, with run-specific content
    (a run with other inputs gives other outputs, as a real stage would)."""
    stamp = f"{stage.name} run {run} {uuid.uuid4().hex}\n"
    for out in stage.outs + stage.metrics:
        path = root / out.path
        if is_file_output(out.path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps({"run": run, "stamp": stamp.split()[-1]}) + "\n"
                if out.path.endswith(".json")
                else stamp
            )
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "content.txt").write_text(stamp)
    for plot in stage.plots:
        path = root / plot.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"timestamp\tstep\tloss\n0\t0\t{3.0 + run}\n1\t1\t{2.0 + run}\n")


class Runner:
    """Re-runs what DVC says is out of date, stage by stage in graph order, like ``dvc repro``."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: dict[str, int] = {}

    def commit(self, stages: list[Stage]) -> None:
        from dvc.repo import Repo

        with inside(self.root), Repo(".") as repo:
            for stage in stages:
                repo.commit(stage.name, force=True)

    def run_all(self, stages: list[Stage]) -> None:
        for stage in stages:
            self.runs[stage.name] = self.runs.get(stage.name, 0) + 1
            write_outputs(self.root, stage, self.runs[stage.name])
        self.commit(stages)

    def repro(self, stages: list[Stage]) -> list[str]:
        """Stages DVC finds changed, each 'run' (outputs written, committed) before its
        dependents are asked."""
        from dvc.repo import Repo

        ran = []
        with inside(self.root), Repo(".") as repo:
            for stage in stages:
                if repo.status(targets=[stage.name]):
                    self.runs[stage.name] = self.runs.get(stage.name, 0) + 1
                    write_outputs(self.root, stage, self.runs[stage.name])
                    repo.commit(stage.name, force=True)
                    ran.append(stage.name)
        return ran
