"""The teacher's shapes, known before anything runs: from a local ``config.json`` or a small table.

The nemo engine needs them twice: the linter checks tensor parallelism against head counts,
and the legacy (NeMo 1) fine-tuning command must restate the architecture, as the tutorial
does, because ``megatron_gpt_pretraining.py`` builds the model from its YAML config.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from minispec.sources import parse_source

# the pipeline directory that relative teacher paths in a compiled spec are relative to (set
# by the compiler), so a command restating the teacher's shapes does not depend on the cwd
_PIPELINE_DIR: ContextVar[Path | None] = ContextVar("minispec_pipeline_dir", default=None)


@contextlib.contextmanager
def teacher_paths_relative_to(directory: Path) -> Iterator[None]:
    token = _PIPELINE_DIR.set(Path(directory))
    try:
        yield
    finally:
        _PIPELINE_DIR.reset(token)


@dataclass(frozen=True)
class TeacherShapes:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    rotary_base: float
    llama3_rope_scaling: bool  # Llama 3.1's rope scaling (NeMo 1: scale_positional_embedding)
    tie_embeddings: bool


# Hub teachers whose config is not on this machine. Values from each model's config.json.
_LLAMA31_8B = TeacherShapes(
    num_layers=32,
    hidden_size=4096,
    ffn_hidden_size=14336,
    num_attention_heads=32,
    num_query_groups=8,
    rotary_base=500000.0,
    llama3_rope_scaling=True,
    tie_embeddings=False,
)
KNOWN_HUB_SHAPES: dict[str, TeacherShapes] = {
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": _LLAMA31_8B,
}


def from_hf_config(config: dict) -> TeacherShapes:
    """Shapes from a Hugging Face ``config.json`` of a Llama-family model."""
    heads = int(config["num_attention_heads"])
    # transformers 5 nests RoPE settings in `rope_parameters`; 4.x has them at the top level
    nested = config.get("rope_parameters") or {}
    rope_scaling = config.get("rope_scaling") or nested
    rope_type = rope_scaling.get("rope_type") or rope_scaling.get("type")
    rope_theta = config.get("rope_theta", nested.get("rope_theta", 10000.0))
    return TeacherShapes(
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=int(config["hidden_size"]),
        ffn_hidden_size=int(config["intermediate_size"]),
        num_attention_heads=heads,
        num_query_groups=int(config.get("num_key_value_heads") or heads),
        rotary_base=float(rope_theta),
        llama3_rope_scaling=rope_type == "llama3",
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def teacher_shapes(source_text: str, base: Path | None = None) -> TeacherShapes | None:
    """Shapes of ``teacher.source`` when knowable offline, else None.

    ``base`` resolves a relative local path (the compile root); absolute paths are used as is.
    """
    source = parse_source(source_text)
    if source.kind == "hub":
        return KNOWN_HUB_SHAPES.get(source.repo or "")
    if source.kind != "local" or source.is_gguf:
        return None
    path = Path(source.path)
    base = base if base is not None else _PIPELINE_DIR.get()
    if not path.is_absolute() and base is not None:
        path = Path(os.path.normpath(base / path))  # '../x' of a directory not created yet
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        return from_hf_config(json.loads(config.read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError):
        return None


def lint_shapes(loaded) -> TeacherShapes | None:
    """The teacher's shapes for lint rules, or None (an unparsable source is reported by the
    spec's teacher_source rule)."""
    try:
        return teacher_shapes(loaded.spec.teacher.source)
    except Exception:
        return None
