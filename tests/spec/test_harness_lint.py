"""Lint of evaluate.harness: include_path must exist; tasks it does not define need the hub."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from minispec.cli import cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "specs" / "quickstart.yaml"


def lint(*overrides: str):
    args = ["lint", str(QUICKSTART)]
    for override in overrides:
        args += ["--set", override]
    return CliRunner().invoke(cli, args)


def test_a_local_task_directory_lints_clean(monkeypatch):
    monkeypatch.chdir(REPO)  # --set paths are relative to the current directory
    result = lint("evaluate.harness={tasks: [everyday_mc], include_path: examples/harness}")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_missing_directory_and_unknown_tasks(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = lint("evaluate.harness={tasks: [everyday_mc], include_path: nowhere}")
    assert result.exit_code == 2
    assert (
        "--set evaluate.harness={tasks: [everyday_mc], include_path: nowhere}: "
        "evaluate.harness.include_path: not a directory:" in result.output
    )
    monkeypatch.chdir(REPO)
    result = lint(
        "evaluate.harness={tasks: [everyday_mc, hellaswag], include_path: examples/harness}"
    )
    assert result.exit_code == 0
    assert (
        "warning: hellaswag not defined in" in result.output and "Hugging Face Hub" in result.output
    )
    assert "warning: everyday_mc" not in result.output  # the local task is not named


def test_empty_task_list_is_located_on_the_override():
    result = lint("evaluate.harness={tasks: []}")
    assert (
        result.exit_code == 2
        and "--set evaluate.harness={tasks: []}: evaluate.harness.tasks" in result.output
    )


def test_an_unknown_key_brought_by_an_override_is_placed_at_it():
    """`--set distil.steps=3`: the file has no `distil`; the error names the --set, not the file."""
    result = lint("distil.steps=3")
    assert result.exit_code == 2
    assert "--set distil.steps=3: distil: unknown key 'distil'" in result.output
    assert "did you mean 'distill'?" in result.output
    (problem,) = [line for line in result.output.splitlines() if "unknown key" in line]
    assert problem.startswith("--set distil.steps=3:")  # not placed in the spec file
