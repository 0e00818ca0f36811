"""Tiny random models of every supported architecture, for fast unit tests."""

from __future__ import annotations


def tiny_config(model_type: str = "llama", **overrides):
    """A tiny config of a supported architecture; GQA by default (4 heads, 2 KV heads)."""
    from transformers import AutoConfig

    base = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


def make_tiny_model(config, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    # random init leaves norms at 1; perturb them so tests see every weight matter
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()
