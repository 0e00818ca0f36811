"""`dvc exp run -S key=value` on a compiled pipeline (issue 3, point 8): params live in params.yaml.

DVC experiments need git, so the pipeline lives in a fresh git repository with every stage
recorded as run (harness + `dvc commit`). The experiments are real `dvc exp run`s: DVC edits
params.yaml, decides what to run and runs it.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from pipeline_harness import QUICKSTART, Runner, compile_into, dvc, minispec

from minispec.compile.dvc import has_minispec_header
from minispec.engines.torch.stages import load_params

pytestmark = pytest.mark.slow


def git(*args, cwd):
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path, wikitext_dir):
    root = tmp_path / "project"
    root.mkdir()
    git("init", "-q", cwd=root)
    git("config", "user.email", "dev@example.com", cwd=root)
    git("config", "user.name", "dev", cwd=root)
    (root / "corpus").mkdir()
    lines = (wikitext_dir / "validation.jsonl").read_text().splitlines(keepends=True)[:50]
    (root / "corpus" / "validation.jsonl").write_text("".join(lines))
    override = f"data.source={root / 'corpus'}"
    compiled = compile_into(QUICKSTART, root, [override])
    dvc("init", "-q", cwd=root)
    Runner(root).run_all(compiled.stages)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "pipeline run", cwd=root)
    return root, override


def test_an_experiment_on_a_key_no_stage_reads_runs_nothing(repo):
    root, _ = repo
    result = dvc("exp", "run", "-S", "resources.nodes=2", "-n", "two-nodes", cwd=root)
    assert "Running stage" not in result.stdout
    assert result.stdout.count("didn't change, skipping") == 13
    shown = json.loads(dvc("exp", "show", "--json", cwd=root).stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    params = [
        e["revs"][0]["data"]["params"]["params.yaml"]["data"]
        for e in experiments
        if e.get("name") == "two-nodes"
    ]
    assert params and params[0]["resources"]["nodes"] == 2
    assert params[0]["finetune"]["lr"] == 0.0001  # the rest of the resolved spec, as DVC reads it


def test_an_experiment_reruns_exactly_the_stages_reading_the_key(repo):
    root, override = repo
    result = dvc("exp", "run", "-S", "evaluate.max_windows=8", cwd=root, check=False)
    # evaluate is the only stage DVC runs before report; it fails because its engine is not
    # built yet (or, once it is, because the harness's models are not models)
    assert result.returncode != 0
    assert (
        "Running stage 'evaluate'" in result.stdout and "> minispec stage evaluate" in result.stdout
    )
    assert result.stdout.count("Running stage") == 1
    for name in (
        "data",
        "import",
        "tokenize",
        "finetune",
        "importance",
        "prune@width",
        "distill@depth",
    ):
        assert f"Stage '{name}' didn't change, skipping" in result.stdout
    # the stage reads the value DVC set, through minispec's own params loader
    assert load_params(root).evaluate.max_windows == 8
    assert has_minispec_header((root / "params.yaml").read_text())  # DVC kept the header
    status = minispec("status", str(QUICKSTART), "--out", str(root), "--set", override, cwd=root)
    line = next(x for x in status.stdout.splitlines() if x.startswith("evaluate "))
    assert line.startswith("evaluate       changed: params evaluate")
    assert "spec: params evaluate" in line  # the spec (64) and params.yaml (8) disagree
    # the spec stays the source of truth: recompiling restores params.yaml
    compile_into(QUICKSTART, root, [override])
    assert load_params(root).evaluate.max_windows == 64
