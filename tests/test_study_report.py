"""benchmarks/study_report.py on the recorded GPU study: every figure of the table is read from
the runs' metrics (none typed), and a run that is missing is said to be missing."""

import json
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
    teacher = json.loads((RESULTS / "core/metrics/finetune.json").read_text())
    row = _row(table, "depth d15")
    assert row[3] == "53.10M"  # from prune-d15.json: 15 layers of SmolLM2-135M + final norm
    assert row[4] == str(depth["tokens"])
    assert row[5] == f"{depth['final_val_loss']:.3f}"
    assert row[8] == f"{depth['final_val_loss'] / teacher['final_val_loss']:.3f}"
    assert f"{teacher['final_val_loss']:.3f} nats/token (core's teacher correction" in table

    if not (RESULTS / "iterative").exists():
        assert "Not in the results (not run, or stopped first): iterative" in table
    assert (tmp_path / "width-vs-depth.png").stat().st_size > 10_000
