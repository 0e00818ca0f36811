"""Architecture search from the command line: lint, and a real `minispec run` through DVC on the
tiny project of tests/real_pipeline.py (a 4-layer random Llama, real WikiText rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_pipeline import dvc, minispec, stages_run, write_project

from minispec.fsio import read_metrics_record

SEARCH = """\
prune:
  best:
    kind: search
    target_params: 110000
    budget_tolerance: 0.15
    max_candidates: 6
    top_k: 3
    short_distill: {tokens: 512}
    calibration_samples: 16

"""


def search_spec(root: Path) -> str:
    """tests/real_pipeline.py's spec with one search variant instead of the depth/width pair
    (and no teacher correction: the search does not need it)."""
    text = (root / "tiny.yaml").read_text(encoding="utf-8")
    text = text[: text.index("finetune:")] + SEARCH + text[text.index("distill:") :]
    text = text.replace("  students: [depth, width]\n", "")
    (root / "search.yaml").write_text(text, encoding="utf-8")
    return "search.yaml"


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, wikitext_dir):
    root = write_project(tmp_path_factory.mktemp("search") / "run", wikitext_dir)
    spec = search_spec(root)
    done = minispec(root, "run", spec, "--out", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    return root, spec, done.stdout


SLOTS = ["best-1", "best-2", "best-3"]


@pytest.mark.slow
def test_every_search_stage_ran_through_dvc(search_run):
    root, _spec, output = search_run
    expected = ["search@best"] + [f"search-prune@{s}" for s in SLOTS]
    expected += [f"search-distill@{s}" for s in SLOTS] + [
        "prune@best",
        "distill@best",
        "evaluate",
        "report",
        "export@best",
    ]
    ran = stages_run(output)
    for name in expected:
        assert name in ran
    status = dvc(root, "status").stdout
    assert "changed" not in status


@pytest.mark.slow
def test_top_k_candidates_are_short_distilled_and_the_best_wins(search_run):
    root, _spec, _ = search_run
    candidates = json.loads((root / "search/best/candidates.json").read_text())
    assert len(candidates["candidates"]) == 6
    by_loss = sorted(candidates["candidates"], key=lambda c: c["val_loss_pruned"])
    assert candidates["slots"] == [c["id"] for c in by_loss[:3]]
    metrics = read_metrics_record(root, "prune@best")  # the candidate list is in the info file
    kept = [c for c in metrics["search"]["candidates"] if "val_loss_short_distill" in c]
    assert sorted(c["id"] for c in kept) == sorted(candidates["slots"])
    winner = min(kept, key=lambda c: c["val_loss_short_distill"])
    assert metrics["winner"] == winner["id"]
    assert metrics["ranking_changed"] == (winner["id"] != candidates["slots"][0])
    for c in metrics["search"]["candidates"]:
        assert 110_000 * 0.85 <= c["params_total"] <= 110_000
    # the winner is a normal variant: its model has the winner's shape, and it was distilled,
    # evaluated and exported
    config = json.loads((root / "models/pruned/best/config.json").read_text())
    assert config["num_hidden_layers"] == winner["num_layers"]
    assert config["hidden_size"] == winner["hidden_size"]
    assert config["intermediate_size"] == winner["ffn_hidden_size"]
    evaluation = json.loads((root / "metrics/evaluate.json").read_text())
    assert evaluation["students"]["best"]["params_total"] == winner["params_total"]
    assert (root / "export/best/config.json").exists()
    short = read_metrics_record(root, "search-distill@best-1")
    assert short["steps"] == 2  # 512 tokens / (8 sequences x 32 tokens)


@pytest.mark.slow
def test_the_report_lists_every_candidate(search_run):
    root, _spec, _ = search_run
    report = (root / "reports/report.md").read_text()
    assert "## Architecture search" in report
    section = report[report.index("## Architecture search") :]
    for index in range(1, 7):
        assert f"c0{index}" in section
    assert "loss after short KD" in section


@pytest.mark.slow
def test_a_new_full_distill_setting_reuses_every_candidate(search_run, tmp_path):
    import shutil

    root, spec, _ = search_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    done = run_pipeline_spec(copy, spec, "distill.steps=4")
    ran = stages_run(done.stdout)
    # the short distillations set their own steps: only the full distillation and what
    # follows it run again
    assert sorted(ran) == ["distill@best", "evaluate", "export@best", "report"]


@pytest.mark.slow
def test_a_new_short_distill_length_rescores_nothing(search_run, tmp_path):
    import shutil

    root, spec, _ = search_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    done = run_pipeline_spec(copy, spec, "prune.best.short_distill.tokens=256")
    ran = stages_run(done.stdout)
    assert not any(s.startswith(("search@", "search-prune@")) for s in ran)
    assert [s for s in ran if s.startswith("search-distill@")] == [
        f"search-distill@{s}" for s in SLOTS
    ]
    short = json.loads((copy / "metrics/search-distill-best-1.json").read_text())
    assert short["steps"] == 1


def run_pipeline_spec(root: Path, spec: str, *changes: str):
    args = [arg for change in changes for arg in ("--set", change)]
    done = minispec(root, "run", spec, "--out", str(root), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


# ---- lint -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, wikitext_dir):
    root = write_project(tmp_path_factory.mktemp("search-lint") / "p", wikitext_dir)
    return root, search_spec(root)


def test_lint_accepts_the_search_spec(project):
    root, spec = project
    done = minispec(root, "lint", spec)
    assert done.returncode == 0, done.stdout + done.stderr


def test_lint_says_when_too_few_architectures_fit(project):
    root, spec = project
    done = minispec(root, "lint", spec, "--set", "prune.best.budget_tolerance=0.01")
    out = done.stdout + done.stderr
    assert done.returncode == 2
    assert "search.yaml" in out and "prune.best.target_params" in out
    assert "fewer than top_k 3" in out
    assert "raise budget_tolerance" in out
    assert "Traceback" not in out


def test_lint_refuses_a_budget_above_the_teacher(project):
    root, spec = project
    done = minispec(root, "lint", spec, "--set", "prune.best.target_params=500000")
    assert done.returncode == 2
    assert "is not below the teacher's 164,416" in done.stdout + done.stderr


def test_lint_needs_exactly_one_budget_and_the_torch_engine(project):
    root, spec = project
    done = minispec(
        root,
        "lint",
        spec,
        "--set",
        "prune.best.target_non_embedding_params=90000",
        "--set",
        "engine=nemo",
    )
    assert done.returncode == 2
    assert "exactly one budget" in done.stdout + done.stderr
    assert "torch engine only" in done.stdout + done.stderr


def test_compile_gives_one_slot_pair_per_top_k(project, tmp_path):
    root, spec = project
    done = minispec(
        root, "run", spec, "--out", str(root), "--dry-run", "--set", "prune.best.top_k=2"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "search-prune@best-2: minispec stage search-prune best-2" in done.stdout
    assert "search-distill@best-2" in done.stdout and "best-3" not in done.stdout
