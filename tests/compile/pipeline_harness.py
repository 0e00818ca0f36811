"""Helpers of the compile tests: the quickstart spec, compiling it, and running minispec and
DVC as subprocesses of this checkout.

Tests of what DVC does with a pipeline that ran (invalidation, `minispec run`/`status`, `dvc
exp`) use a real run of the torch engine instead: tests/real_pipeline.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from minispec.compile import CompiledPipeline, compile_pipeline, write_pipeline
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
