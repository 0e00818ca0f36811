"""Fixtures of the report tests: the tiny pipeline's outputs, with and without DVC."""

from __future__ import annotations

import pytest
from tiny_pipeline import run_dvc, run_steps, write_project


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A pipeline directory whose stage commands ran (no DVC): curves, metrics, importance."""
    root = write_project(tmp_path_factory.mktemp("run") / "pipeline")
    run_steps(root)
    return root


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory):
    """The tiny pipeline run by `dvc repro`, report stage included."""
    return run_dvc(tmp_path_factory.mktemp("dvc") / "pipeline")
