"""The headline metrics: ``layout.SUMMARY_METRICS``, the only DVC metric of a compiled pipeline.

DVC lays ``dvc metrics show`` and ``dvc exp show`` out horizontally: one column per numeric key
of every metrics file (and in ``exp show`` one per param and per dependency after them). With
every stage's numbers declared as metrics the table was thousands of columns wide. So the
evaluate stage writes this small file, and the stages' own numbers files stay outputs:

    {"teacher": {"loss": L}, "<variant>": {"loss": L, "params": N}, ...}

- ``teacher``: the working teacher, the one pruned and distilled from (the corrected teacher
  when ``finetune`` runs, else the imported one); the imported teacher's own loss is in
  ``metrics/evaluate.json`` and the report.
- ``<variant>``: each final model (distilled student, or the pruned model when not distilled).
- ``loss``: validation loss (mean token cross-entropy, nats) as the evaluate stage measured it,
  the same windows for every model; ``params``: total parameters.

Short keys on purpose: ``teacher.loss``, ``depth.loss``, ``depth.params``... are the column
headers. A variant named ``teacher`` is written as ``student-teacher``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from minispec import layout


def _number(value: Any) -> float | int | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def headline(evaluation: dict) -> dict:
    """The summary of an evaluate record (``{"teacher": M, "teacher_corrected": M?, "students":
    {v: M}}``, the format ``layout.py`` documents); models or values the record lacks are left
    out (the nemo legacy flavor measures no teacher)."""
    summary: dict = {}
    working = evaluation.get("teacher_corrected") or evaluation.get("teacher") or {}
    loss = _number(working.get("validation_loss"))
    if loss is not None:
        summary["teacher"] = {"loss": loss}
    for variant, model in (evaluation.get("students") or {}).items():
        entry = {
            key: value
            for key, value in (
                ("loss", _number((model or {}).get("validation_loss"))),
                ("params", _number((model or {}).get("params_total"))),
            )
            if value is not None
        }
        if entry:
            summary["student-teacher" if variant == "teacher" else variant] = entry
    return summary


def write_summary(root: str | os.PathLike[str], evaluation: dict) -> None:
    from minispec.fsio import write_json_atomic

    write_json_atomic(Path(root) / layout.SUMMARY_METRICS, headline(evaluation))
