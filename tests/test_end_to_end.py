"""End to end: `minispec run` of a tiny but real project (tests/real_pipeline.py), every stage of
the torch engine for real, and what a user gets out of it.

The run is made once per test session (the ``real_run`` fixture); tests that run anything
again work on a copy (``real_run_copy``).
"""

from __future__ import annotations

import math

import pytest
from real_pipeline import (
    DEPTH_TARGET_LAYERS,
    HARNESS,
    NAME,
    STAGES,
    STUDENTS,
    TASK_NAME,
    TASKS_DIR,
    TEACHER_SOURCE,
    TRAINING_STAGES,
    WIDTH_TARGETS,
    progress,
    read_json,
    run_pipeline,
    stages_run,
    status,
)
from ruamel.yaml import YAML

from minispec import layout
from minispec.fsio import read_metrics_record

pytestmark = pytest.mark.slow


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_stage_ran_once(real_run):
    print(f"the tiny real run took {real_run.seconds:.1f} s")
    assert sorted(stages_run(real_run.output)) == sorted(STAGES)
    assert all(state.startswith(("running", "done in")) for _, state in progress(real_run.output))
    assert "pipeline up to date: 13 stages ran, 0 cached" in real_run.output
    lock = YAML(typ="safe", pure=True).load((real_run.root / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    for stage in STAGES:  # DVC recorded what each stage read and wrote
        assert lock["stages"][stage]["outs"], stage
    # each stage's own output went to its log
    assert "[evaluate] teacher" in (real_run.root / layout.stage_log_path("evaluate")).read_text()


def test_status_says_every_stage_is_up_to_date(real_run):
    assert status(real_run.root) == dict.fromkeys(STAGES, "up to date")


def test_training_metrics_are_sane(real_run):
    for stage in TRAINING_STAGES:
        metrics = read_metrics_record(real_run.root, stage)  # numbers and info file together
        assert metrics["steps"] == 8 and metrics["tokens"] == 8 * 8 * 32, stage
        for key in ("initial_val_loss", "final_val_loss", "final_train_loss"):
            assert finite(metrics[key]) and 0 < metrics[key] < 10, (stage, key, metrics[key])
        assert metrics["tokens_per_second"] > 0 and metrics["device"] == "cpu"
        assert metrics["resumed_from_step"] is None  # trained from scratch
    for student in STUDENTS:
        # 8 steps of distillation at lr 3e-3 lower the student's validation loss
        metrics = read_metrics_record(real_run.root, f"distill@{student}")
        assert metrics["final_val_loss"] < metrics["initial_val_loss"], (student, metrics)
        assert metrics["loss"]["kind"] == "logits_kl"


def test_curves_hold_every_logged_step(real_run):
    import csv

    for stage in TRAINING_STAGES:
        with open(real_run.root / layout.val_curve_path(stage), newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        assert [int(r["step"]) for r in rows] == [0, 4, 8], stage
        metrics = read_json(real_run.root / layout.metrics_path(stage))
        assert float(rows[0]["loss"]) == pytest.approx(metrics["initial_val_loss"])
        assert float(rows[-1]["loss"]) == pytest.approx(metrics["final_val_loss"])


def numbers_only(value) -> bool:
    if isinstance(value, dict):
        return all(numbers_only(v) for v in value.values())
    return finite(value) and not isinstance(value, bool)


def test_metrics_files_hold_numbers_only(real_run):
    """What `dvc metrics show` reads: numbers; settings and provenance are in metrics/info/."""
    stages = [*TRAINING_STAGES, "evaluate", *(f"prune@{v}" for v in STUDENTS)]
    for stage in stages:
        metrics = read_json(real_run.root / layout.metrics_path(stage))
        assert metrics and numbers_only(metrics), stage
        assert (real_run.root / layout.info_path(stage)).is_file(), stage
    info = read_json(real_run.root / layout.info_path("evaluate"))
    assert info["settings"]["speed_repeats"] == 2 and info["teacher"]["samples"][0]["completion"]
    assert "global_batch_size" not in read_json(real_run.root / layout.metrics_path("finetune"))
    # the one DVC metric: the working (corrected) teacher's and each student's validation loss
    # as evaluate measured them, and the students' sizes
    summary = read_json(real_run.root / layout.SUMMARY_METRICS)
    evaluation = read_json(real_run.root / layout.metrics_path("evaluate"))
    assert summary.pop("teacher") == {"loss": evaluation["teacher_corrected"]["validation_loss"]}
    assert summary == {
        v: {"loss": m["validation_loss"], "params": m["params_total"]}
        for v, m in evaluation["students"].items()
    }
    assert sorted(summary) == sorted(STUDENTS)


def test_harness_scores_every_model_on_the_local_task(real_run_copy):
    """evaluate.harness on the local task the project holds: evaluate reruns (the exports,
    whose cards show the scores, and the report follow), nothing upstream does."""
    root = real_run_copy
    done = run_pipeline(root, HARNESS)
    assert sorted(stages_run(done.stdout)) == ["evaluate", "export@depth", "export@width", "report"]
    evaluation = read_json(root / layout.metrics_path("evaluate"))
    models = [
        evaluation["teacher"],
        evaluation["teacher_corrected"],
        *evaluation["students"].values(),
    ]
    for m in models:
        scores = m["harness"][TASK_NAME]
        assert 0.0 <= scores["acc"] <= 1.0 and 0.0 <= scores["acc_norm"] <= 1.0
        assert scores["acc"] * 12 == pytest.approx(round(scores["acc"] * 12))  # of 12 questions
    info = read_json(root / layout.info_path("evaluate"))
    assert info["teacher"]["harness_provenance"]["tasks"][TASK_NAME]["samples"] == 12
    assert f"{TASK_NAME} acc" in (root / layout.EVALUATE_TABLE).read_text()
    report = (root / "reports" / "report.md").read_text()
    table = report.split("## Downstream tasks (lm-evaluation-harness)", 1)[1].split("\n## ", 1)[0]
    acc = evaluation["teacher"]["harness"][TASK_NAME]["acc"]
    assert f"| {TASK_NAME} acc |" in table and f"| teacher | {acc:.4f}" in table
    for variant in STUDENTS:
        card = (root / layout.export_dir(variant) / "README.md").read_text()
        acc = evaluation["students"][variant]["harness"][TASK_NAME]["acc"]
        assert f"| {TASK_NAME} | acc | {acc:.4f}" in card
        assert "license: unknown" in card and "model-index:" in card
    # the task directory is a dependency: editing a question reruns evaluate
    questions = root / TASKS_DIR / "questions.jsonl"
    questions.write_text(questions.read_text().replace('"answer": 0', '"answer": 1', 1))
    assert status(root, HARNESS)["evaluate"].startswith("changed")


def test_evaluation_compares_every_model(real_run):
    evaluation = read_metrics_record(real_run.root, "evaluate")
    models = {
        "teacher": evaluation["teacher"],
        "teacher_corrected": evaluation["teacher_corrected"],
        **{f"student {s}": evaluation["students"][s] for s in STUDENTS},
    }
    assert sorted(evaluation["students"]) == STUDENTS
    for name, m in models.items():
        for split in ("validation", "test"):
            assert finite(m[f"{split}_loss"]) and m[f"{split}_loss"] > 0, name
            assert m[f"{split}_perplexity"] == pytest.approx(math.exp(m[f"{split}_loss"]))
            assert m["tokens_evaluated"][split] == 8 * 32, name  # max_windows × seq_length
        assert m["tokens_per_second"] > 0 and m["latency_seconds"] > 0, name
    teacher = models["teacher"]
    assert models["teacher_corrected"]["params_total"] == teacher["params_total"]
    for student in STUDENTS:
        assert (
            models[f"student {student}"]["params_non_embedding"] < teacher["params_non_embedding"]
        )
    # the depth student keeps 2 of 4 layers: half the layers' parameters (+ the final norm)
    layer_params = (teacher["params_non_embedding"] - 64) // 4
    depth = models["student depth"]
    assert depth["params_non_embedding"] == DEPTH_TARGET_LAYERS * layer_params + 64


def test_pruned_models_have_the_asked_shapes(real_run):
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(real_run.root / layout.student_dir("depth"))
    assert depth.num_hidden_layers == DEPTH_TARGET_LAYERS and depth.hidden_size == 64
    scores = read_json(real_run.root / layout.depth_scores_path("depth"))
    assert scores["metric"] == "block_influence" and len(scores["per_layer"]) == 4
    assert len(scores["dropped_layers"]) == 4 - DEPTH_TARGET_LAYERS
    width = AutoConfig.from_pretrained(real_run.root / layout.student_dir("width"))
    assert (width.hidden_size, width.intermediate_size, width.num_attention_heads) == (
        WIDTH_TARGETS["hidden"],
        WIDTH_TARGETS["ffn"],
        WIDTH_TARGETS["heads"],
    )
    assert width.num_hidden_layers == 4 and width.num_key_value_heads == 2


@pytest.mark.parametrize("variant", STUDENTS)
def test_export_loads_with_plain_transformers_and_generates(real_run, variant):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = real_run.root / layout.export_dir(variant)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer("The history of the city", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
    assert isinstance(tokenizer.decode(out[0]), str)
    # the export is the distilled student, weight for weight
    student = AutoModelForCausalLM.from_pretrained(real_run.root / layout.student_dir(variant))
    exported = model.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(exported[key], value), key


@pytest.mark.parametrize("variant", STUDENTS)
def test_model_card_names_the_teacher_and_the_variant(real_run, variant):
    path = real_run.root / layout.export_dir(variant)
    card = (path / "README.md").read_text()
    assert f"# {NAME}-{variant}" in card
    assert f"`{TEACHER_SOURCE}`" in card and "corrected by fine-tuning" in card
    assert f"Prune variant | `{variant}`" in card
    provenance = read_json(path / "minispec.json")
    assert provenance["teacher"] == TEACHER_SOURCE and provenance["variant"] == variant
    distilled = read_json(real_run.root / layout.metrics_path(f"distill@{variant}"))
    assert provenance["distill"]["final_val_loss"] == distilled["final_val_loss"]


def test_a_second_run_runs_nothing(real_run_copy):
    """(d) of the invalidation cases: nothing changed, nothing runs, nothing is rewritten."""
    root = real_run_copy
    lock = (root / "dvc.lock").read_bytes()
    evaluation = (root / layout.metrics_path("evaluate")).read_bytes()
    done = run_pipeline(root)
    assert stages_run(done.stdout) == []
    assert sorted(progress(done.stdout)) == sorted((s, "cached (up to date)") for s in STAGES)
    assert "pipeline up to date: 0 stages ran, 13 cached" in done.stdout
    assert (root / "dvc.lock").read_bytes() == lock
    assert (root / layout.metrics_path("evaluate")).read_bytes() == evaluation
