"""Reproduction of a bundled run in a fresh workspace with real `dvc repro`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from minispec.bundle import BundleError, create_bundle
from minispec.bundle.reproduce import compare_metrics, reproduce_bundle, run_pipeline
from minispec.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(dvc_run_once, tmp_path_factory):
    return create_bundle(dvc_run_once, tmp_path_factory.mktemp("b") / "run.tar.gz").path


def test_reproduce_on_cpu_gives_identical_metrics(bundle, tmp_path, dvc_run_once):
    result = reproduce_bundle(bundle, tmp_path / "rerun")
    assert result.ok
    statuses = {d.status for d in result.metrics}
    assert statuses <= {"same", "timing"}
    same = [d for d in result.metrics if d.status == "same"]
    assert {"metrics/evaluate.json", "metrics/finetune.json"} <= {d.file for d in same}
    assert any(d.key == "students.depth.validation_loss" for d in same)
    # only throughput and latency may move
    assert all(
        d.key.endswith(("tokens_per_second", "latency_seconds"))
        for d in result.metrics
        if d.status == "timing"
    )
    # the rerun happened: fresh outputs in the workspace, DVC's lock rewritten
    workspace = result.workspace
    assert (workspace / "dvc.lock").is_file() and (workspace / "reports" / "report.html").is_file()
    assert (
        json.loads((workspace / "metrics" / "evaluate.json").read_text())["students"]["width"][
            "validation_loss"
        ]
        == (
            json.loads((dvc_run_once / "metrics" / "evaluate.json").read_text())["students"][
                "width"
            ]["validation_loss"]
        )
    )
    # deterministic artifacts came out bit-identical to the recorded ones
    assert {"models/students", "models/teacher", "importance", "data/jsonl"} <= set(
        result.outs_same
    )
    assert result.environment == []  # same machine, same packages


def test_metrics_that_differ_fail_the_reproduction(bundle, tmp_path):
    """A run that does not reproduce (here: another seed) is reported value by value."""

    def other_seed(workspace):
        params = workspace / "params.yaml"
        params.write_text(params.read_text().replace("seed: 7", "seed: 8"))
        run_pipeline(workspace)

    result = reproduce_bundle(bundle, tmp_path / "rerun", runner=other_seed)
    assert not result.ok
    differs = {(d.file, d.key) for d in result.metrics if d.status == "differs"}
    assert ("metrics/evaluate.json", "students.depth.validation_loss") in differs
    assert ("metrics/finetune.json", "final_val_loss") in differs
    # and within a loose enough tolerance the same run passes
    loose = compare_metrics(
        {"m.json": {"loss": 3.0, "tokens_per_second": 10.0}},
        {"m.json": {"loss": 3.001, "tokens_per_second": 99.0}},
        rtol=1e-3,
    )
    assert [d.status for d in loose] == ["within", "timing"]


def test_compare_metrics_statuses():
    old = {"a.json": {"x": 1.0, "n": 3, "s": "abc", "gone": 1, "latency_seconds": 0.1}}
    new = {"a.json": {"x": 1.0 + 1e-12, "n": 4, "s": "abd", "new": 2, "latency_seconds": 0.2}}
    diffs = {d.key: d.status for d in compare_metrics(old, new)}
    assert diffs == {
        "x": "differs",
        "n": "differs",
        "s": "differs",
        "gone": "missing",
        "new": "added",
        "latency_seconds": "timing",
    }
    assert {d.key: d.status for d in compare_metrics(old, new, atol=1e-9)}["x"] == "within"


def test_reproduce_needs_a_fresh_directory(bundle, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        reproduce_bundle(bundle, taken)


def test_cli_reproduce(bundle, tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(cli, ["bundle", "reproduce", str(bundle), "--dir", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert "reproduced: metrics match the bundle" in result.output
    assert "TIMING" in result.output and "values identical" in result.output

    def drifting(workspace):
        run_pipeline(workspace)
        metrics = workspace / "metrics" / "finetune.json"
        values = json.loads(metrics.read_text())
        values["final_val_loss"] += 0.5
        metrics.write_text(json.dumps(values))

    monkeypatch.setattr("minispec.bundle.reproduce.run_pipeline", drifting)
    result = runner.invoke(
        cli, ["bundle", "reproduce", str(bundle), "--dir", str(tmp_path / "bad")]
    )
    assert result.exit_code == 1
    assert "DIFFERS" in result.output and "final_val_loss" in result.output
    assert "error: the reproduced metrics differ" in result.output
