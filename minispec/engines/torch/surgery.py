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
from typing import TYPE_CHECKING

from minispec.errors import StageError
from minispec.shapes import LAYOUT_SIZES, ModelShapes

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

# model.layers.<i>.<rest>: every per-layer parameter of the Llama layout
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def model_dims(config: PretrainedConfig) -> ModelShapes:
    """The sizes pruning changes, read from a loaded Llama-family config (the one shape model)."""
    shapes = ModelShapes.from_hf_object(config)
    missing = shapes.unknown(*LAYOUT_SIZES)
    if missing:
        raise StageError(
            f"the model's config has no {', '.join(missing)}: pruning needs a Llama-family model"
        )
    return shapes


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
