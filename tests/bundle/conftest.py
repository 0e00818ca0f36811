"""Fixtures of the bundle tests: the session's real run (tests/real_pipeline.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def run_dir(real_run):
    """The directory of the one real `minispec run` of the session: read it, never change it
    (``real_run_copy`` is a private copy)."""
    return real_run.root
