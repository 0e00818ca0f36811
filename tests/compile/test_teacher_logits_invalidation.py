"""The teacher_logits cache on a real run (real DVC, tests/real_pipeline.py with
`distill.teacher_logits` added): a student's settings re-run that student and reuse the cache;
the teacher, the data or the cache's own settings recompute it."""

from __future__ import annotations

import json

import pytest
from real_pipeline import (
    SPEC_FILE,
    STAGES,
    copy_run,
    run_pipeline,
    snapshot,
    stages_run,
    status,
    write_project,
)

from minispec import layout

pytestmark = pytest.mark.slow

CACHED_STAGES = [*STAGES[:7], "teacher_logits", *STAGES[7:]]
STUDENTS_AND_AFTER = ["distill@depth", "distill@width", "evaluate", "report", "export@depth", "export@width"]  # fmt: skip


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory, wikitext_dir):
    root = tmp_path_factory.mktemp("cached-run") / "run"
    write_project(root, wikitext_dir)
    spec = root / SPEC_FILE
    text = spec.read_text(encoding="utf-8")
    anchor = "  loss: {kind: logits_kl, temperature: 1.0}\n"
    assert anchor in text
    spec.write_text(text.replace(anchor, anchor + "  teacher_logits: {top_k: 16}\n"))
    done = run_pipeline(root)
    assert sorted(stages_run(done.stdout)) == sorted(CACHED_STAGES), done.stdout
    return root


def not_up_to_date(states: dict[str, str]) -> list[str]:
    return [stage for stage in CACHED_STAGES if states[stage] != "up to date"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("prune.depth.target_num_layers=3", ["prune@depth", "distill@depth", "evaluate", "report", "export@depth"]),
        ("distill.lr=1e-3", STUDENTS_AND_AFTER),
        ("distill.loss.temperature=2.0", STUDENTS_AND_AFTER),
        ("distill.micro_batch_size=4", STUDENTS_AND_AFTER),
        ("distill.teacher_logits.top_k=8", ["teacher_logits", *STUDENTS_AND_AFTER]),
        ("distill.steps=6", ["teacher_logits", *STUDENTS_AND_AFTER]),
        ("finetune.lr=1e-3", CACHED_STAGES[3:]),
    ],
    ids=["student-shape", "student-lr", "loss", "micro-batch", "top-k", "steps", "teacher"],
)  # fmt: skip
def test_status_recomputes_the_cache_only_for_what_decides_it(cached_run, change, expected):
    states = status(cached_run, change)
    assert not_up_to_date(states) == expected, states


def test_a_student_change_reruns_only_that_student_and_reuses_the_cache(cached_run, tmp_path):
    root = copy_run(cached_run, tmp_path / "run")
    kept = [layout.TEACHER_LOGITS_DIR, layout.student_dir("width"), layout.CORRECTED_TEACHER_DIR]
    before = snapshot(root, kept)
    done = run_pipeline(root, "prune.depth.target_num_layers=3")
    assert stages_run(done.stdout) == ["prune@depth", "distill@depth", "evaluate", "report", "export@depth"], done.stdout  # fmt: skip
    assert snapshot(root, kept) == before
    metrics = json.loads((root / layout.metrics_path("distill@depth")).read_text())
    assert metrics["final_kd_loss"] > 0
    assert not_up_to_date(status(root, "prune.depth.target_num_layers=3")) == []
