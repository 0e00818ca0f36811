"""The console of `minispec run`: a line per stage; stage output in logs/ (and --verbose)."""

from __future__ import annotations

import io

from minispec import layout
from minispec.console import StageOutput
from minispec.pipeline import ReproMonitor

# what `dvc repro` prints for one stage that runs (the messages pipeline.py parses)
DVC_LINES = [
    "Running stage 'finetune':",
    "> minispec stage finetune",
    "step 1/8 loss 5.1",
    "Training:  50%|#####     | 4/8\rTraining: 100%|##########| 8/8",
    "Updating lock file 'dvc.lock'",
    "Stage 'report' didn't change, skipping",
]


def feed(tmp_path, output: StageOutput) -> list[str]:
    printed: list[str] = []
    monitor = ReproMonitor(tmp_path, total=2, echo=printed.append, output=output)
    for line in DVC_LINES:
        monitor.feed(line)
    monitor.close()
    return printed


def test_one_line_per_stage_and_the_output_in_the_log(tmp_path):
    printed = feed(tmp_path, StageOutput())
    assert len(printed) == 2, printed
    assert printed[0].startswith("[ 1/2] finetune") and "done in" in printed[0]
    assert printed[1] == "[ 2/2] report               cached (up to date)"
    log = (tmp_path / layout.stage_log_path("finetune")).read_text()
    assert "step 1/8 loss 5.1" in log and "8/8" in log


def test_verbose_shows_the_stage_output(tmp_path):
    printed = feed(tmp_path, StageOutput(verbose=True))
    assert "step 1/8 loss 5.1" in printed
    assert printed[0] == "[ 1/2] finetune             running (log: logs/finetune.log)"


def test_live_line_on_a_terminal_is_redrawn_and_cleared(tmp_path):
    screen = io.StringIO()
    printed = feed(tmp_path, StageOutput(live=True, stream=screen))
    drawn = screen.getvalue()
    # the last tqdm update (after its \r) is what the live line shows, never in the summary
    assert "finetune" in drawn and "Training: 100%|##########| 8/8" in drawn
    assert drawn.endswith("\r")  # cleared before the next summary line
    assert len(printed) == 2 and all("Training" not in line for line in printed)
