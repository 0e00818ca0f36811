"""Which spec a bundle packs when the pipeline was compiled with ``--out`` elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

from minispec.bundle.create import find_spec_file
from minispec.compile import compile_pipeline, write_pipeline
from minispec.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]


def compile_out(spec: Path, out: Path) -> None:
    out.mkdir(parents=True)
    write_pipeline(compile_pipeline(load_spec(spec), out))


def test_the_spec_named_in_dvc_yaml_header_is_found(tmp_path):
    spec = tmp_path / "specs" / "quickstart.yaml"
    spec.parent.mkdir()
    shutil.copy(REPO / "specs" / "quickstart.yaml", spec)
    out = tmp_path / "runs" / "quickstart"
    compile_out(spec, out)
    assert find_spec_file(out).resolve() == spec.resolve()

    spec.unlink()  # moved away since: nothing to pack, no error
    assert find_spec_file(out) is None
