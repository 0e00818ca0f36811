"""Launcher: a Hugging Face checkpoint → a NeMo 2 checkpoint with ``llm.import_ckpt``.

Runs inside the NeMo container (``python -m minispec.engines.nemo.import_ckpt``); NeMo is
imported only in :func:`main`, so this module loads anywhere. NeMo's HF importer builds the
model config from the checkpoint's own ``config.json``; the NeMo model class only picks that
importer, so it is chosen from ``model_type``. The checkpoint is written beside the target and
renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

# HF model_type → the NeMo 2 model and config class names in nemo.collections.llm
NEMO_MODELS: dict[str, tuple[str, str]] = {
    "llama": ("LlamaModel", "LlamaConfig"),
    "mistral": ("MistralModel", "MistralConfig7B"),
    "qwen2": ("Qwen2Model", "Qwen2Config"),
    "gemma2": ("Gemma2Model", "Gemma2Config"),
    "nemotron": ("NemotronModel", "NemotronConfig"),
}
HF_PREFIX = "hf://"


def model_type(source: str) -> str:
    """``model_type`` of an ``hf://ORG/NAME`` repository or a local HF directory."""
    local = Path(source)
    if not source.startswith(HF_PREFIX) and (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text(encoding="utf-8"))["model_type"]
    from transformers import AutoConfig  # hub ids: the config is fetched (the container has access)

    return AutoConfig.from_pretrained(source.removeprefix(HF_PREFIX)).model_type


def nemo_source(source: str) -> str:
    """NeMo's importer address: ``hf://ORG/NAME`` as is, a local directory as ``hf://<abs path>``."""
    return source if source.startswith(HF_PREFIX) else HF_PREFIX + str(Path(source).resolve())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", required=True, help="hf://ORG/NAME or a local Hugging Face directory"
    )
    parser.add_argument("--output", required=True, help="NeMo 2 checkpoint directory to create")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kind = model_type(args.source)
    if kind not in NEMO_MODELS:
        raise SystemExit(
            f"error: model_type '{kind}' has no NeMo 2 importer here (supported: {', '.join(NEMO_MODELS)})"
        )
    from nemo.collections import llm

    model_class, config_class = (getattr(llm, name) for name in NEMO_MODELS[kind])
    output = Path(args.output)
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    llm.import_ckpt(
        model=model_class(config_class()), source=nemo_source(args.source), output_path=partial
    )
    shutil.rmtree(output, ignore_errors=True)
    os.replace(partial, output)


if __name__ == "__main__":
    main()
