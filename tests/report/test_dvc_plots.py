"""The report's `plots:` section rendered by DVC itself on a real `dvc repro` run."""

from __future__ import annotations

import json

import pytest
from tiny_pipeline import SPEC, TRAINING_STAGES, dvc

from minispec import layout
from minispec.report.collect import read_dvclive_tsv
from minispec.report.dvcplots import dvc_plots
from minispec.spec.model import Spec

pytestmark = pytest.mark.slow


def test_plots_section_names_every_training_curve():
    plots = {
        name: body for item in dvc_plots(Spec.model_validate(SPEC)) for name, body in item.items()
    }
    assert list(plots) == ["validation_loss", "train_loss", "models", "depth_importance_depth"]
    assert list(plots["validation_loss"]["y"]) == [
        layout.val_curve_path(s) for s in TRAINING_STAGES
    ]
    assert set(plots["train_loss"]["y"].values()) == {"loss"}
    assert plots["models"]["y"] == {layout.report_models_path(): "validation_loss"}


def test_no_plots_without_training_or_pruning():
    spec = Spec.model_validate({k: SPEC[k] for k in ("version", "name", "teacher", "data")})
    assert dvc_plots(spec) == []


def test_dvc_plots_show_renders_the_curves(dvc_run):
    done = dvc(dvc_run, "plots", "show", "--json")
    shown = json.loads(done.stdout)
    assert "errors" not in shown, shown.get("errors")
    data = shown["data"]
    assert set(data) == {"validation_loss", "train_loss", "models", "depth_importance_depth"}
    for name in ("validation_loss", "train_loss"):
        (plot,) = data[name]
        assert plot["type"] == "vega"
        values = plot["content"]["data"]["values"]
        for stage in TRAINING_STAGES:  # every stage's whole curve, point for point
            path = (
                layout.val_curve_path(stage)
                if name == "validation_loss"
                else layout.train_curve_path(stage)
            )
            steps, losses = read_dvclive_tsv(dvc_run / path)
            mine = [v for v in values if v["filename"].startswith(f"{stage}/")]
            assert [int(v["step"]) for v in mine] == steps
            assert [float(v["loss"]) for v in mine] == pytest.approx(losses)
    models = data["models"][0]["content"]["data"]["values"]
    assert len(models) == 4 and all(float(v["validation_loss"]) > 0 for v in models)
    depth = data["depth_importance_depth"][0]["content"]["data"]["values"]
    assert [int(v["layer"]) for v in depth] == [1, 2, 3, 4]


def test_dvc_plots_show_writes_html(dvc_run, tmp_path):
    dvc(dvc_run, "plots", "show", "-o", str(tmp_path / "html"))
    page = (tmp_path / "html" / "index.html").read_text()
    assert "Validation loss" in page and "Training loss" in page
