"""benchmarks/study_report.py on the recorded GPU study: every figure of the table is read from
the runs' metrics (none typed), and a run that is missing is said to be missing."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "study" / "results"


def _row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if f"| {label} |" in line)
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_study_table_comes_from_the_recorded_metrics(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/study_report.py", str(RESULTS), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    table = (tmp_path / "study.md").read_text()
    assert table.strip() == done.stdout.strip()

    depth = json.loads((RESULTS / "core/metrics/distill-d15.json").read_text())
    evaluated = json.loads((RESULTS / "core/metrics/evaluate.json").read_text())
    scored, teacher = evaluated["students"]["d15"], evaluated["teacher_corrected"]
    row = _row(table, "depth d15")
    assert row[3] == "53.10M"  # 15 layers of SmolLM2-135M + final norm
    assert row[4] == str(depth["tokens"])
    assert row[5] == f"{depth['final_val_loss']:.3f}"
    assert row[6:8] == [f"{scored['validation_loss']:.3f}", f"{scored['test_loss']:.3f}"]
    # the ratio is to the corrected teacher scored by the same evaluate stage
    assert row[8] == f"{scored['validation_loss'] / teacher['validation_loss']:.3f}"
    assert f"{teacher['validation_loss']:.3f} nats/token (core's evaluate stage)" in table

    # the teachers' rows have every column of the header, their losses under eval val/test
    header = _row(table, "finding")
    corrected = _row(table, "teacher (corrected)")
    assert len(corrected) == len(header)
    assert corrected[6:] == [
        f"{teacher['validation_loss']:.3f}",
        f"{teacher['test_loss']:.3f}",
        "1.000",
    ]

    # a student without an evaluate (no-correction stopped after its distillation) falls back
    # to its distillation's final validation for the ratio
    uncorrected = json.loads((RESULTS / "no-correction/metrics/distill-w50.json").read_text())
    row = _row(table, "uncorrected")
    assert row[6:8] == ["–", "–"]
    assert row[8] == f"{uncorrected['final_val_loss'] / teacher['validation_loss']:.3f}"

    if not (RESULTS / "iterative").exists():
        assert "Not in the results (not run, or stopped first): iterative" in table
    assert (tmp_path / "width-vs-depth.png").stat().st_size > 10_000


def test_without_core_evaluate_the_reference_is_teacher_corrections_last_validation(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(RESULTS, runs)
    (runs / "core/metrics/evaluate.json").unlink()
    done = subprocess.run(
        [sys.executable, "benchmarks/study_report.py", str(runs), "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    finetune = json.loads((runs / "core/metrics/finetune.json").read_text())
    depth = json.loads((runs / "core/metrics/distill-d15.json").read_text())
    reference = finetune["final_val_loss"]
    assert f"{reference:.3f} nats/token (core's teacher correction" in done.stdout
    row = _row(done.stdout, "depth d15")
    assert row[6:8] == ["–", "–"]
    assert row[8] == f"{depth['final_val_loss'] / reference:.3f}"
