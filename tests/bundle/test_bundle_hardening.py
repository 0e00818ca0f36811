"""`bundle create -o` never destroys a file by accident; provenance metrics never fail a reproduction."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.bundle import verify_bundle
from minispec.bundle.reproduce import ReproduceResult, compare_metrics
from minispec.cli import cli
from minispec.compile import compile_pipeline, write_pipeline
from minispec.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
LOCK = """\
schema: '2.0'
stages:
  export@depth:
    cmd: minispec stage export depth
    outs:
    - path: models/model.safetensors
      hash: md5
      md5: 0123456789abcdef0123456789abcdef
      size: 4
"""


@pytest.fixture
def project(tmp_path) -> Path:
    """A compiled quickstart pipeline with a dvc.lock naming one model file out."""
    root = tmp_path / "run"
    root.mkdir()
    shutil.copy(REPO / "specs" / "quickstart.yaml", root / "spec.yaml")
    write_pipeline(compile_pipeline(load_spec(root / "spec.yaml"), root))
    (root / "dvc.lock").write_text(LOCK)
    (root / "models").mkdir()
    (root / "models" / "model.safetensors").write_bytes(b"WGTS")
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n")
    return root


def create(root: Path, output: Path, *extra: str):
    return CliRunner().invoke(cli, ["bundle", "create", "-C", str(root), "-o", str(output), *extra])


def test_an_existing_file_needs_force(project, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    result = create(project, target)
    assert result.exit_code != 0
    assert (
        "already exists; refusing to overwrite it" in result.output and "--force" in result.output
    )
    assert target.read_text() == "precious"
    result = create(project, target, "--force")
    assert result.exit_code == 0, result.output
    assert verify_bundle(target).ok


@pytest.mark.parametrize(
    "name",
    ["spec.yaml", "dvc.lock", "params.yaml", "dvc.yaml", "models/model.safetensors", ".dvc/config"],
)
def test_files_of_the_pipeline_are_never_overwritten(project, name):
    target = project / name
    before = target.read_bytes()
    for extra in ((), ("--force",)):
        result = create(project, target, *extra)
        assert result.exit_code != 0, result.output
        assert "a file of the pipeline; refusing to overwrite it" in result.output
        assert "Traceback" not in result.output
        assert target.read_bytes() == before


def test_resumed_from_step_is_provenance_not_a_result(tmp_path):
    """A run resumed after a kill records where it resumed; a rerun from scratch does not."""
    old = {"metrics/finetune.json": {"final_val_loss": 3.5, "resumed_from_step": 400}}
    new = {"metrics/finetune.json": {"final_val_loss": 3.5}}
    diffs = compare_metrics(old, new)
    assert {d.key: d.status for d in diffs} == {
        "final_val_loss": "same",
        "resumed_from_step": "provenance",
    }
    assert ReproduceResult(tmp_path, tmp_path, diffs, []).ok
    changed = compare_metrics(old, {"metrics/finetune.json": {"final_val_loss": 3.6}})
    assert not ReproduceResult(tmp_path, tmp_path, changed, []).ok  # results still count
