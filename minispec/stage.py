"""Entry point of stages: ``minispec stage NAME [VARIANT]`` as written in dvc.yaml.

Engine-neutral: every torch-engine stage runs through it, and the steps another engine does not
implement itself (data, report) too. ``NAME`` is a step of :mod:`minispec.steps`; its ``run``
function is imported only here, so a stage imports only what it needs.

DVC runs each stage command in the directory of ``dvc.yaml``; the stage reads the resolved spec
from ``params.yaml`` there (the same file DVC tracks params in, so ``dvc exp run -S`` works) and
writes the paths named in :mod:`minispec.layout`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from minispec.errors import NotBuiltError, StageError
from minispec.params import load_params
from minispec.steps import BY_NAME, STEP_NAMES, VARIANT_STEPS
from minispec.timing import StartupPhases

# top-level modules of the `torch` extra (pyproject.toml)
TORCH_EXTRA = {"torch", "transformers", "tokenizers", "datasets", "gguf", "accelerate"}


def run_stage(name: str, variant: str | None, root: Path, params_file: str = "params.yaml") -> None:
    if name not in BY_NAME:
        raise StageError(f"unknown stage '{name}'", hint=f"stages: {', '.join(STEP_NAMES)}")
    if (name in VARIANT_STEPS) != (variant is not None):
        need = "needs a variant name" if name in VARIANT_STEPS else "takes no variant"
        raise StageError(f"stage '{name}' {need}")
    startup = StartupPhases()
    startup.mark("python and CLI")
    module_name, func_name = BY_NAME[name].run.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("minispec"):
            raise NotBuiltError(
                f"the torch engine has no '{name}' stage yet ({module_name} is missing)"
            ) from None
        if exc.name and exc.name.split(".")[0] in TORCH_EXTRA:
            raise StageError(
                f"stage '{name}' needs '{exc.name}', which is not installed",
                hint="install the torch engine: pip install 'minispec[torch]' (after the torch wheel for your machine)",
            ) from None
        raise
    func = getattr(module, func_name, None)
    if func is None:
        raise NotBuiltError(
            f"the torch engine has no '{name}' stage yet ({module_name}.{func_name} is missing)"
        )
    startup.mark("stage imports")
    spec = load_params(root, params_file)
    func(spec, variant, root)
    startup.mark("run")
    if startup.phases:  # where a stage's wall time goes: start-up is paid by every stage
        label = f"{name}@{variant}" if variant else name
        print(
            f"[{label}] done {startup.elapsed:.1f} s after the process started ({startup.summary()})",
            file=sys.stderr,
            flush=True,
        )
