"""``minispec lint`` and ``minispec schema`` through click's CliRunner (and one real process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.cli import cli
from minispec.spec import rules

REPO = Path(__file__).resolve().parents[1]
VALID = REPO / "tests" / "fixtures" / "specs" / "valid"
INVALID = REPO / "tests" / "fixtures" / "specs" / "invalid"
SHIPPED = sorted((REPO / "specs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def lint(*args: str):
    return CliRunner().invoke(cli, ["lint", *map(str, args)])


def test_clean_spec_exits_0_with_status_on_stdout():
    result = lint(VALID / "local-gguf.yaml")
    assert result.exit_code == 0
    assert result.stdout == f"{VALID / 'local-gguf.yaml'}: ok\n"
    assert result.stderr == ""


def test_every_shipped_spec_lints_clean():
    result = lint(*SHIPPED)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{REPO / 'specs' / 'llama31-8b-minitron.yaml'}: ok (1 warning)",
        f"{REPO / 'specs' / 'quickstart.yaml'}: ok",
        f"{REPO / 'specs' / 'smollm2-search.yaml'}: ok",
    ]
    assert "teacher shapes unknown" in result.stderr  # the hub teacher, said once


def test_invalid_spec_exits_2_and_lists_every_problem_on_stderr():
    spec = INVALID / "out-of-range.yaml"
    result = lint(spec)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 8
    assert lines[0] == f"{spec}:13:1: seed: must be between 0 and 4294967295 (got -1)"
    assert all(line.startswith(f"{spec}:") for line in lines)
    assert result.stdout == f"{spec}: 8 errors\n"
    assert "Traceback" not in result.output


def test_warnings_do_not_fail_lint():
    result = lint(VALID / "warnings-only.yaml")
    assert result.exit_code == 0
    assert result.stderr.count(": warning: ") == 4
    assert result.stdout.endswith(": ok (4 warnings)\n")


def test_several_files_are_all_linted_and_any_error_fails():
    result = lint(
        VALID / "minimal.yaml",
        INVALID / "yaml-tab-indent.yaml",
        REPO / "no-such.yaml",
        VALID / "full.json",
    )
    assert result.exit_code == 2
    assert [line.rsplit(": ", 1)[1] for line in result.stdout.splitlines()] == [
        "ok",
        "1 error",
        "1 error",
        "ok",
    ]
    assert f"{REPO / 'no-such.yaml'}: no such file" in result.stderr
    assert "YAML does not allow tabs" in result.stderr


def test_overrides_apply_and_errors_point_at_them():
    result = lint(
        VALID / "local-gguf.yaml", "--set", "data.seq_length=4096", "--set", "distill.steps=0"
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "--set distill.steps=0: distill.steps: must be ≥ 1 (got 0)",
        "--set data.seq_length=4096: data.seq_length: seq_length 4096 exceeds the teacher's 512 positions "
        "(hint: at most 512 (max_position_embeddings from GGUF metadata of tiny-llama.gguf))",
    ]
    fixed = lint(
        VALID / "override-repairs.yaml",
        "--set",
        "data.seq_length=256",
        "--set",
        "prune.depth.drop_layers=[2, 3]",
    )
    assert fixed.exit_code == 0, fixed.stderr


def test_verbose_shows_what_lint_checked_against():
    quiet = lint(VALID / "local-gguf.yaml")
    result = CliRunner().invoke(cli, ["--verbose", "lint", str(VALID / "local-gguf.yaml")])
    assert result.exit_code == 0 and quiet.stderr == ""
    assert "teacher: llama: 4 layers, hidden 64, MLP 128, 4 heads, 2 query groups" in result.stderr
    partial = CliRunner().invoke(
        cli, ["-v", "lint", str(INVALID / "schema-and-semantic-together.yaml")]
    )
    assert "rules skipped (they read blocks with schema errors): " in partial.stderr
    skipped = partial.stderr.split("rules skipped (they read blocks with schema errors): ")[1]
    assert skipped.strip().split(", ") == [
        "distill_students",
        "export_students",
        "intermediate_layers",
        "split_ratio_uses",
        "search_variants",
        "parameter_budget",  # the torch engine's own rules run after the spec's
    ]


def test_unexpected_failure_is_one_line_unless_verbose(monkeypatch):
    def broken_rule(loaded):
        raise RuntimeError("rule exploded")

    monkeypatch.setattr(rules, "RULES", [*rules.RULES, broken_rule])
    result = lint(VALID / "minimal.yaml")
    assert result.exit_code == 1
    assert (
        result.stderr
        == "error: RuntimeError: rule exploded\nhint: rerun with --verbose for the traceback\n"
    )
    verbose = CliRunner().invoke(cli, ["--verbose", "lint", str(VALID / "minimal.yaml")])
    assert isinstance(verbose.exception, RuntimeError) and verbose.exit_code == 1


def test_lint_writes_nothing(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    specs_before = sorted(p.stat().st_mtime_ns for p in (REPO / "specs").iterdir())
    for spec in (*SHIPPED, INVALID / "override-errors.yaml", INVALID / "yaml-python-tag.yaml"):
        lint(spec, "--set", "seed=1")
    assert list(tmp_path.iterdir()) == [work] and not list(work.iterdir())
    assert sorted(p.stat().st_mtime_ns for p in (REPO / "specs").iterdir()) == specs_before


def test_lint_needs_a_spec():
    result = lint()
    assert result.exit_code == 2 and "Missing argument 'SPECS...'" in result.stderr


def test_schema_prints_the_committed_schema(tmp_path):
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == (REPO / "schemas" / "minispec.schema.json").read_text(encoding="utf-8")
    out = tmp_path / "s.json"
    assert CliRunner().invoke(cli, ["schema", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text()) == json.loads(result.stdout)


def test_python_dash_m_minispec_lints_in_a_real_process():
    process = subprocess.run(
        [sys.executable, "-m", "minispec", "lint", str(INVALID / "yaml-duplicate-key.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert process.returncode == 2
    assert (
        "yaml-duplicate-key.yaml:8:3: invalid YAML" in process.stderr
        and "Traceback" not in process.stderr
    )
