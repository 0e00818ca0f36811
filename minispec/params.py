"""``params.yaml``: the resolved spec, written once by the compiler and read back by everyone.

The compiler writes it (:func:`params_text`): the spec with every default filled and local paths
relative to the pipeline directory, under minispec's header (YAML comments). Every reader goes
through this module: the stages (:func:`load_params`), ``minispec run``/``status`` comparing it
with the spec (:func:`parse_params`), bundles packing, verifying and reproducing it
(:func:`read_params`, :func:`parse_params`, :func:`validate_params`).

One validation mode: :func:`validate_params`, the spec's pydantic model as is. params.yaml is
machine-written, so it is not linted again (lint's rules ran on the spec it came from); a
params.yaml the model refuses was edited by hand or written by another minispec version, and
the error says so.

Light on purpose: the stage entry imports it before anything else, so it imports the spec
model and the YAML reader only when a function needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from minispec import layout
from minispec.errors import MinispecError, StageError

if TYPE_CHECKING:
    from minispec.spec.model import Spec

WHAT = "The resolved spec: every stage reads its settings here."  # the header's second line


class ParamsError(MinispecError):
    """A params.yaml is not a mapping, or not a resolved spec this minispec can read."""


def params_text(spec: Spec, source: str) -> str:
    """The text of params.yaml for ``spec`` (paths already relative to the pipeline directory)."""
    from minispec.compile.dvc import render_yaml, with_header

    return with_header(render_yaml(spec.model_dump(mode="json")), source, WHAT)


def parse_params(text: str, shown: str = layout.PARAMS_FILE) -> dict[str, Any]:
    """The data of a params.yaml text (the header is comments, so it reads as the body alone)."""
    from minispec.spec.load import parse_yaml

    raw, _ = parse_yaml(text, shown)
    return _mapping(raw, shown)


def read_params(path: Path) -> dict[str, Any]:
    """The data of the params.yaml file at ``path``."""
    from minispec.spec.load import read_document

    raw, _ = read_document(path)
    return _mapping(raw, str(path))


def validate_params(raw: Any, shown: str = layout.PARAMS_FILE) -> Spec:
    """The resolved spec in ``raw``: the one validation every params.yaml reader uses."""
    from pydantic import ValidationError

    from minispec.spec.model import Spec

    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        first = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()[:3]
        )
        raise ParamsError(
            f"{shown} is not a valid resolved spec ({exc.error_count()} problems: {first})",
            hint="recompile the spec with this minispec version (`minispec compile`)",
        ) from None


def load_params(root: Path, params_file: str = layout.PARAMS_FILE) -> Spec:
    """The resolved spec the compiler wrote to ``root/params_file`` (what a stage runs with)."""
    path = root / params_file
    if not path.exists():
        raise StageError(
            f"{path} not found",
            hint="stages run from the directory of the compiled dvc.yaml; run `minispec compile` first",
        )
    return validate_params(read_params(path), str(path))


def _mapping(raw: Any, shown: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{shown}: not a mapping", hint="recompile the spec with `minispec compile`"
        )
    return raw
