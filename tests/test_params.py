"""params.yaml has one writer and one reader (minispec.params): what the compiler writes reads
back as the same spec, and a params.yaml that is not one says where and what."""

from __future__ import annotations

from pathlib import Path

import pytest

from minispec.errors import StageError
from minispec.params import ParamsError, load_params, parse_params, read_params, validate_params

REPO = Path(__file__).resolve().parents[1]


def test_the_repository_params_read_back_as_the_quickstart_spec():
    # the root params.yaml is compiled from specs/quickstart.yaml (a drift test keeps it so)
    raw = read_params(REPO / "params.yaml")
    assert raw == parse_params((REPO / "params.yaml").read_text(encoding="utf-8"))
    spec = load_params(REPO)
    assert spec == validate_params(raw)
    assert spec.model_dump(mode="json") == raw  # every default is written: nothing to fill


def test_a_missing_params_file_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(StageError, match="params.yaml not found") as caught:
        load_params(tmp_path)
    assert "minispec compile" in caught.value.hint


def test_a_params_file_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not a mapping"):
        load_params(tmp_path)


def test_an_invalid_resolved_spec_names_the_key(tmp_path):
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    (tmp_path / "params.yaml").write_text(text.replace("  seq_length: ", "  seq_lenght: ", 1))
    with pytest.raises(ParamsError, match=r"not a valid resolved spec .*data\.seq_lenght"):
        load_params(tmp_path)
