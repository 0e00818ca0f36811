"""Minimal, correct invalidation on a real run (issue 3, point 3).

Every case starts from a copy of the session's real run (tests/real_pipeline.py: all 13 stages
of the torch engine run by `minispec run`). A spec change is given as `--set`, as a user would.

- `minispec status` must name exactly the affected stages: the ones whose params or deps DVC
  finds changed ("changed") and the ones downstream of those ("stale").
- `minispec run` must then re-run exactly those. "Re-run" means the stage's command ran to the
  end (`minispec run` prints "done in ..."); a stage that DVC found up to date or restored from
  its run cache did not run, and counts as not re-run. The outputs are checked too: what re-ran
  changed as the new setting says, what did not re-run is byte for byte what it was.

(d), nothing changed → nothing runs, is `test_a_second_run_runs_nothing` in
tests/test_end_to_end.py.
"""

from __future__ import annotations

import pytest
from real_pipeline import (
    DOWNSTREAM_OF_FINETUNE,
    STAGES,
    copy_run,
    progress,
    read_json,
    run_pipeline,
    snapshot,
    stages_run,
    status,
)

from minispec import layout
from minispec.fsio import read_metrics_record

pytestmark = pytest.mark.slow

WIDTH_TARGET = ["prune@width", "distill@width", "evaluate", "report", "export@width"]


def not_up_to_date(states: dict[str, str]) -> list[str]:
    return [stage for stage in STAGES if states[stage] != "up to date"]


@pytest.fixture(scope="module")
def run_copy(real_run, tmp_path_factory):
    """One copy for the status-only cases (status changes nothing, but the shared run stays pristine)."""
    return copy_run(real_run.root, tmp_path_factory.mktemp("status") / "run")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ((), []),
        (("prune.width.target_hidden_size=32",), WIDTH_TARGET),
        (("finetune.lr=1e-3",), DOWNSTREAM_OF_FINETUNE),
        (("evaluate.max_windows=4",), ["evaluate", "report"]),
        (("evaluate.splits=[test]",), ["evaluate", "report"]),
        (("export.dtype=bfloat16",), ["export@depth", "export@width"]),
        (
            ("distill.loss.temperature=2.0",),
            [
                "distill@depth",
                "distill@width",
                "evaluate",
                "report",
                "export@depth",
                "export@width",
            ],
        ),
        # a new calibration size re-scores activations, so only the width student follows
        (
            ("prune.width.calibration_samples=8",),
            ["importance", "prune@width", "distill@width", "evaluate", "report", "export@width"],
        ),
        (
            ("prune.depth.target_num_layers=3",),
            ["prune@depth", "distill@depth", "evaluate", "report", "export@depth"],
        ),
        (("data.text_field=body",), ["data", "tokenize", *DOWNSTREAM_OF_FINETUNE]),
        (("data.workers=1",), []),  # read by no stage: it cannot change a result
    ],
    ids=[
        "nothing",
        "width-target",
        "finetune-lr",
        "evaluate-option",
        "evaluate-splits",
        "export-dtype",
        "distill-loss",
        "calibration-samples",
        "depth-target",
        "text-field",
        "no-result-change",
    ],  # fmt: skip
)
def test_status_names_exactly_the_affected_stages(run_copy, changes, expected):
    states = status(run_copy, *changes)
    assert not_up_to_date(states) == expected, states
    for stage in expected:
        assert states[stage].startswith(("changed", "stale")), (stage, states[stage])


def test_status_says_why(run_copy):
    states = status(run_copy, "prune.width.target_hidden_size=32")
    assert states["prune@width"] == "changed: spec: params prune.width"
    for stage in ("distill@width", "evaluate", "report", "export@width"):
        assert states[stage].startswith("stale: upstream "), states[stage]
    assert "prune@width" in states["distill@width"]


def test_a_changed_data_file_reruns_everything_that_reads_data(real_run_copy):
    root = real_run_copy
    with (root / "corpus" / "train.jsonl").open("a") as handle:
        handle.write('{"text": " one more document"}\n')
    states = status(root)
    assert not_up_to_date(states) == ["data", "tokenize", *DOWNSTREAM_OF_FINETUNE]
    assert states["data"] == "changed: deps corpus (modified)"


DEPTH_OUTPUTS = [
    layout.pruned_dir("depth"),
    layout.student_dir("depth"),
    layout.export_dir("depth"),
    layout.CORRECTED_TEACHER_DIR,
    layout.IMPORTANCE_DIR,
]


def rerun(root, *changes):
    """Status, then `minispec run` with the same changes: (stages status names, stages run)."""
    named = not_up_to_date(status(root, *changes))
    done = run_pipeline(root, *changes)
    ran = stages_run(done.stdout)
    # every other stage was up to date (not restored from the run cache, not run)
    assert sorted(
        ran + [s for s, state in progress(done.stdout) if state.startswith("cached")]
    ) == sorted(STAGES)
    assert all(
        state == "cached (up to date)" for s, state in progress(done.stdout) if s not in ran
    ), done.stdout
    # and afterwards the pipeline is up to date with the new spec
    assert not_up_to_date(status(root, *changes)) == []
    return named, ran


def test_a_new_width_target_reruns_only_the_width_student(real_run_copy):
    """(a) prune.width.target_hidden_size → prune@width, distill@width, export@width,
    evaluate and report, and nothing else."""
    root = real_run_copy
    before = snapshot(root, DEPTH_OUTPUTS)
    evaluation = read_json(root / layout.metrics_path("evaluate"))
    named, ran = rerun(root, "prune.width.target_hidden_size=32")
    assert named == WIDTH_TARGET
    assert sorted(ran) == sorted(WIDTH_TARGET)
    assert read_json(root / layout.export_dir("width") / "config.json")["hidden_size"] == 32
    assert snapshot(root, DEPTH_OUTPUTS) == before
    after = read_json(root / layout.metrics_path("evaluate"))
    # the same code on the same unchanged models measures the same losses
    for model in ("teacher", "teacher_corrected"):
        assert after[model]["validation_loss"] == evaluation[model]["validation_loss"]
    assert after["students"]["depth"]["test_loss"] == evaluation["students"]["depth"]["test_loss"]
    width = after["students"]["width"]
    assert width["params_total"] < evaluation["students"]["width"]["params_total"]


def test_a_new_finetune_lr_reruns_finetune_and_everything_after_it(real_run_copy):
    """(b) finetune.lr → finetune and every stage downstream of the corrected teacher."""
    root = real_run_copy
    inputs = snapshot(root, [layout.DATA_DIR, layout.TOKENS_DIR, layout.TEACHER_DIR])
    finetune = read_json(root / layout.metrics_path("finetune"))
    named, ran = rerun(root, "finetune.lr=1e-3")
    assert named == DOWNSTREAM_OF_FINETUNE
    assert sorted(ran) == sorted(DOWNSTREAM_OF_FINETUNE)
    assert snapshot(root, [layout.DATA_DIR, layout.TOKENS_DIR, layout.TEACHER_DIR]) == inputs
    again = read_metrics_record(root, "finetune")  # with the settings beside the numbers
    assert again["initial_val_loss"] == finetune["initial_val_loss"]  # the same teacher
    assert again["final_val_loss"] != finetune["final_val_loss"]  # trained otherwise
    assert again["resumed_from_step"] is None  # a new lr does not resume the old run


def test_a_new_evaluate_option_reruns_only_evaluate_and_report(real_run_copy):
    """(c) an evaluate option → evaluate and report."""
    root = real_run_copy
    models = snapshot(root, ["models", "export"])
    named, ran = rerun(root, "evaluate.max_windows=4")
    assert named == ["evaluate", "report"]
    assert sorted(ran) == ["evaluate", "report"]
    evaluation = read_json(root / layout.info_path("evaluate"))  # counts are settings
    assert evaluation["teacher"]["tokens_evaluated"] == {"validation": 4 * 32, "test": 4 * 32}
    assert snapshot(root, ["models", "export"]) == models
