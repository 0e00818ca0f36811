"""Config rewrites that make saved models load alike in transformers 4.x and 5.x."""

from __future__ import annotations

from minispec.engines.torch.compat import portable_config, portable_tokenizer_config


def test_rope_parameters_gain_the_legacy_keys_4x_reads():
    llama3 = {
        "rope_parameters": {
            "rope_theta": 500000.0,
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "dtype": "bfloat16",
    }
    config = portable_config(llama3)
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert config["torch_dtype"] == "bfloat16"
    assert config["rope_parameters"] == llama3["rope_parameters"]  # 5.x keeps reading these


def test_default_rope_gets_no_scaling_and_written_legacy_keys_are_kept():
    config = portable_config({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    assert config["rope_theta"] == 10000.0 and "rope_scaling" not in config
    assert portable_config({"rope_theta": 1.0, "torch_dtype": "float32"}) == {
        "rope_theta": 1.0,
        "torch_dtype": "float32",
    }


def test_tokenizer_class_is_one_both_versions_know():
    assert (
        portable_tokenizer_config({"tokenizer_class": "TokenizersBackend"})["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    assert portable_tokenizer_config({"tokenizer_class": "GPT2Tokenizer"}) == {
        "tokenizer_class": "GPT2Tokenizer",
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids for an LM
    }
