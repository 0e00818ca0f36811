"""`minispec run` and `minispec status` on real DVC and a real run.

Every case starts from a copy of the session's real run (tests/real_pipeline.py: all 13 stages
of the torch engine run by `minispec run`); what fails, fails for a real reason.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from pipeline_harness import QUICKSTART, env, minispec
from real_pipeline import minispec as minispec_in
from real_pipeline import progress, run_pipeline, snapshot, stages_run, status

from minispec import layout
from minispec.bundle.reproduce import compare_metrics, flatten
from minispec.fsio import read_metrics_record
from minispec.pipeline import ensure_gitignore, ensure_repo

pytestmark = pytest.mark.slow


def stage_logs(root, except_for):
    skip = {layout.stage_log_path(s) for s in except_for}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in (root / layout.LOGS_DIR).glob("*.log")
        if str(p.relative_to(root)) not in skip
    }


def lock_entries(root):
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load((root / "dvc.lock").read_text())["stages"]


def test_a_failing_stage_stops_the_run_and_earlier_outputs_stay(real_run_copy):
    root = real_run_copy
    # a validation split too short for one window of 32 tokens: data and tokenize handle it,
    # teacher correction cannot validate on it
    (root / "corpus" / "validation.jsonl").write_text('{"text": " A short row ."}\n')
    teacher = snapshot(root, [layout.TEACHER_DIR])
    logs = stage_logs(root, ["data", "tokenize", "finetune"])
    locked = lock_entries(root)

    result = run_pipeline(root, check=False)
    assert result.returncode == 1, result.stdout
    states = dict(progress(result.stdout))
    assert states["data"].startswith("done") and states["tokenize"].startswith("done")
    assert states["import"] == "cached (up to date)"
    assert states["finetune"].startswith("FAILED after")
    # one line per stage: the stage's own output is in its log only
    assert "needs 1 windows" not in result.stdout and "running (log:" not in result.stdout
    assert set(states) == {"data", "import", "tokenize", "finetune"}  # nothing after it ran
    log = root / layout.stage_log_path("finetune")
    assert f"error: stage 'finetune' failed (exit code 1); its output is in {log}" in result.stderr
    assert "resume from 'finetune'" in result.stderr and "Traceback" not in result.stderr
    text = log.read_text()
    assert "> minispec stage finetune" in text and "exited with 1" in text
    # the stage's own message says what is wrong and how to fix it
    assert "error: finetune (validation split) needs 1 windows of 32 tokens" in text
    assert "hint:" in text and "Traceback" not in text
    # nothing earlier was lost; DVC recorded the stages that finished
    assert snapshot(root, [layout.TEACHER_DIR]) == teacher
    assert stage_logs(root, ["data", "tokenize", "finetune"]) == logs
    after = lock_entries(root)
    assert after["data"] != locked["data"] and after["tokenize"] != locked["tokenize"]
    assert after["finetune"] == locked["finetune"] and after["import"] == locked["import"]

    again = run_pipeline(root, check=False)
    assert again.returncode == 1
    states = dict(progress(again.stdout))
    assert states["data"] == "cached (up to date)" and states["tokenize"] == "cached (up to date)"
    assert states["finetune"].startswith("FAILED")


def test_status_says_what_changed(real_run_copy):
    root = real_run_copy
    # an output changed by hand, a spec change not compiled yet, a variant never run
    with (root / layout.tokens_prefix("validation")).with_suffix(".bin").open("ab") as handle:
        handle.write(b"\x00\x00")
    states = status(root, "finetune.lr=3e-4", "prune.extra={kind: depth, drop_layers: [2]}")
    done = minispec_in(root, "status", "tiny.yaml", "--set", "finetune.lr=3e-4")
    assert "differ from what the spec compiles to" in done.stdout
    assert states["data"] == "up to date" and states["import"] == "up to date"
    assert states["tokenize"] == "changed: outs data/tokens (modified)"
    assert states["finetune"].startswith("changed")
    assert "deps data/tokens (modified)" in states["finetune"]
    assert "spec: params finetune" in states["finetune"]
    assert states["importance"].startswith("changed")  # its dep data/tokens changed too
    assert states["prune@extra"] == "never run"
    assert states["report"].startswith("stale: upstream ")


def test_force_one_stage_reruns_only_that_stage(real_run_copy):
    root = real_run_copy
    checkpoints = snapshot(root, [layout.checkpoint_dir("finetune")])
    before = read_metrics_record(root, "evaluate")
    result = run_pipeline(root, args=("--stage", "evaluate", "--force"))
    assert stages_run(result.stdout) == ["evaluate"]
    assert all(
        state.startswith("cached") for name, state in progress(result.stdout) if name != "evaluate"
    )
    assert checkpoints == snapshot(
        root, [layout.checkpoint_dir("finetune")]
    )  # only the forced stage's go
    # the same models measured again by the same code: the same numbers but the timings
    after = read_metrics_record(root, "evaluate")
    diffs = compare_metrics({"evaluate": flatten(before)}, {"evaluate": flatten(after)})
    assert {d.status for d in diffs} <= {"same", "timing"}, [d for d in diffs if d.fails]


def test_force_discards_the_forced_training_stage_checkpoint(real_run_copy):
    root = real_run_copy
    model = snapshot(root, [layout.CORRECTED_TEACHER_DIR])
    assert any((root / layout.checkpoint_dir("finetune")).iterdir())
    result = run_pipeline(root, args=("--stage", "finetune", "--force"))
    assert f"removed {root / layout.checkpoint_dir('finetune')}" in result.stdout
    assert stages_run(result.stdout) == ["finetune"]
    metrics = read_metrics_record(root, "finetune")
    assert metrics["resumed_from_step"] is None  # trained from scratch, not resumed
    # on the CPU, training from scratch again gives the same model, bit for bit
    assert snapshot(root, [layout.CORRECTED_TEACHER_DIR]) == model
    # so nothing after it must run again, but the report, which shows the new curves and timings
    states = status(root)
    assert {s for s, state in states.items() if state != "up to date"} == {"report"}
    assert states["report"].startswith("changed: deps ")
    assert "metrics/finetune.json (modified)" in states["report"]


def test_status_of_a_pipeline_never_compiled(tmp_path):
    result = minispec("status", str(QUICKSTART), "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    assert "does not exist yet" in result.stdout and "prune@width    never run" in result.stdout


def test_dvc_repo_is_created_outside_git(tmp_path):
    messages = []
    assert ensure_repo(tmp_path, messages.append) == tmp_path
    assert (tmp_path / ".dvc").is_dir() and not (tmp_path / ".git").exists()
    assert "without git" in messages[0]
    assert ensure_repo(tmp_path / "sub", messages.append) == tmp_path  # found, not re-created


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_dvc_repo_inside_git(tmp_path):
    git("init", "-q", cwd=tmp_path)
    ensure_repo(tmp_path, print)
    assert (tmp_path / ".dvc").is_dir()
    assert "no_scm" not in (tmp_path / ".dvc/config").read_text()
    staged = subprocess.run(
        ["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True
    ).stdout
    assert ".dvc/config" in staged  # DVC added its files to git
    ensure_gitignore(tmp_path)
    ensure_gitignore(tmp_path)
    assert (tmp_path / ".gitignore").read_text().count("/checkpoints/") == 1


def test_dvc_repo_in_a_git_subdirectory(tmp_path):
    git("init", "-q", cwd=tmp_path)
    sub = tmp_path / "experiments" / "quickstart"
    sub.mkdir(parents=True)
    ensure_repo(sub, print)
    assert (sub / ".dvc").is_dir() and not (tmp_path / ".dvc").exists()
    assert (
        subprocess.run(
            [sys.executable, "-m", "dvc", "root"],
            cwd=sub,
            env=env(),
            capture_output=True,
            text=True,
        ).stdout.strip()
        == "."
    )


def test_a_git_ignored_run_directory_is_a_dvc_project_of_its_own(tmp_path):
    """runs/quickstart in this repository: git ignores runs/, the root holds a DVC project of
    its own; `dvc metrics show` inside the run must see the run's metrics only."""
    git("init", "-q", cwd=tmp_path)
    ensure_repo(tmp_path, print)  # the enclosing project (this repository's root dvc.yaml)
    (tmp_path / ".gitignore").write_text("runs/\n")
    run = tmp_path / "runs" / "quickstart"
    run.mkdir(parents=True)
    messages = []
    assert ensure_repo(run, messages.append) == run
    assert "ignores it" in messages[0] and "no_scm = True" in (run / ".dvc/config").read_text()
    (run / "metrics").mkdir()
    (run / "metrics" / "m.json").write_text('{"loss": 1.5}')
    (run / "dvc.yaml").write_text("metrics:\n  - metrics/m.json\n")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - missing.json\n")  # the root's, not run
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=run,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "missing.json" not in shown.stdout, shown.stdout
    assert '"loss": 1.5' in shown.stdout
    assert ensure_repo(run / "sub", messages.append) == run  # found, not re-created
