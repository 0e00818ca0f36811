"""How minispec calls DVC: one driver for ``minispec run``, ``minispec status`` and bundle
reproduction.

DVC is imported by nobody here: it runs as ``python -m dvc`` of the interpreter that runs
minispec (the DVC installed with it), with this interpreter's scripts directory first on
``PATH`` so that stage commands (``minispec stage ...``, ``torchrun``) come from the same
environment, also when minispec is called as ``.venv/bin/minispec`` without the venv on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from minispec.errors import PipelineError


def dvc_argv() -> list[str]:
    """How to call DVC: the ``dvc`` module of this interpreter; a clear error when it is missing."""
    try:
        import dvc  # noqa: F401  (light: dvc/__init__.py imports nothing heavy)
    except ImportError:
        raise PipelineError(
            "DVC is not installed in this environment, and minispec runs pipelines with it",
            hint=f"install it into the same environment: {sys.executable} -m pip install 'dvc>=3.50'",
        ) from None
    return [sys.executable, "-m", "dvc"]


def dvc_env(*, offline: bool = False) -> dict[str, str]:
    """The environment of DVC and of the stage commands it runs; ``offline`` (bundle
    reproductions) also turns DVC's analytics off unless the user set them."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # stage output and DVC's messages arrive in order, line by line
    env["PATH"] = tool_path(env.get("PATH", ""))
    if offline:
        env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def tool_path(path: str) -> str:
    """``PATH`` with this interpreter's scripts directory first: stage commands (``minispec
    stage ...``, ``torchrun``) come from the environment that runs minispec and DVC, also when
    it is called as ``.venv/bin/minispec`` without the venv on PATH."""
    scripts = str(Path(sys.executable).parent)
    parts = [p for p in path.split(os.pathsep) if p and p != scripts]
    return os.pathsep.join([scripts, *parts])


def run_dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``dvc ARGS`` in ``cwd``, output captured."""
    return subprocess.run(dvc_argv() + args, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
