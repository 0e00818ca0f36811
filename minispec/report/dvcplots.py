"""The top-level ``plots:`` section of ``dvc.yaml``: the report's curves as DVC plots.

``dvc plots show`` (and ``dvc plots diff`` across experiments) then renders the same loss curves
as the report, straight from the DVCLive TSVs, plus the model comparison and the per-layer depth
importance from the report's ``data/*.json``. A pure function of the spec and its compiled
stages (which training stages have curves is the step table's ``curves``): the compiler calls
it and writes the result under ``plots:`` (no matplotlib, no DVC import here).
"""

from __future__ import annotations

from minispec import layout
from minispec.steps import BY_NAME, STEP_NAMES, Stage


def plotted_training_stages(stages: list[Stage]) -> list[Stage]:
    """The compiled training stages whose curves are plotted (``Step.curves``): in step-table
    order (teacher correction first), students by variant name."""
    plotted = [s for s in stages if BY_NAME[s.step].curves]
    return sorted(plotted, key=lambda s: (STEP_NAMES.index(s.step), s.variant or ""))


def dvc_plots(spec, stages: list[Stage]) -> list[dict]:
    """Plot definitions in DVC's top-level format: ``[{id: {template, x, y, title, ...}}, ...]``;
    ``stages``: the spec's compiled stages."""
    training = plotted_training_stages(stages)
    curve_stages = [s.name for s in training]
    plots: list[dict] = []
    # teacher correction trains on CE, distillation on a KD loss (values near 0): never one axis
    curves = [
        (
            "validation_loss",
            "Validation loss (CE)",
            "validation CE loss",
            layout.val_curve_path,
            curve_stages,
        ),
        (
            "train_loss_ce",
            "Training loss: teacher correction (CE)",
            "train CE loss",
            layout.train_curve_path,
            [s.name for s in training if BY_NAME[s.step].curves == "CE"],
        ),
        (
            "train_loss_kd",
            "Training loss: distillation (KD)",
            "train KD loss",
            layout.train_curve_path,
            [s.name for s in training if BY_NAME[s.step].curves == "KD"],
        ),
    ]
    for name, title, y_label, path, members in curves:
        if members:
            plots.append(
                {
                    name: {
                        "template": "linear",
                        "title": title,
                        "x": "step",
                        "x_label": "step",
                        "y_label": y_label,
                        "y": {path(stage): "loss" for stage in members},
                    }
                }
            )
    if spec.prune:
        plots.append(
            {
                "models": {
                    "template": "scatter",
                    "title": "Parameters vs validation loss (one point per model: see models_loss)",
                    "x": "params_total",
                    "x_label": "parameters",
                    "y_label": "validation loss",
                    "y": {layout.report_models_path(): "validation_loss"},
                }
            }
        )
        # DVC's scatter cannot label its points; the same numbers, one labelled bar per model
        plots.append(
            {
                "models_loss": {
                    "template": "bar_horizontal",
                    "title": "Validation loss per model",
                    "x": "validation_loss",
                    "y": {layout.report_models_path(): "model"},
                    "x_label": "validation loss",
                    "y_label": "model",
                }
            }
        )
    for name, variant in sorted(spec.depth_variants.items()):
        if variant.target_num_layers is not None:  # scores exist only for importance-chosen depth
            plots.append(
                {
                    f"depth_importance_{name}": {
                        "template": "bar_horizontal",
                        "title": f"Depth importance ({name})",
                        "x": "score",
                        "y": {layout.report_depth_scores_path(name): "layer"},
                        "x_label": variant.importance,
                        "y_label": "layer",
                    }
                }
            )
    return plots
