"""The report's `plots:` section rendered by DVC itself on a real `dvc repro` run."""

from __future__ import annotations

import json

import pytest
from real_pipeline import TRAINING_STAGES, dvc

from minispec import layout
from minispec.compile.graph import build_graph
from minispec.params import load_params
from minispec.report.collect import read_dvclive_tsv
from minispec.report.dvcplots import dvc_plots
from minispec.spec.model import Spec

pytestmark = pytest.mark.slow


def test_plots_section_names_every_training_curve(run_dir):
    spec = load_params(run_dir)
    plots = {
        name: body for item in dvc_plots(spec, build_graph(spec)) for name, body in item.items()
    }
    assert list(plots) == [
        "validation_loss",
        "train_loss_ce",
        "train_loss_kd",
        "models",
        "models_loss",
        "depth_importance_depth",
    ]
    assert list(plots["validation_loss"]["y"]) == [
        layout.val_curve_path(s) for s in TRAINING_STAGES
    ]
    # CE (teacher correction) and KD (distillation) training losses never share an axis
    assert list(plots["train_loss_ce"]["y"]) == [layout.train_curve_path("finetune")]
    assert list(plots["train_loss_kd"]["y"]) == [
        layout.train_curve_path(s) for s in TRAINING_STAGES if s != "finetune"
    ]
    assert plots["models_loss"]["y"] == {layout.report_models_path(): "model"}  # labelled
    assert plots["models"]["y"] == {layout.report_models_path(): "validation_loss"}


def test_no_plots_without_training_or_pruning(run_dir):
    resolved = load_params(run_dir).model_dump(mode="json")
    spec = Spec.model_validate({k: resolved[k] for k in ("version", "name", "teacher", "data")})
    assert dvc_plots(spec, build_graph(spec)) == []


def test_dvc_plots_show_renders_the_curves(run_dir):
    done = dvc(run_dir, "plots", "show", "--json")
    shown = json.loads(done.stdout)
    assert "errors" not in shown, shown.get("errors")
    data = shown["data"]
    report_plots = {
        "validation_loss",
        "train_loss_ce",
        "train_loss_kd",
        "models",
        "models_loss",
        "depth_importance_depth",
    }
    # and the compiler's own plots of each training stage: train and validation together for
    # teacher correction (both CE), apart for a student (KD and CE)
    students = [s for s in TRAINING_STAGES if s != "finetune"]
    per_stage = {"finetune loss"} | {
        f"{s} {kind} loss" for s in students for kind in ("train KD", "validation CE")
    }
    assert set(data) == report_plots | per_stage
    for name, stages in (
        ("validation_loss", TRAINING_STAGES),
        ("train_loss_ce", ["finetune"]),
        ("train_loss_kd", students),
    ):
        (plot,) = data[name]
        assert plot["type"] == "vega"
        values = plot["content"]["data"]["values"]
        assert len(values) == sum(
            len(read_dvclive_tsv(run_dir / layout.train_curve_path(s))[0])
            if name != "validation_loss"
            else len(read_dvclive_tsv(run_dir / layout.val_curve_path(s))[0])
            for s in stages
        )
        for stage in stages:  # every stage's whole curve, point for point
            path = (
                layout.val_curve_path(stage)
                if name == "validation_loss"
                else layout.train_curve_path(stage)
            )
            steps, losses = read_dvclive_tsv(run_dir / path)
            log_name = layout.log_dir(stage).rsplit("/", 1)[-1]  # DVC drops the common logs/
            # DVC names the file of each point only when a plot has several
            mine = (
                values
                if len(stages) == 1
                else [v for v in values if v["filename"].startswith(f"{log_name}/")]
            )
            assert steps and [int(v["step"]) for v in mine] == steps
            assert [float(v["loss"]) for v in mine] == pytest.approx(losses)
    models = data["models"][0]["content"]["data"]["values"]
    assert len(models) == 4 and all(float(v["validation_loss"]) > 0 for v in models)
    depth = data["depth_importance_depth"][0]["content"]["data"]["values"]
    assert [int(v["layer"]) for v in depth] == [1, 2, 3, 4]


def test_dvc_plots_show_writes_html(run_dir, tmp_path):
    dvc(run_dir, "plots", "show", "-o", str(tmp_path / "html"))
    page = (tmp_path / "html" / "index.html").read_text()
    assert "Validation loss" in page and "Training loss: distillation (KD)" in page
