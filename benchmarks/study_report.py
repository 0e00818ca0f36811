"""Turn the GPU study's results (benchmarks/study_gpu.sh) into the results table and loss curves.

    python benchmarks/study_report.py RESULTS [--out benchmarks/study]

RESULTS is the ``study-results.tar.xz`` the driver brings back, or a directory holding the run
directories (``runs/study``). Writes ``OUT/study.md`` (the table: one row per student with the
finding it belongs to, its run, tokens, final distillation validation loss, evaluated
WikiText validation/test losses when the run's evaluate stage ran, and the ratio to the
corrected teacher's validation loss) and ``OUT/<finding>.png`` (the students' validation-loss
curves of each finding on one figure). Numbers are read from the runs' metrics, never typed.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minispec.report.collect import collect  # noqa: E402

# finding -> rows (label, run directory, variant); the first run holds the shared baselines
FINDINGS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "width-vs-depth": (
        "F1 width vs depth at equal non-embedding parameters (53.1M, 50%)",
        [("width w50", "core", "w50"), ("depth d15", "core", "d15")],
    ),
    "kd-vs-ce": (
        "F2 logit KD vs CE vs KD+CE (w50, same tokens)",
        [
            ("KD (alpha 1)", "core", "w50"),
            ("CE (alpha 0)", "core", "w50_ce"),
            ("KD+CE (alpha 0.5)", "core", "w50_kdce"),
        ],
    ),
    "depth-importance": (
        "F3 depth: block influence vs best contiguous block (lm_loss), after distillation",
        [
            ("block_influence d15", "core", "d15"),
            ("lm_loss block d15_lm", "core", "d15_lm"),
        ],
    ),
    "teacher-correction": (
        "F4 teacher correction on vs off (w50)",
        [("corrected", "core", "w50"), ("uncorrected", "no-correction", "w50")],
    ),
    "width-importance": (
        "F5 width importance after distillation (w50 shape)",
        [
            ("activation", "core", "w50"),
            ("magnitude", "core", "w50_mag"),
            ("random", "core", "w50_rand"),
        ],
    ),
    "iterative": (
        "F6 one-shot vs iterative to 50% (same total tokens)",
        [
            ("one-shot w50", "core", "w50"),
            ("round 1: w75 (75%)", "core", "w75"),
            ("round 2: w50 from w75", "iterative", "w50"),
        ],
    ),
}


def runs_root(results: Path, scratch: Path) -> Path:
    if results.is_dir():
        return results
    with tarfile.open(results) as archive:
        archive.extractall(scratch, filter="data")  # refuses paths outside scratch
    return scratch


def params(model, data, variant: str) -> str:
    """Non-embedding parameters: the evaluate stage's count, else the prune stage's."""
    count = model.number("params_non_embedding") if model else None
    if count is None and data is not None:
        pruned = (data.stage_metrics.get(f"prune-{variant}") or {}).get("pruned") or {}
        count = pruned.get("params_non_embedding")
    return "–" if count is None else f"{count / 1e6:.2f}M"


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/study"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = runs_root(args.results, Path(scratch))
        runs = {d.name: collect(d) for d in sorted(root.iterdir()) if (d / "metrics").is_dir()}
        args.out.mkdir(parents=True, exist_ok=True)
        lines = table(runs)
        for name, (title, rows) in FINDINGS.items():
            plot(runs, name, title, rows, args.out / f"{name}.png")
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def teacher_reference(runs) -> tuple[float | None, str]:
    """The corrected teacher's WikiText validation loss and where it comes from: core's evaluate
    stage when it ran, else teacher correction's last validation, which reads the same
    validation windows as every distill stage's (val_batches x micro batch, from the start)."""
    base = runs.get("core")
    row = base.model("teacher_corrected") if base else None
    if row is not None and row.number("validation_loss") is not None:
        return row.number("validation_loss"), "core's evaluate stage"
    finetune = (base.stage_metrics.get("finetune") if base else None) or {}
    if finetune.get("final_val_loss") is not None:
        return finetune["final_val_loss"], "core's teacher correction, final validation"
    return None, "not in the results"


def table(runs) -> list[str]:
    reference, source = teacher_reference(runs)
    lines = [
        f"Corrected teacher, WikiText-103 validation loss: {fmt(reference)} nats/token ({source}).",
        "",
        "| finding | student | run | non-embedding params | tokens | distill val loss | eval validation | eval test | validation / corrected teacher |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = runs.get("core")
    for key in ("teacher", "teacher_corrected"):
        model = base.model(key) if base else None
        if model is not None:
            val, test = model.number("validation_loss"), model.number("test_loss")
            ratio = f"{val / reference:.3f}" if val and reference else "–"
            lines.append(
                f"| – | {model.label} | core | – | – | – | {fmt(val)} | {fmt(test)} | {ratio} |"
            )
    for _, (title, rows) in FINDINGS.items():
        for label, run, variant in rows:
            data = runs.get(run)
            stage = (data.stage_metrics.get(f"distill-{variant}") if data else None) or {}
            model = data.model(f"student:{variant}") if data else None
            val = model.number("validation_loss") if model else None
            test = model.number("test_loss") if model else None
            tokens = stage.get("tokens")
            ratio = val or stage.get("final_val_loss")
            ratio = f"{ratio / reference:.3f}" if ratio and reference else "–"
            lines.append(
                f"| {title.split(' ')[0]} | {label} | {run} | {params(model, data, variant)} | {tokens if tokens else '–'} | "
                f"{fmt(stage.get('final_val_loss'))} | {fmt(val)} | {fmt(test)} | {ratio} |"
            )
    missing = [run for _, rows in FINDINGS.values() for _, run, _ in rows if run not in runs]
    if missing:
        lines += [
            "",
            f"Not in the results (not run, or stopped first): {', '.join(sorted(set(missing)))}",
        ]
    return lines


def tokens_per_step(data, variant: str) -> float:
    stage = data.stage_metrics.get(f"distill-{variant}") or {}
    steps, tokens = stage.get("steps"), stage.get("tokens")
    return tokens / steps if steps and tokens else 0.0


def tokens_of(data, variant: str) -> float:
    stage = (data.stage_metrics.get(f"distill-{variant}") if data else None) or {}
    return (stage.get("tokens") or 0) / 1e6


def plot(runs, name: str, title: str, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for label, run, variant in rows:
        data = runs.get(run)
        curve = data.curve(f"distill-{variant}", "val") if data else None
        if curve is None or not curve.steps:
            continue
        per_step = tokens_per_step(data, variant)
        # round 2 of the iterative pruning continues after round 1's tokens
        offset = tokens_of(runs.get("core"), "w75") if run == "iterative" else 0
        xs = [offset + step * per_step / 1e6 for step in curve.steps]
        axis.plot(xs, curve.values, marker=".", label=f"{label} ({run})")
        drawn += 1
    reference, _ = teacher_reference(runs)
    if reference is not None:
        axis.axhline(reference, color="grey", linestyle="--", label="corrected teacher")
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("distillation tokens (millions)")
    axis.set_ylabel("validation loss (nats/token)")
    if drawn:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
