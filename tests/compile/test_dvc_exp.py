"""`dvc exp run -S key=value` on a compiled pipeline (issue 3, point 8): params live in params.yaml.

DVC experiments need git, so a copy of the session's real run (tests/real_pipeline.py) is put
under git, with DVC's cached outputs ignored as DVC itself would ignore them. The experiments
are real `dvc exp run`s: DVC edits params.yaml, decides what to run and runs it.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from real_pipeline import SPEC_FILE, STAGES, dvc, read_json, status

from minispec import layout
from minispec.compile import compile_pipeline
from minispec.compile.dvc import has_minispec_header
from minispec.spec.load import load_spec
from minispec.stage import load_params

pytestmark = pytest.mark.slow


def git(*args, cwd):
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def cached_outs(root) -> list[str]:
    stages = compile_pipeline(load_spec(root / SPEC_FILE), root).stages
    return sorted(out.path for stage in stages for out in stage.outs if out.cache)


@pytest.fixture
def repo(real_run_copy):
    root = real_run_copy
    dvc(root, "config", "--unset", "core.no_scm")
    git("init", "-q", cwd=root)
    git("config", "user.email", "dev@example.com", cwd=root)
    git("config", "user.name", "dev", cwd=root)
    ignored = [f"/{path}" for path in cached_outs(root)]
    ignored += [f"/{layout.CHECKPOINTS_DIR}/", f"/{layout.LOGS_DIR}/*.log"]
    (root / ".gitignore").write_text("".join(line + "\n" for line in ignored))
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "pipeline run", cwd=root)
    return root


def test_an_experiment_on_a_key_no_stage_reads_runs_nothing(repo):
    root = repo
    result = dvc(root, "exp", "run", "-S", "resources.nodes=2", "-n", "two-nodes")
    assert "Running stage" not in result.stdout
    assert result.stdout.count("didn't change, skipping") == 13
    shown = json.loads(dvc(root, "exp", "show", "--json").stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    params = [
        e["revs"][0]["data"]["params"]["params.yaml"]["data"]
        for e in experiments
        if e.get("name") == "two-nodes"
    ]
    assert params and params[0]["resources"]["nodes"] == 2
    assert params[0]["finetune"]["lr"] == 0.003  # the rest of the resolved spec, as DVC reads it


def test_an_experiment_reruns_exactly_the_stages_reading_the_key(repo):
    root = repo
    result = dvc(root, "exp", "run", "-S", "evaluate.max_windows=4")
    # evaluate reads the key; report reads evaluate's metrics; nothing else runs
    assert "Running stage 'evaluate'" in result.stdout
    assert "> minispec stage evaluate" in result.stdout
    assert "Running stage 'report'" in result.stdout
    assert result.stdout.count("Running stage") == 2
    for name in STAGES:
        if name not in ("evaluate", "report"):
            assert f"Stage '{name}' didn't change, skipping" in result.stdout, name
    # the stage read the value DVC set, through minispec's own params loader
    assert load_params(root).evaluate.max_windows == 4
    evaluation = read_json(root / layout.info_path("evaluate"))
    assert evaluation["teacher"]["tokens_evaluated"]["validation"] == 4 * 32
    assert has_minispec_header((root / "params.yaml").read_text())  # DVC kept the header
    # the spec (8) and params.yaml (4) disagree: minispec says so
    assert status(root)["evaluate"] == "changed: spec: params evaluate"
    # the spec stays the source of truth: recompiling restores params.yaml
    from pipeline_harness import compile_into

    compile_into(root / SPEC_FILE, root)
    assert load_params(root).evaluate.max_windows == 8


def test_exp_apply_of_an_earlier_experiment_leaves_nothing_to_do(repo):
    """Two experiments that retrain the students, then `dvc exp apply` of the first: DVC restores
    its models, curves and events (logs are cached; checkpoints are no output), and `dvc status`
    finds nothing to run."""
    root = repo
    dvc(root, "exp", "run", "-S", "distill.lr=0.002", "-n", "lr-2e-3")
    first_curve = (root / layout.train_curve_path("distill@depth")).read_bytes()
    dvc(root, "exp", "run", "-S", "distill.lr=0.001", "-n", "lr-1e-3")
    assert (root / layout.train_curve_path("distill@depth")).read_bytes() != first_curve
    dvc(root, "exp", "apply", "lr-2e-3")
    done = dvc(root, "status", "--json")
    assert json.loads(done.stdout or "{}") == {}, done.stdout
    assert (root / layout.train_curve_path("distill@depth")).read_bytes() == first_curve
    # one run's TensorBoard events in the restored log directory, not two
    events = list((root / layout.tensorboard_dir("distill@depth")).rglob("events.out.tfevents*"))
    assert len(events) == 1, events


# ---- what DVC's own views show, in a 120-column terminal ------------------------------------

TERMINAL = 120
HEADLINE = ["teacher.loss", "depth.loss", "depth.params", "width.loss", "width.params"]


def dvc_view(root, *args: str):
    """``dvc ARGS`` as a user's 120-column terminal would run it (COLUMNS is what DVC and rich
    read; not a TTY, so `dvc exp show` prints the whole table its pager would scroll through)."""
    import sys

    from real_pipeline import tool_env

    env = {**tool_env(), "COLUMNS": str(TERMINAL)}
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def widest(text: str) -> int:
    return max((len(line.rstrip()) for line in text.splitlines()), default=0)


def test_metrics_show_diff_and_exp_show_fit_a_120_column_terminal(repo):
    """The headline (metrics/summary.json) is the one DVC metric: `dvc metrics show` and
    `dvc metrics diff` fit 120 columns; `dvc exp show` puts the experiment and every headline
    metric, whole, in its first 120 columns (the params and dependency hashes DVC adds after
    them are what its pager scrolls to)."""
    root = repo
    shown = dvc_view(root, "metrics", "show")
    assert widest(shown) <= TERMINAL, shown
    header, row = shown.splitlines()[:2]
    assert header.split() == ["Path", *sorted(HEADLINE)]  # DVC sorts the columns
    assert row.split()[0] == layout.SUMMARY_METRICS and "…" not in shown

    dvc(root, "exp", "save")  # an experiment row with one of DVC's generated names
    # a new evaluation setting: evaluate reruns and the losses change
    from real_pipeline import run_pipeline, stages_run

    done = run_pipeline(root, "evaluate.max_windows=4")
    assert sorted(stages_run(done.stdout)) == ["evaluate", "report"]
    diff = dvc_view(root, "metrics", "diff")
    assert widest(diff) <= TERMINAL, diff
    changed = {line.split()[1] for line in diff.splitlines()[1:] if line.strip()}
    assert {"teacher.loss", "depth.loss", "width.loss"} <= changed, diff

    table = dvc_view(root, "exp", "show")
    lines = [line for line in table.splitlines() if line.strip() and set(line.strip()) != {"─"}]
    header = lines[0]
    assert header.split()[:2] == ["Experiment", "Created"]
    end = max(header.index(name) + len(name) for name in HEADLINE)
    assert end <= TERMINAL, header[:200]
    rows = lines[1:]
    assert len(rows) == 3 and any("[" in row for row in rows)  # workspace, master, the saved one
    for row in rows:
        assert "…" not in row[:end], row[:end]
    workspace = next(row for row in rows if row.split()[0] == "workspace")
    summary = read_json(root / layout.SUMMARY_METRICS)
    assert f"{summary['depth']['params']}" in workspace[:end]
    # the README's headline-only view fits as it is, without a pager
    keep = "Experiment|Created|.*\\.(loss|params)$"
    headline = dvc_view(root, "exp", "show", "--no-pager", "--drop", ".*", "--keep", keep)
    assert widest(headline) <= TERMINAL and "…" not in headline, headline
    assert all(name in headline for name in HEADLINE)
