"""Model I/O of the torch engine: Llama-family causal LMs as standard Hugging Face directories.

A checkpoint is a directory ``AutoModelForCausalLM.from_pretrained`` loads with no custom code:
``config.json``, ``model.safetensors`` (never pickles), ``generation_config.json`` and the
tokenizer files. Supported are decoders with the Llama layout — ``q/k/v/o_proj``,
``gate/up/down_proj``, RMSNorm — i.e. Llama, Mistral, Qwen2 and Qwen3.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from minispec.errors import StageError
from minispec.fsio import atomic_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def check_supported(config, where: str) -> None:
    """Refuse architectures whose layout the pruning code does not know, naming them."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or model_type
        raise StageError(
            f"{where}: unsupported architecture '{arch}' (model_type '{model_type}')",
            hint=f"minispec supports Llama-family decoders: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )


def resolve_device(accelerator: str = "auto") -> torch.device:
    import torch

    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise StageError("resources.accelerator is 'cuda' but no CUDA device is available", hint="set resources.accelerator: auto or cpu")
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → float32 on CPU, bfloat16 on GPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, DTYPES[name])


def load_model(path: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu", trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a checkpoint directory in eval mode with SDPA attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise StageError(f"{path}: not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_supported(config, str(path))
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype if dtype is not None else "auto",
        attn_implementation="sdpa",
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    return model.to(device).eval()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise StageError(f"{path}: the tokenizer is not a fast (Rust) tokenizer", hint="provide a tokenizer.json")
    return tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, path: str | Path, *, extra_files: dict[str, str] | None = None) -> None:
    """Write a standard HF directory atomically (safetensors weights, config, tokenizer)."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")


def decoder_layers(model: PreTrainedModel):
    """The ``nn.ModuleList`` of decoder layers (``model.model.layers`` in the Llama layout)."""
    return model.model.layers


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    """Total parameters (tied weights once) and non-embedding parameters (no embeddings, no lm_head)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    embedding_params = embedding.numel() + (head.numel() if head is not None and head is not embedding else 0)
    return {"total": total, "non_embedding": total - embedding_params}
