"""``import`` stage: the teacher source → ``models/teacher`` + ``metrics/import.json``.

The source (``teacher.source``: ``hf://ORG/NAME`` at ``teacher.revision``, a local HF directory,
or a local / ``pkg://`` GGUF file) is loaded once, a GGUF dequantized, and written as a standard
HF directory in the working dtype (``teacher.dtype``; ``auto`` is float32 on CPU and bfloat16 on
GPU). DVC caches the result, so later runs do not convert again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from minispec import layout
from minispec.engines.torch.modeling import (
    count_parameters,
    load_pretrained,
    resolve_device,
    resolve_dtype,
    save_model,
)
from minispec.fsio import write_json_atomic
from minispec.shapes import ModelShapes
from minispec.sources import parse_source


def run(spec, variant, root: Path) -> None:
    teacher = spec.teacher
    # the dtype follows where the pipeline trains (bf16 on GPU); the conversion itself runs on CPU
    dtype = resolve_dtype(teacher.dtype, resolve_device(spec.resources.accelerator))
    started = time.perf_counter()
    loaded = load_pretrained(
        teacher.source,
        root,
        dtype=dtype,
        revision=teacher.revision,
        trust_remote_code=teacher.trust_remote_code,
    )
    save_model(loaded.model, loaded.tokenizer, root / layout.TEACHER_DIR)
    loaded.info.update(source_path(teacher.source, loaded.info))
    metrics = import_metrics(teacher.source, loaded, str(dtype).removeprefix("torch."))
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(root / layout.metrics_path("import"), metrics)
    params = metrics["parameters"]
    print(
        f"import: {teacher.source} → {layout.TEACHER_DIR} ({metrics['architecture']}, "
        f"{params['total']:,} parameters, {metrics['dtype']})",
        file=sys.stderr,
    )


def source_path(source_text: str, info: dict) -> dict:
    """Where the source was read, as the metrics record it: a local path as params.yaml gives it
    (relative to the pipeline directory), a package file by its ``pkg://`` source alone. Where
    it lies on this machine is no result: it would make a reproduction elsewhere differ."""
    source = parse_source(source_text)
    if source.kind == "local":
        return {"path": source.path}
    if source.kind == "package":
        return {"path": None}
    return {}


def import_metrics(source: str, loaded, dtype: str) -> dict:
    config = loaded.model.config
    return {
        "source": source,
        **{k: v for k, v in loaded.info.items() if v is not None},
        "architecture": (config.architectures or [type(loaded.model).__name__])[0],
        "dtype": dtype,
        **ModelShapes.from_hf_object(config).architecture(),
        "tokenizer_size": len(loaded.tokenizer),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "parameters": count_parameters(loaded.model),
    }
