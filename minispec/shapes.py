"""One shape model: a transformer's dimensions, as lint, the engines and the compiler see them.

:class:`ModelShapes` is a dependency-free dataclass (no torch, no transformers) built from a
Hugging Face ``config.json`` (:meth:`ModelShapes.from_hf_config`) or GGUF metadata
(:meth:`ModelShapes.from_gguf`), or taken from :data:`KNOWN_HUB_SHAPES` for hub models whose
config is not on this machine. Fields carry Hugging Face's names and are None where the source
does not say; the nemo engine reads Megatron's names (``num_layers``, ``ffn_hidden_size``, ...)
through properties of the same object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# the sizes a Llama-family model is cut along (pruning) and counted by (the search's parameter
# count); a config without one of them is not a model minispec can prune
LAYOUT_SIZES = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)


# the config.json keys from_hf_config reads
_HF_CONFIG_KEYS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
)


@dataclass(frozen=True)
class ModelShapes:
    origin: str  # where the numbers come from, for messages: "config.json in DIR", "GGUF metadata of FILE"
    model_type: str | None = None
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int | None = None
    vocab_size: int | None = None
    tie_word_embeddings: bool | None = None  # None: the source does not say
    rope_theta: float | None = None
    llama3_rope_scaling: bool | None = None  # Llama 3.1's RoPE scaling
    attention_bias: bool | None = None  # q/k/v/o biases where the config says so (Llama's option)

    def describe(self) -> str:
        return (
            f"{self.model_type or '?'}: {self.num_hidden_layers} layers, hidden {self.hidden_size}, "
            f"MLP {self.intermediate_size}, {self.num_attention_heads} heads, "
            f"{self.num_key_value_heads} query groups, head_dim {self.head_dim}, "
            f"{self.max_position_embeddings} positions, vocab {self.vocab_size} ({self.origin})"
        )

    # ---- Megatron's names (the nemo engine) -------------------------------------------------

    @property
    def num_layers(self) -> int | None:
        return self.num_hidden_layers

    @property
    def ffn_hidden_size(self) -> int | None:
        return self.intermediate_size

    @property
    def num_query_groups(self) -> int | None:
        return self.num_key_value_heads

    @property
    def rotary_base(self) -> float | None:
        return self.rope_theta

    @property
    def tie_embeddings(self) -> bool:
        return bool(self.tie_word_embeddings)

    @property
    def qkv_bias(self) -> bool:
        """q/k/v projections with biases: always in Qwen2, by ``attention_bias`` elsewhere."""
        return self.model_type == "qwen2" or bool(self.attention_bias)

    @property
    def heads_per_group(self) -> int:
        """Query heads per key/value group (pruning keeps or drops whole groups)."""
        return self.num_attention_heads // self.num_key_value_heads  # type: ignore[operator]

    # ---- the dictionaries stages write ------------------------------------------------------

    def as_dict(self) -> dict:
        """The sizes pruning changes, in Megatron's names: the metadata of an importance file
        and the ``model`` of its metrics. The keys are fixed: files written before stay valid."""
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "ffn_hidden_size": self.ffn_hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_query_groups": self.num_query_groups,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tied_embeddings": self.tie_embeddings,
        }

    def architecture(self) -> dict[str, int | str | None]:
        """The architecture numbers that metrics and model cards report, in Hugging Face's
        names (the same keys everywhere)."""
        return {
            "model_type": self.model_type,
            "num_hidden_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
        }

    def unknown(self, *names: str) -> list[str]:
        """Those of ``names`` (fields or properties) the source did not give."""
        return [name for name in names if getattr(self, name) is None]

    # ---- constructors -----------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, data: dict, origin: str) -> ModelShapes:
        """Shapes from the JSON object of a Hugging Face ``config.json``."""
        if "num_hidden_layers" not in data and isinstance(data.get("text_config"), dict):
            data = {
                **data["text_config"],
                "model_type": data.get("model_type"),
            }  # multimodal wrappers
        heads = _int(data.get("num_attention_heads"))
        hidden = _int(data.get("hidden_size"))
        head_dim = _int(data.get("head_dim")) or (hidden // heads if hidden and heads else None)
        # transformers 5 nests RoPE settings in `rope_parameters`; 4.x has them at the top level
        nested = (
            data.get("rope_parameters") if isinstance(data.get("rope_parameters"), dict) else {}
        )
        rope_scaling = data.get("rope_scaling") or nested
        rope_type = (
            rope_scaling.get("rope_type") or rope_scaling.get("type")
            if isinstance(rope_scaling, dict)
            else None
        )
        rope_theta = data.get("rope_theta", nested.get("rope_theta", 10000.0))
        tie = data.get("tie_word_embeddings")
        bias = data.get("attention_bias")
        return cls(
            origin=origin,
            model_type=data.get("model_type") if isinstance(data.get("model_type"), str) else None,
            num_hidden_layers=_int(data.get("num_hidden_layers")),
            hidden_size=hidden,
            intermediate_size=_int(data.get("intermediate_size")),
            num_attention_heads=heads,
            num_key_value_heads=_int(data.get("num_key_value_heads")) or heads,
            head_dim=head_dim,
            max_position_embeddings=_int(data.get("max_position_embeddings")),
            vocab_size=_int(data.get("vocab_size")),
            tie_word_embeddings=tie if isinstance(tie, bool) else None,
            rope_theta=float(rope_theta) if isinstance(rope_theta, (int, float)) else None,
            llama3_rope_scaling=rope_type == "llama3",
            attention_bias=bias if isinstance(bias, bool) else None,
        )

    @classmethod
    def from_hf_object(cls, config: Any, origin: str = "the model's config") -> ModelShapes:
        """Shapes of a loaded transformers ``PretrainedConfig``, read by attribute (duck-typed:
        nothing is imported). Attributes it lacks count as keys ``config.json`` lacks."""
        data = {key: getattr(config, key) for key in _HF_CONFIG_KEYS if hasattr(config, key)}
        return cls.from_hf_config(data, origin)

    @classmethod
    def from_gguf(
        cls,
        meta: dict,
        tensors: list[str],
        origin: str,
        *,
        per_layer_kv: bool,
        token_count: int | None,
    ) -> ModelShapes:
        """Shapes from GGUF metadata (``<arch>.block_count``, ...). ``per_layer_kv``: the file
        gives one KV head count per layer (no single number); ``token_count``: the length of
        its vocabulary array."""
        arch = meta["general.architecture"]

        def number(key: str) -> int | None:
            return _int(meta.get(f"{arch}.{key}"))

        heads = number("attention.head_count")
        hidden = number("embedding_length")
        return cls(
            origin=origin,
            model_type=arch,
            num_hidden_layers=number("block_count"),
            hidden_size=hidden,
            intermediate_size=number("feed_forward_length"),
            num_attention_heads=heads,
            num_key_value_heads=None
            if per_layer_kv
            else (number("attention.head_count_kv") or heads),
            head_dim=number("attention.key_length")
            or (hidden // heads if hidden and heads else None),
            max_position_embeddings=number("context_length"),
            vocab_size=number("vocab_size") or token_count,
            # llama.cpp writes no separate `output.weight` when the LM head is the embedding
            tie_word_embeddings=("output.weight" not in tensors) if tensors else None,
        )


# Hub models whose config is not on this machine. Values from each model's config.json.
_LLAMA31_8B = ModelShapes(
    origin="known shapes of Llama-3.1-8B",
    model_type="llama",
    num_hidden_layers=32,
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=131072,
    vocab_size=128256,
    tie_word_embeddings=False,
    rope_theta=500000.0,
    llama3_rope_scaling=True,
)
KNOWN_HUB_SHAPES: dict[str, ModelShapes] = {
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": _LLAMA31_8B,
}


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


def compiled_pipeline_dir() -> Path | None:
    """The directory a compiled spec's relative teacher path is relative to, while compiling."""
    return _PIPELINE_DIR.get()
