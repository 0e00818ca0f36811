"""Model surgery shared by depth and width pruning: shapes of a Llama-family config, and
rebuilding a model from a new config and a state dict.

A pruned model is never edited in place. It is built fresh from its new config (so every
module — attention ``layer_idx``, head counts, rotary tables, masks — is exactly what
``from_pretrained`` builds when the saved directory is reloaded) and the pruned weights are
loaded into it strictly: a missing, unexpected or mis-shaped tensor is an error, not a warning.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

# model.layers.<i>.<rest>: every per-layer parameter of the Llama layout
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ModelDims:
    """The sizes pruning changes, read from a Llama-family config."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int  # key/value heads
    head_dim: int
    vocab_size: int
    tied_embeddings: bool

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    def as_dict(self) -> dict:
        return asdict(self)


def model_dims(config: PretrainedConfig) -> ModelDims:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelDims(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=heads,
        num_query_groups=kv_heads,
        head_dim=head_dim,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def copy_config(config: PretrainedConfig) -> PretrainedConfig:
    return copy.deepcopy(config)


def rebuild_model(
    source: PreTrainedModel, config: PretrainedConfig, state_dict: dict[str, torch.Tensor]
) -> PreTrainedModel:
    """A fresh model of ``config`` (same class, dtype, device, attention) holding ``state_dict``.

    Shapes and keys are checked against the new model before loading, so a slicing mistake
    names the tensor instead of surfacing as a broadcasting error later.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from minispec.engines.torch.compat import no_init_weights

    device = next(source.parameters()).device
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=source.dtype,
            attn_implementation=source.config._attn_implementation,
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    assert not missing and not unexpected, (
        f"pruned state dict: missing {missing}, unexpected {unexpected}"
    )
    for key, tensor in state_dict.items():
        assert tuple(tensor.shape) == tuple(expected[key].shape), (
            f"{key}: pruned shape {tuple(tensor.shape)} != config shape {tuple(expected[key].shape)}"
        )
    model.load_state_dict(state_dict, strict=True)
    model.tie_weights()
    if source.generation_config is not None:
        model.generation_config = copy.deepcopy(source.generation_config)
    return model.eval()
