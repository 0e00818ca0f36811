"""Reproduction of a bundled run in a fresh workspace with real `dvc repro`."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from real_pipeline import STAGES, dvc, read_json, tool_env

from minispec.bundle import BundleError, create_bundle, dvchash
from minispec.bundle.reproduce import compare_metrics, reproduce_bundle
from minispec.cli import cli

pytestmark = pytest.mark.slow


def stage_env() -> dict[str, str]:
    """What the real run's stages ran with: this checkout's code, one thread (tool_env)."""
    return {name: tool_env()[name] for name in ("PYTHONPATH", "OMP_NUM_THREADS")}


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    return create_bundle(run_dir, tmp_path_factory.mktemp("b") / "run.tar.gz").path


@pytest.fixture(scope="module")
def reproduced(bundle, tmp_path_factory):
    """ONE real reproduction, as a user asks for it: `minispec bundle reproduce` reruns every
    stage in a fresh workspace (`dvc repro --force`). The result object is observed on its way
    to the command's output."""
    from minispec.bundle import reproduce

    results = []
    original = reproduce.reproduce_bundle

    def observed(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    directory = tmp_path_factory.mktemp("reproduce") / "rerun"
    # torch reads OMP_NUM_THREADS once, when this process first uses it: that must not happen
    # under the stages' setting below (reproduce_bundle imports torch to record its version)
    import torch

    torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "reproduce_bundle", observed)
        for name, value in stage_env().items():
            patch.setenv(name, value)
        output = CliRunner().invoke(
            cli, ["bundle", "reproduce", str(bundle), "--dir", str(directory)]
        )
    assert results, output.output  # reproduce_bundle raised; the command said why
    return output, results[0]


def test_reproduce_on_cpu_gives_identical_metrics(reproduced, run_dir):
    output, result = reproduced
    assert output.exit_code == 0, output.output
    assert result.ok
    statuses = {d.status for d in result.metrics}
    assert statuses <= {"same", "timing"}, [
        d for d in result.metrics if d.status not in ("same", "timing")
    ]
    same = [d for d in result.metrics if d.status == "same"]
    assert {
        "metrics/evaluate.json",
        "metrics/finetune.json",
        "metrics/distill-depth.json",
        "metrics/prune-width.json",
    } <= {d.file for d in same}
    for key in ("validation_loss", "test_loss", "samples"):  # samples: the greedy texts
        assert any(d.key == f"students.depth.{key}" for d in same), key
    assert any(d.file == "metrics/distill-width.json" and d.key == "final_val_loss" for d in same)
    # only throughput, latency and durations may move
    timing = [d for d in result.metrics if d.status == "timing"]
    assert timing and all(
        d.key.rsplit(".", 1)[-1].endswith(("per_second", "seconds")) for d in timing
    ), timing
    # the rerun happened: every stage ran in the fresh workspace, DVC wrote its lock
    workspace = result.workspace
    assert (workspace / "dvc.lock").is_file() and (workspace / "reports" / "report.html").is_file()
    lock = dvchash.read_lock((workspace / "dvc.lock").read_text())
    assert {out.stage for out in lock.outs} == set(STAGES)
    new = read_json(workspace / "metrics" / "evaluate.json")
    old = read_json(run_dir / "metrics" / "evaluate.json")
    assert (
        new["students"]["width"]["validation_loss"] == old["students"]["width"]["validation_loss"]
    )
    # the models came out bit-identical to the recorded ones: CPU training is deterministic
    assert {
        "data/jsonl",
        "data/tokens",
        "models/teacher",
        "models/teacher-corrected",
        "importance",
        "models/pruned/depth",
        "models/pruned/width",
        "models/students/depth",
        "models/students/width",
        "export/depth",
        "export/width",
    } <= set(result.outs_same), result.outs_changed
    # what differs holds timings (metrics, logs, the report) or resumable training state
    assert all(
        out.startswith(("metrics/", "logs/", "checkpoints/", "reports"))
        for out in result.outs_changed
    ), result.outs_changed
    assert result.environment == []  # same machine, same packages
    # what the command said
    assert "reproduced: metrics match the bundle" in output.output
    assert "TIMING" in output.output and "values identical" in output.output


def from_reproduction(reproduced_workspace, edit=None, *, after=None):
    """A runner that starts from the real reproduction's outputs and DVC cache (DVC finds them
    up to date), applies ``edit(workspace)``, runs `dvc repro` (only what the edit touches runs
    again), then applies ``after(workspace)``."""

    def runner(workspace):
        for item in reproduced_workspace.iterdir():
            target = workspace / item.name
            if item.name == ".dvc" or target.exists():
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
        # DVC counts an output missing from its cache as changed
        shutil.copytree(reproduced_workspace / ".dvc" / "cache", workspace / ".dvc" / "cache")
        if edit is not None:
            edit(workspace)
        dvc(workspace, "repro")
        if after is not None:
            after(workspace)

    return runner


def test_metrics_that_differ_fail_the_reproduction(bundle, reproduced, tmp_path, monkeypatch):
    """A run that does not reproduce (here: evaluated on other windows) is reported value by value."""
    _, first = reproduced

    def other_windows(workspace):
        params = workspace / "params.yaml"
        params.write_text(params.read_text().replace("max_windows: 8", "max_windows: 4"))

    for name, value in stage_env().items():
        monkeypatch.setenv(name, value)
    result = reproduce_bundle(
        bundle, tmp_path / "rerun", runner=from_reproduction(first.workspace, other_windows)
    )
    assert not result.ok
    differs = {(d.file, d.key) for d in result.metrics if d.status == "differs"}
    assert ("metrics/evaluate.json", "students.depth.validation_loss") in differs
    assert ("metrics/evaluate.json", "teacher.test_loss") in differs
    assert not any(file == "metrics/finetune.json" for file, _ in differs)  # not rerun
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


def test_cli_reports_metrics_that_differ(bundle, reproduced, tmp_path, monkeypatch):
    _, first = reproduced

    def drift(workspace):
        metrics = workspace / "metrics" / "finetune.json"
        values = json.loads(metrics.read_text())
        values["final_val_loss"] += 0.5
        metrics.write_text(json.dumps(values))

    monkeypatch.setattr(
        "minispec.bundle.reproduce.run_pipeline", from_reproduction(first.workspace, after=drift)
    )
    result = CliRunner().invoke(
        cli, ["bundle", "reproduce", str(bundle), "--dir", str(tmp_path / "bad")]
    )
    assert result.exit_code == 1
    assert "DIFFERS" in result.output and "final_val_loss" in result.output
    assert "error: the reproduced metrics differ" in result.output
