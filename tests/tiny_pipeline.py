"""A tiny real pipeline directory for the report and bundle tests.

``write_project`` lays out a DVC project the way ``minispec compile`` does (spec, resolved
``params.yaml``, ``dvc.yaml`` with the report's ``plots:`` section); its stages run
``fixtures/tiny_pipeline/steps.py``, which writes every input of the report with the formats'
own writers (DVCLive, safetensors, JSON), and the real ``minispec stage report``. ``run_dvc``
runs it with ``dvc repro``, so ``dvc.lock`` and DVC's cache are DVC's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = Path(__file__).parent / "fixtures" / "tiny_pipeline" / "steps.py"
TRAINING_STAGES = ["finetune", "distill-depth", "distill-width"]
STUDENTS = ["depth", "width"]

SPEC = {
    "version": 1,
    "name": "tiny-run",
    "engine": "torch",
    "seed": 7,
    "teacher": {"source": "models/teacher-source"},
    "data": {"source": "raw", "seq_length": 32},
    "finetune": {"steps": 12, "val_interval": 4, "global_batch_size": 8, "micro_batch_size": 8},
    "prune": {
        "depth": {"kind": "depth", "target_num_layers": 2, "calibration_samples": 8},
        "width": {
            "kind": "width",
            "target_hidden_size": 48,
            "target_ffn_hidden_size": 96,
            "calibration_samples": 8,
        },
    },
    "distill": {"steps": 12, "val_interval": 4, "global_batch_size": 8, "micro_batch_size": 8},
}

CORPUS = """\
 = Valkyria Chronicles III =
 Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game .
 The game began development in 2010 , carrying over a large portion of the work done on Valkyria Chronicles II .
 It met with positive sales in Japan , and was praised by both Japanese and western critics .
"""


def resolved_spec() -> dict:
    from minispec.spec.model import Spec

    return Spec.model_validate(SPEC).model_dump(mode="json")


def dvc_yaml() -> dict:
    from minispec.report.dvcplots import dvc_plots
    from minispec.spec.model import Spec

    logs = [f"logs/{s}" for s in TRAINING_STAGES]
    models = ["models/teacher", "models/teacher-corrected", "models/students"]
    return {
        "stages": {
            "data": {
                "cmd": "python steps.py data",
                "deps": ["steps.py", "raw"],
                "outs": ["data/jsonl"],
            },
            "train": {
                "cmd": "python steps.py train",
                "deps": ["steps.py", "data/jsonl"],
                "params": ["seed", "prune", "distill"],
                "outs": logs + ["importance", "models/pruned"] + models,
                "metrics": [{f"metrics/{s}.json": {"cache": False}} for s in TRAINING_STAGES],
            },
            "evaluate": {
                "cmd": "python steps.py evaluate",
                "deps": ["steps.py"] + models,
                "metrics": [{"metrics/evaluate.json": {"cache": False}}],
            },
            "report": {
                "cmd": "minispec stage report",
                "deps": ["metrics/evaluate.json", "importance"] + logs,
                "params": ["name"],
                "outs": ["reports"],
            },
        },
        "plots": dvc_plots(Spec.model_validate(SPEC)),
    }


def dump_yaml(path: Path, value) -> None:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(value, handle)


def write_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    dump_yaml(root / "tiny.yaml", SPEC)  # the spec as written
    dump_yaml(root / "params.yaml", resolved_spec())
    dump_yaml(root / "dvc.yaml", dvc_yaml())
    (root / "raw").mkdir(exist_ok=True)
    (root / "raw" / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    shutil.copy2(STEPS, root / "steps.py")
    return root


def run_steps(root: Path) -> None:
    """The stage commands without DVC (for report tests that need no dvc.lock)."""
    for stage in ("data", "train", "evaluate"):
        subprocess.run([sys.executable, "steps.py", stage], cwd=root, check=True, env=tool_env())


def tool_env() -> dict[str, str]:
    """This environment's python/dvc/minispec first on PATH, importing this checkout."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), *args],
        cwd=root,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def run_dvc(root: Path) -> Path:
    write_project(root)
    dvc(root, "init", "--no-scm", "-q")
    dvc(root, "repro")
    return root


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a finished run (tests that change files must not share one)."""
    shutil.copytree(source, target, symlinks=True)
    return target
