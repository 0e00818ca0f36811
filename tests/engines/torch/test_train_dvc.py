"""The finetune stage inside real DVC runs: DVCLive writes its plots and creates no experiment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import train_support as ts

from minispec import layout

pytestmark = pytest.mark.slow

DVC = shutil.which("dvc", path=str(ts.Path(sys.executable).parent)) or shutil.which("dvc")


def _run(command: list[str], cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=ts.subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def repo(tmp_path, wikitext_dir):
    if DVC is None or shutil.which("git") is None:
        pytest.fail("dvc and git are needed for this test")
    torch.set_num_threads(1)
    root = tmp_path / "repo"
    tokenizer = ts.make_tokenizer(wikitext_dir)
    ts.make_pipeline(
        root, wikitext_dir, tokenizer, ts.base_spec(finetune={"steps": 4, "val_interval": 2})
    )
    stage = "finetune"
    dvc_yaml = {
        "stages": {
            stage: {
                "cmd": f"{sys.executable} -m minispec stage finetune",
                "deps": [layout.TOKENS_DIR, layout.TEACHER_DIR],
                "params": ["finetune", "data.seq_length", "seed"],
                "outs": [
                    layout.CORRECTED_TEACHER_DIR,
                    {layout.checkpoint_dir(stage): {"persist": True, "cache": False}},
                    {layout.tensorboard_dir(stage): {"cache": False}},
                ],
                "metrics": [{layout.metrics_path(stage): {"cache": False}}],
                "plots": [
                    {layout.train_curve_path(stage): {"x": "step", "y": "loss", "cache": False}},
                    {layout.val_curve_path(stage): {"x": "step", "y": "loss", "cache": False}},
                ],
            }
        }
    }
    (root / "dvc.yaml").write_text(json.dumps(dvc_yaml, indent=1))
    for command in (
        ["git", "init", "-q"],
        [DVC, "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"],
    ):
        _run(command, root)
    return root


def test_dvc_repro_and_exp_run_with_dvclive(repo):
    _run([DVC, "repro"], repo)
    assert len(ts.read_tsv(repo / layout.train_curve_path("finetune"))) == 4
    assert not (
        repo / layout.log_dir("finetune") / "dvc.yaml"
    ).exists()  # DVCLive wrote no dvc.yaml
    metrics = json.loads(_run([DVC, "metrics", "show", "--json"], repo).stdout)
    assert "final_val_loss" in json.dumps(metrics)
    plots = _run([DVC, "plots", "show", "--json"], repo).stdout
    assert "val/loss.tsv" in plots
    names = _run([DVC, "exp", "list", "--all-commits", "--name-only"], repo).stdout
    assert names.strip() == ""  # `dvc repro` + DVCLive: no experiment

    # `dvc exp run` with a changed parameter: one experiment (DVC's own), the stage reruns afresh
    _run([DVC, "exp", "run", "-S", "finetune.lr=0.001", "-n", "lower-lr"], repo)
    shown = _run([DVC, "exp", "show", "--json"], repo).stdout
    assert "lower-lr" in shown and "final_val_loss" in shown
    names = _run([DVC, "exp", "list", "--all-commits", "--name-only"], repo).stdout.split()
    assert names == ["lower-lr"]  # DVCLive created none of its own
