"""A tiny but real minispec project, and `minispec run` on it: every stage of the torch engine.

``write_project(root, wikitext_dir)`` lays out a self-contained project directory:

- ``teacher-source/``: a tiny random Llama (hidden 64, 4 layers, 4 heads / 2 KV heads of 16,
  MLP 128) saved as a standard HF directory, with a real fast BPE tokenizer trained on WikiText
  whose vocabulary is the model's (``tests/engines/torch/train_support.py`` builds both);
- ``corpus/{train,validation,test}.jsonl``: rows of the real WikiText-103 files, byte for byte;
- ``tasks/``: a local multiple-choice lm-evaluation-harness task (a YAML and its JSONL of
  questions built from WikiText sentences); ``HARNESS`` turns it on (``--set``);
- ``tiny.yaml``: a spec with every block (teacher correction, a depth and a width variant, both
  distilled, evaluation, export) on the CPU, every stage as small as it can be.

``run_pipeline`` then runs ``minispec run tiny.yaml --out ROOT`` as a user would (a subprocess,
this checkout's code, the venv's tools first on PATH, no hub). The spec and its sources live
inside the run directory and its paths are relative, so a copy of the directory
(``copy_run``) is a project of its own: its ``.dvc`` cache (``dvc init --no-scm``, since tmp
directories are outside git), ``dvc.lock`` and outputs all come along.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC_FILE = "tiny.yaml"
NAME = "tiny-e2e"
TEACHER_SOURCE = "teacher-source"
CORPUS = "corpus"
TASKS_DIR = "tasks"  # a local lm-evaluation-harness task (written by write_task)
TASK_NAME = "tiny_wikitext_mc"
# evaluate.harness on the local task, as a --set: the shared run has none, since the exports
# depend on the scores and would then follow every rerun of evaluate in the invalidation tests
HARNESS = (
    f"evaluate.harness={{tasks: [{TASK_NAME}], include_path: {TASKS_DIR}, "
    "num_fewshot: 0, batch_size: 8}"
)
STUDENTS = ["depth", "width"]
TRAINING_STAGES = ["finetune", "distill@depth", "distill@width"]
STAGES = [
    "data",
    "import",
    "tokenize",
    "finetune",
    "importance",
    "prune@depth",
    "prune@width",
    "distill@depth",
    "distill@width",
    "evaluate",
    "report",
    "export@depth",
    "export@width",
]
DOWNSTREAM_OF_FINETUNE = STAGES[3:]

# teacher: 4 layers, hidden 64, 4 query heads in 2 KV groups of head_dim 16, MLP 128
TEACHER_LAYERS = 4
WIDTH_TARGETS = {"hidden": 48, "ffn": 96, "heads": 2}
DEPTH_TARGET_LAYERS = 2

# every stage as small as it goes: windows of 32 tokens, 8 optimizer steps of 8 windows
SPEC_TEXT = f"""\
# A tiny real pipeline for the end-to-end tests (tests/real_pipeline.py)
version: 1
name: {NAME}
engine: torch
seed: 7

teacher:
  source: {TEACHER_SOURCE}

data:
  source: {CORPUS}
  seq_length: 32

finetune:
  steps: 8
  global_batch_size: 8
  micro_batch_size: 8
  lr: 3.0e-3
  min_lr: 3.0e-4
  warmup_steps: 2
  val_interval: 4
  val_batches: 1

prune:
  depth:
    kind: depth
    target_num_layers: {DEPTH_TARGET_LAYERS}
    importance: block_influence
    calibration_samples: 16
  width:
    kind: width
    target_hidden_size: {WIDTH_TARGETS["hidden"]}
    target_ffn_hidden_size: {WIDTH_TARGETS["ffn"]}
    target_num_attention_heads: {WIDTH_TARGETS["heads"]}
    calibration_samples: 16

distill:
  students: [depth, width]
  steps: 8
  global_batch_size: 8
  micro_batch_size: 8
  lr: 3.0e-3
  min_lr: 3.0e-4
  warmup_steps: 2
  val_interval: 4
  val_batches: 1
  loss: {{kind: logits_kl, temperature: 1.0}}

evaluate:
  splits: [validation, test]
  max_windows: 8
  batch_size: 8
  max_new_tokens: 4
  prompts: ["The history of the city", "In 1990 the album"]
  speed_repeats: 2

export:
  dtype: auto

resources:
  accelerator: cpu
"""

# rows of the real WikiText-103 files (train from its test split, as examples/offline_wikitext.py)
CORPUS_ROWS = {
    "train": ("test.jsonl", 0, 300),
    "validation": ("validation.jsonl", 0, 200),
    "test": ("validation.jsonl", 200, 400),
}


# ---- the project ------------------------------------------------------------------------------


def write_corpus(directory: Path, wikitext_dir: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split, (name, start, stop) in CORPUS_ROWS.items():
        with open(wikitext_dir / name, "rb") as handle:
            rows = handle.readlines()[start:stop]
        (directory / f"{split}.jsonl").write_bytes(b"".join(rows))


def write_teacher(directory: Path, wikitext_dir: Path) -> None:
    """A tiny random Llama with a real BPE tokenizer of its vocabulary, as an HF directory."""
    sys.path.insert(0, str(REPO / "tests" / "engines" / "torch"))
    from train_support import make_tokenizer, save_hf, tiny_teacher

    tokenizer = make_tokenizer(wikitext_dir)
    save_hf(tiny_teacher(tokenizer, layers=TEACHER_LAYERS, seed=0), tokenizer, directory)


TASK_YAML = f"""\
# A local lm-evaluation-harness task: offline (json data files beside this YAML)
task: {TASK_NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: questions.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_task(directory: Path, wikitext_dir: Path, questions: int = 12) -> None:
    """Which continuation does the text really have? The first words of a WikiText line, its
    true next words and those of other lines; the answer's position rotates."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(wikitext_dir / "validation.jsonl", encoding="utf-8") as handle:
        for row in handle:
            words = json.loads(row)["text"].split()
            if len(words) >= 16:
                lines.append(words)
            if len(lines) >= questions + 3:
                break
    rows = []
    for index in range(questions):
        words = lines[index]
        true = " ".join(words[8:12])  # lm-eval puts its target_delimiter (" ") in front
        others = [" ".join(lines[index + k][8:12]) for k in (1, 2, 3)]
        answer = index % 4
        choices = others[:answer] + [true] + others[answer:]
        rows.append({"context": " ".join(words[:8]), "choices": choices, "answer": answer})
    (directory / "task.yaml").write_text(TASK_YAML, encoding="utf-8")
    (directory / "questions.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
    )


def write_project(root: Path, wikitext_dir: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_task(root / TASKS_DIR, wikitext_dir)
    write_teacher(root / TEACHER_SOURCE, wikitext_dir)
    write_corpus(root / CORPUS, wikitext_dir)
    (root / SPEC_FILE).write_text(SPEC_TEXT, encoding="utf-8")
    return root


# ---- running minispec -------------------------------------------------------------------------


def tool_env() -> dict[str, str]:
    """This checkout's code, this environment's minispec/dvc first on PATH, no hub."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    # one thread per stage: models this small gain nothing from more, and on a shared 2-core
    # machine more threads halve the speed (measured: the whole run 53 s instead of 105 s)
    env["OMP_NUM_THREADS"] = "1"
    return env


def minispec(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``minispec ARGS`` in ``root`` (not checked)."""
    return subprocess.run(
        [sys.executable, "-m", "minispec", *args],
        cwd=root,
        env=tool_env(),
        capture_output=True,
        text=True,
    )


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
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


def overrides(changes: tuple[str, ...] | list[str]) -> list[str]:
    return [arg for change in changes for arg in ("--set", change)]


def run_pipeline(
    root: Path, *changes: str, args: tuple[str, ...] = (), check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``minispec run tiny.yaml --out ROOT [--set CHANGE ...] [ARGS]``; with ``check``, it must
    succeed."""
    done = minispec(root, "run", SPEC_FILE, "--out", str(root), *overrides(changes), *args)
    if check and done.returncode != 0:
        raise AssertionError(
            f"minispec run failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
        )
    return done


def status(root: Path, *changes: str) -> dict[str, str]:
    """``minispec status``: stage → its state line (``up to date``, ``changed: ...``, ...)."""
    done = minispec(root, "status", SPEC_FILE, "--out", str(root), *overrides(changes))
    if done.returncode != 0:
        raise AssertionError(f"minispec status failed:\n{done.stdout}\n{done.stderr}")
    states = {}
    for line in done.stdout.splitlines():
        name, _, state = line.partition(" ")
        state = state.strip()
        if state.startswith(STATES):  # not one of the notes printed before the stages
            states[name] = state
    return states


STATES = ("up to date", "changed", "stale", "never run", "not compiled")


PROGRESS = re.compile(r"^\[\s*\d+/\d+\] (\S+)\s+(.*)$")


def progress(output: str) -> list[tuple[str, str]]:
    """(stage, state) of every progress line of ``minispec run``."""
    return [m.groups() for m in map(PROGRESS.match, output.splitlines()) if m]


def stages_run(output: str) -> list[str]:
    """Stages whose command ran to the end (``done in ...``), in the order they finished.

    A stage DVC restored from its run cache ("cached (restored from DVC's run cache)") or found
    up to date did not run, and is not listed."""
    return [stage for stage, state in progress(output) if state.startswith("done in")]


def stages_cached(output: str) -> list[str]:
    return [stage for stage, state in progress(output) if state.startswith("cached")]


@dataclass
class RealRun:
    root: Path
    output: str  # what `minispec run` printed
    seconds: float  # its wall time


def build_run(root: Path, wikitext_dir: Path) -> RealRun:
    """Write the project and run the whole pipeline once."""
    write_project(root, wikitext_dir)
    started = time.monotonic()
    done = run_pipeline(root)
    return RealRun(root, done.stdout, time.monotonic() - started)


def copy_run(source: Path, target: Path) -> Path:
    """A private copy of a finished run (tests that run or change anything must not share one)."""
    shutil.copytree(source, target, symlinks=True)
    return target


def snapshot(root: Path, paths) -> dict[str, dict[str, bytes]]:
    """The bytes of every file under each of ``paths`` (relative to ``root``), to compare later."""
    out = {}
    for path in paths:
        full = root / path
        files = sorted(full.rglob("*")) if full.is_dir() else [full]
        out[path] = {str(f.relative_to(root)): f.read_bytes() for f in files if f.is_file()}
    return out


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
