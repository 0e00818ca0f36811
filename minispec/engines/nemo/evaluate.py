"""The nemo engine's ``evaluate`` stage.

Flavor nemo2 (``python -m minispec.engines.nemo.evaluate``, inside the container): every model
of the layout that exists as a NeMo 2 checkpoint is exported to Hugging Face format into a
scratch copy of the pipeline directory, at the same layout path, and the torch engine's own
``evaluate`` stage scores that copy. The results (``metrics/evaluate.json`` and the table) are
copied back. Both engines' numbers therefore come from one evaluation code path: same windows,
same loss, same speed test.

Flavor legacy (``minispec nemo evaluate-logs``): NeMo 1 checkpoints of pruned students cannot be
exported to Hugging Face, so the evaluation reports what NeMo measured on the validation split
while training (the last validation of teacher correction and of each distillation); every
other measurement is ``null``, never invented.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from minispec import layout
from minispec.errors import StageError
from minispec.fsio import write_metrics, write_text_atomic
from minispec.summary import write_summary

MIRROR = f"{layout.CHECKPOINTS_DIR}/evaluate/hf-mirror"  # scratch pipeline directory with HF models
MEASURES = ("params_total", "params_non_embedding", "tokens_per_second", "latency_seconds")


def evaluated_models(spec) -> list[str]:
    """Layout directories of the models the evaluation compares."""
    models = [layout.TEACHER_DIR]
    if spec.finetune is not None:
        models.append(layout.CORRECTED_TEACHER_DIR)
    models += [layout.final_model_dir(spec, variant) for variant in spec.prune]
    return models


def build_mirror(spec, root: Path, export: Callable[[Path, Path], object]) -> Path:
    """A scratch pipeline directory: HF exports at the layout paths, data and params linked."""
    mirror = root / MIRROR
    shutil.rmtree(mirror, ignore_errors=True)
    mirror.mkdir(parents=True)
    for name in (layout.PARAMS_FILE, "data"):
        if (root / name).exists():
            os.symlink((root / name).resolve(), mirror / name)
    for model in evaluated_models(spec):
        if (root / model).is_dir():
            (mirror / model).parent.mkdir(parents=True, exist_ok=True)
            export(root / model, mirror / model)
    return mirror


def run_nemo2(
    root: Path, params_file: str = layout.PARAMS_FILE, export: Callable | None = None
) -> None:
    from minispec.params import load_params
    from minispec.stage import run_stage

    if export is None:
        from minispec.engines.nemo.export_ckpt import export
    spec = load_params(root, params_file)
    mirror = build_mirror(spec, root, export)
    try:
        run_stage("evaluate", None, mirror, params_file)
        produced_files = (
            layout.metrics_path("evaluate"),
            layout.info_path("evaluate"),
            layout.EVALUATE_TABLE,
            layout.SUMMARY_METRICS,
        )
        for produced in produced_files:
            if (mirror / produced).is_file():
                write_text_atomic(root / produced, (mirror / produced).read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(mirror, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# legacy: NeMo's own validation losses


def _from_training(root: Path, stage: str) -> dict:
    metrics_file = root / layout.metrics_path(stage)
    entry: dict = dict.fromkeys(MEASURES)
    entry.update(
        {
            "validation_loss": None,
            "validation_perplexity": None,
            "test_loss": None,
            "test_perplexity": None,
        }
    )
    if metrics_file.is_file():
        import json

        loss = json.loads(metrics_file.read_text(encoding="utf-8")).get("final_val_loss")
        if loss is not None:
            entry["validation_loss"] = loss
            entry["validation_perplexity"] = math.exp(loss) if loss < 700 else None
            entry["measured_by"] = f"NeMo validation at the end of {stage}"
    return entry


def run_legacy(spec, root: Path) -> dict:
    """``metrics/evaluate.json`` from the training stages' final validation losses."""
    if spec.finetune is None and not spec.students:
        raise StageError("flavor legacy measures models only while training; this spec trains none")
    teacher = dict.fromkeys(MEASURES)
    teacher.update({"validation_loss": None, "test_loss": None, "measured_by": None})
    result: dict = {"teacher": teacher}
    if spec.finetune is not None:
        result["teacher_corrected"] = _from_training(root, "finetune")
    result["students"] = {v: _from_training(root, f"distill@{v}") for v in spec.students}
    write_metrics(root, "evaluate", result)
    write_summary(root, result)
    write_text_atomic(root / layout.EVALUATE_TABLE, _table(result))
    return result


def _table(result: dict) -> str:
    rows = ["| model | validation loss | validation perplexity |", "| --- | --- | --- |"]
    entries = [("teacher", result["teacher"])]
    if "teacher_corrected" in result:
        entries.append(("teacher (corrected)", result["teacher_corrected"]))
    entries += [(f"student {name}", entry) for name, entry in result["students"].items()]
    for name, entry in entries:
        loss, ppl = entry.get("validation_loss"), entry.get("validation_perplexity")
        rows.append(
            f"| {name} | {'—' if loss is None else f'{loss:.4f}'} | {'—' if ppl is None else f'{ppl:.2f}'} |"
        )
    note = "\nValidation losses as NeMo measured them at the end of each training stage (flavor legacy).\n"
    return "\n".join(rows) + "\n" + note


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Evaluate NeMo 2 checkpoints with the shared evaluation code."
    )
    parser.add_argument(
        "--params", default=layout.PARAMS_FILE, help="resolved spec written by the compiler"
    )
    args = parser.parse_args(argv)
    run_nemo2(Path.cwd(), args.params)


if __name__ == "__main__":
    main()
