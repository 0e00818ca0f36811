"""Pruning reads a loaded model's sizes through the one shape model (minispec.shapes)."""

from __future__ import annotations

import pytest
from tiny_models import tiny_config

from minispec.engines.torch.surgery import model_dims
from minispec.errors import StageError
from minispec.shapes import ModelShapes


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_a_loaded_config_reads_as_its_config_json(model_type):
    config = tiny_config(model_type, tie_word_embeddings=False)
    by_attribute = ModelShapes.from_hf_object(config, "config")
    assert by_attribute == ModelShapes.from_hf_config(config.to_dict(), "config")
    assert model_dims(config) == ModelShapes.from_hf_object(config)


def test_the_pruning_sizes_keep_the_importance_files_keys():
    # importance files store these keys as metadata and check them when read back
    dims = model_dims(tiny_config("llama", num_attention_heads=8, num_key_value_heads=2))
    assert dims.as_dict() == {
        "num_layers": 4,
        "hidden_size": 64,
        "ffn_hidden_size": 128,
        "num_attention_heads": 8,
        "num_query_groups": 2,
        "head_dim": 16,
        "vocab_size": 256,
        "tied_embeddings": True,
    }
    assert dims.heads_per_group == 4


def test_head_dim_and_groups_default_as_transformers_does():
    config = tiny_config("llama", head_dim=None, num_key_value_heads=None)
    dims = model_dims(config)
    assert dims.head_dim == 64 // 4
    assert dims.num_query_groups == dims.num_attention_heads == 4
    assert dims.architecture()["num_key_value_heads"] == 4


def test_a_config_without_the_sizes_pruning_needs_is_refused():
    class NotALlama:
        model_type = "bert-like"
        hidden_size = 64
        num_attention_heads = 4

    with pytest.raises(StageError, match="no num_hidden_layers, intermediate_size"):
        model_dims(NotALlama())


def test_qkv_biases_as_the_config_says():
    assert ModelShapes.from_hf_object(tiny_config("qwen2")).qkv_bias  # always in Qwen2
    assert not ModelShapes.from_hf_object(tiny_config("llama")).qkv_bias
    assert ModelShapes.from_hf_object(tiny_config("llama", attention_bias=True)).qkv_bias
