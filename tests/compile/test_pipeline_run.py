"""`minispec run` and `minispec status` on real DVC.

Stage outputs that the (separately built) engines would write are recorded with the harness;
every stage minispec asks DVC to run is really run: `minispec stage ...` through `dvc repro`.
A stage that fails here fails for a real reason — its engine code is missing today, or its
input checkpoint is not a model (what it will meet once the engines land) — never a fake one.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from pipeline_harness import QUICKSTART, Runner, compile_into, dvc, env, minispec, write_outputs

from minispec.pipeline import ensure_gitignore, ensure_repo

pytestmark = pytest.mark.slow


def corpus(root, wikitext_dir):
    (root / "corpus").mkdir(parents=True)
    lines = (wikitext_dir / "validation.jsonl").read_text().splitlines(keepends=True)[:100]
    (root / "corpus" / "validation.jsonl").write_text("".join(lines))
    return f"data.source={root / 'corpus'}"


@pytest.fixture
def pipeline(tmp_path, wikitext_dir):
    """A compiled quickstart in a DVC repository, with nothing run yet."""
    root = tmp_path / "pipe"
    override = corpus(root, wikitext_dir)
    compiled = compile_into(QUICKSTART, root, [override])
    dvc("init", "--no-scm", "-q", cwd=root)
    return root, override, compiled


def run_minispec(root, override, *args):
    return minispec("run", str(QUICKSTART), "--out", str(root), "--set", override, *args, cwd=root)


PROGRESS = re.compile(r"^\[\s*\d+/\d+\] (\S+)\s+(.*)$")


def progress(output: str) -> list[tuple[str, str]]:
    """(stage, state) of every progress line."""
    return [m.groups() for m in map(PROGRESS.match, output.splitlines()) if m]


def snapshot(root, paths):
    out = {}
    for path in paths:
        full = root / path
        files = sorted(full.rglob("*")) if full.is_dir() else [full]
        out[path] = {str(f.relative_to(root)): f.read_bytes() for f in files if f.is_file()}
    return out


def test_a_failing_stage_stops_the_run_and_earlier_outputs_stay(pipeline):
    root, override, compiled = pipeline
    # data, import and tokenize have run; import's checkpoint is not a loadable model
    for stage in compiled.stages[:3]:
        write_outputs(root, stage, 1)
    (root / "models/teacher/config.json").write_text('{"model_type": "not-a-model"}\n')
    Runner(root).commit(compiled.stages[:3])
    kept = snapshot(root, ["data/jsonl", "models/teacher", "data/tokens"])
    lock = (root / "dvc.lock").read_text()

    result = run_minispec(root, override)
    assert result.returncode == 1
    out = result.stdout
    assert "[ 1/13] data" in out and "cached" in out.splitlines()[0]
    assert [name for name, _ in progress(out)][:3] == ["data", "import", "tokenize"]
    assert "finetune             running (log: logs/finetune.log)" in out
    assert "finetune             FAILED after" in out
    log = root / "logs/finetune.log"
    assert f"error: stage 'finetune' failed (exit code 1); its output is in {log}" in result.stderr
    assert "resume from 'finetune'" in result.stderr
    assert "> minispec stage finetune" in log.read_text()
    assert "error:" in log.read_text()  # the stage's own message is in its log
    assert "exited with 1" in log.read_text()
    # nothing earlier was lost or re-run
    assert snapshot(root, ["data/jsonl", "models/teacher", "data/tokens"]) == kept
    assert (root / "dvc.lock").read_text() == lock
    assert sorted(p.name for p in (root / "logs").iterdir()) == [
        "finetune.log"
    ]  # nothing after finetune ran

    again = run_minispec(root, override)
    assert again.returncode == 1
    states = dict(progress(again.stdout))
    assert states["data"].startswith("cached") and states["tokenize"].startswith("cached")
    assert states["finetune"].startswith("FAILED")


def test_an_up_to_date_pipeline_runs_nothing(pipeline):
    root, override, compiled = pipeline
    Runner(root).run_all(compiled.stages)
    lock = (root / "dvc.lock").read_text()
    result = run_minispec(root, override)
    assert result.returncode == 0, result.stderr
    states = progress(result.stdout)
    assert sorted(name for name, _ in states) == sorted(s.name for s in compiled.stages)
    assert all(state == "cached (up to date)" for _, state in states)
    assert "pipeline up to date: 0 stages ran, 13 cached" in result.stdout
    assert (root / "dvc.lock").read_text() == lock

    status = minispec("status", str(QUICKSTART), "--out", str(root), "--set", override, cwd=root)
    assert status.returncode == 0
    assert [line.split()[0] for line in status.stdout.splitlines()] == [
        s.name for s in compiled.stages
    ]
    assert all(line.split(maxsplit=1)[1] == "up to date" for line in status.stdout.splitlines())


def test_status_says_what_changed(pipeline):
    root, override, compiled = pipeline
    Runner(root).run_all(compiled.stages[:6])  # up to prune@depth
    # the spec changes but is not compiled yet; DVC sees an output changed by hand
    (root / "data/tokens/content.txt").write_text("edited\n")
    result = minispec(
        "status",
        str(QUICKSTART),
        "--out",
        str(root),
        "--set",
        override,
        "--set",
        "finetune.lr=3e-4",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    states = {
        line.split()[0]: line.split(maxsplit=1)[1]
        for line in result.stdout.splitlines()
        if not line.startswith("dvc.yaml")
    }
    assert "differ from what the spec compiles to" in result.stdout
    assert states["data"] == "up to date" and states["import"] == "up to date"
    assert (
        states["tokenize"].startswith("changed")
        and "outs data/tokens (modified)" in states["tokenize"]
    )
    assert (
        states["finetune"].startswith("changed")
        and "deps data/tokens (modified)" in states["finetune"]
    )
    assert "spec: params finetune" in states["finetune"]
    assert states["importance"].startswith("changed")  # its dep data/tokens changed too
    assert states["prune@width"] == "never run" and states["report"] == "never run"


def test_status_of_a_pipeline_never_compiled(tmp_path):
    result = minispec("status", str(QUICKSTART), "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    assert "does not exist yet" in result.stdout and "prune@width    never run" in result.stdout


def test_force_one_stage_reruns_only_that_stage(pipeline):
    root, override, compiled = pipeline
    Runner(root).run_all(compiled.stages)
    checkpoint = root / "checkpoints/finetune/content.txt"  # as the finetune run left it
    result = run_minispec(root, override, "--stage", "evaluate", "--force")
    states = progress(result.stdout)
    ran = [name for name, state in states if state.startswith(("running", "FAILED", "done"))]
    assert set(ran) == {"evaluate"}, result.stdout
    assert all(state.startswith("cached") for name, state in states if name != "evaluate")
    assert (
        result.returncode == 1 and "stage 'evaluate' failed" in result.stderr
    )  # its engine is not built / models are fake
    assert checkpoint.exists()  # only the forced stage's checkpoints go


def test_force_discards_the_forced_training_stage_checkpoint(pipeline):
    root, override, compiled = pipeline
    Runner(root).run_all(compiled.stages[:4])
    assert (root / "checkpoints/finetune/content.txt").exists()
    result = run_minispec(root, override, "--stage", "finetune", "--force")
    assert "removed" in result.stdout and "checkpoints/finetune" in result.stdout
    assert not (root / "checkpoints/finetune/content.txt").exists()
    assert "stage 'finetune' failed" in result.stderr


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
