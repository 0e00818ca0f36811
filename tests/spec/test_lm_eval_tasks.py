"""Lint reads the task names of lm-eval task YAML files without lm-eval (or any engine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from minispec.spec.lm_eval_tasks import local_task_names

REPO = Path(__file__).resolve().parents[2]


def test_task_and_group_names_of_the_yaml_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("task: everyday_a\ndataset_path: json\n")
    (tmp_path / "sub" / "b.yaml").write_text("group: everyday\ntask: [everyday_a]\n")
    # lm-eval's own tags are no safe YAML: its loader reads such files itself
    (tmp_path / "c.yaml").write_text("task: custom\nprocess_docs: !function utils.process\n")
    (tmp_path / "notes.txt").write_text("task: not_yaml\n")
    assert local_task_names(tmp_path) == {"everyday_a", "everyday"}


def test_the_shipped_example_defines_its_task():
    assert local_task_names(REPO / "examples" / "harness")


def test_lint_names_the_tasks_not_defined_there_without_the_engines_harness():
    code = (
        "import sys; from minispec.spec.lint import lint_file;"
        "r = lint_file('tests/fixtures/specs/valid/minimal.yaml', "
        "['evaluate.harness.tasks=[everyday_mc, hellaswag]', "
        "'evaluate.harness.include_path=examples/harness']);"
        "print([p.message for p in r.problems]);"
        "print('minispec.engines.torch.harness' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.splitlines()
    assert "hellaswag not defined in" in out[0] and "everyday_mc" not in out[0]
    assert out[1] == "False"  # the spec layer does not reach into an engine
