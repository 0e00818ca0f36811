"""Fixtures of the bundle tests: one real `dvc repro` run, copied where a test changes files."""

from __future__ import annotations

import pytest
from tiny_pipeline import run_dvc


@pytest.fixture(scope="session")
def dvc_run_once(tmp_path_factory):
    return run_dvc(tmp_path_factory.mktemp("dvc") / "pipeline")
