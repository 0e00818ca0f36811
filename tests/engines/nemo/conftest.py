"""Fixtures of the nemo engine tests: NeMo's CLI facts and the tutorial spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("MINISPEC_SHARED", REPO.parent / "shared"))  # as in tests/conftest.py

FACTS_FILE = SHARED / "reference" / "nemo-cli-facts.json"
TUTORIAL_SPEC = REPO / "specs" / "llama31-8b-minitron.yaml"


@pytest.fixture(scope="session")
def facts() -> dict:
    if not FACTS_FILE.is_file():
        pytest.fail(f"{FACTS_FILE} not found (set MINISPEC_SHARED)")
    return json.loads(FACTS_FILE.read_text())


@pytest.fixture
def load_tutorial():
    """``load_tutorial(*overrides)`` → the tutorial spec's LoadedSpec with --set overrides."""
    from minispec.spec.load import load_spec

    def load(*overrides: str):
        return load_spec(TUTORIAL_SPEC, list(overrides))

    return load
