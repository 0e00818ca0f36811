"""Helpers of the pruning tests: tokenized data, a tiny tokenizer, a pipeline directory, and the
parameter count a config implies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minispec import layout
from minispec.engines.torch.indexed import IndexedDatasetWriter


def expected_params(config) -> int:
    """Parameters a Llama-family config implies (tied embeddings counted once)."""
    hidden, ffn, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    q, k = heads * head_dim, kv * head_dim
    per_layer = 2 * hidden + hidden * q + 2 * hidden * k + q * hidden + 3 * hidden * ffn
    if config.model_type == "qwen2":
        per_layer += q + 2 * k  # q/k/v biases
    if getattr(config, "attention_bias", False):
        per_layer += q + 2 * k + hidden  # q/k/v/o biases
    if getattr(config, "mlp_bias", False):
        per_layer += 2 * ffn + hidden
    if config.model_type == "qwen3":
        per_layer += 2 * head_dim  # q_norm, k_norm
    embeddings = vocab * hidden * (1 if config.tie_word_embeddings else 2)
    return embeddings + config.num_hidden_layers * per_layer + hidden


def unique_params(model) -> int:
    seen = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    return sum(seen.values())


def make_tokenizer(vocab_size: int = 256):
    """A real fast tokenizer (word level) whose ids stay below ``vocab_size``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    vocab.update({f"w{i}": i for i in range(2, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def write_tokens(
    prefix: Path, num_tokens: int, vocab_size: int = 256, seed: int = 0, doc_length: int = 50
) -> None:
    """Random documents (ids 2..vocab-1, each ending in EOS id 1) as a Megatron .bin/.idx."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        written = 0
        while written < num_tokens:
            n = min(doc_length, num_tokens - written)
            doc = rng.integers(2, vocab_size, size=n)
            doc[-1] = 1
            writer.add_document(doc)
            written += n


def base_spec(prune: dict, seq_length: int = 16, seed: int = 7) -> dict:
    return {
        "version": 1,
        "name": "tiny",
        "engine": "torch",
        "seed": seed,
        "teacher": {"source": "teacher-src"},
        "data": {"source": "data-src", "seq_length": seq_length},
        "prune": prune,
        "resources": {"accelerator": "cpu"},
    }


def make_pipeline(
    root: Path,
    model,
    prune: dict,
    *,
    train_tokens: int = 4000,
    validation_tokens: int = 1000,
    seq_length: int = 16,
) -> Path:
    """A compiled-pipeline-like directory: params.yaml, models/teacher, tokenized train/validation."""
    from minispec.engines.torch.modeling import save_model

    root.mkdir(parents=True, exist_ok=True)
    save_model(model, make_tokenizer(model.config.vocab_size), root / layout.TEACHER_DIR)
    write_tokens(
        root / layout.tokens_prefix("train"), train_tokens, model.config.vocab_size, seed=1
    )
    if validation_tokens:
        write_tokens(
            root / layout.tokens_prefix("validation"),
            validation_tokens,
            model.config.vocab_size,
            seed=2,
        )
    write_params(root, base_spec(prune, seq_length=seq_length))
    return root


def write_params(root: Path, spec: dict) -> None:
    # JSON is YAML: the stage reads params.yaml with the spec loader
    (root / layout.PARAMS_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
