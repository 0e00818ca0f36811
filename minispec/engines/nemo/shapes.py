"""The teacher's shapes, known before anything runs: from a local ``config.json`` or the known
hub models (:mod:`minispec.shapes`, the one shape model).

The nemo engine needs them twice: the linter checks tensor parallelism against head counts,
and the legacy (NeMo 1) fine-tuning command must restate the architecture, as the tutorial
does, because ``megatron_gpt_pretraining.py`` builds the model from its YAML config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from minispec.shapes import KNOWN_HUB_SHAPES, ModelShapes, compiled_pipeline_dir
from minispec.sources import parse_source

# what the nemo engine's commands and rules need of the teacher
_NEEDED = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
)


def from_hf_config(config: dict, origin: str = "config.json") -> ModelShapes | None:
    """Shapes from a Hugging Face ``config.json`` of a Llama-family model; None when it lacks
    a size the nemo engine needs."""
    shapes = ModelShapes.from_hf_config(config, origin)
    return shapes if all(getattr(shapes, name) is not None for name in _NEEDED) else None


def teacher_shapes(source_text: str, base: Path | None = None) -> ModelShapes | None:
    """Shapes of ``teacher.source`` when knowable offline, else None.

    ``base`` resolves a relative local path (the compile root); absolute paths are used as is.
    """
    source = parse_source(source_text)
    if source.kind == "hub":
        return KNOWN_HUB_SHAPES.get(source.repo or "")
    if source.kind != "local" or source.is_gguf:
        return None
    path = Path(source.path)
    base = base if base is not None else compiled_pipeline_dir()
    if not path.is_absolute() and base is not None:
        path = Path(os.path.normpath(base / path))  # '../x' of a directory not created yet
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        return from_hf_config(
            json.loads(config.read_text(encoding="utf-8")), f"config.json in {path}"
        )
    except (AttributeError, KeyError, TypeError, ValueError):  # not a config object
        return None


def lint_shapes(loaded) -> ModelShapes | None:
    """The teacher's shapes for lint rules, or None (an unparsable source is reported by the
    spec's teacher_source rule)."""
    try:
        return teacher_shapes(loaded.spec.teacher.source)
    except Exception:
        return None
