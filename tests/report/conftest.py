"""Fixtures of the report tests: the session's real run (tests/real_pipeline.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def run_dir(real_run):
    """The directory of the one real `minispec run` of the session: curves, metrics, importance
    scores and dvc.lock as the engines and DVC wrote them. Read it; copy it to change it."""
    return real_run.root
