"""NVIDIA's own Minitron on CPU, for the parity tests: a Megatron-Core GPT (local spec, no
TransformerEngine) built from a Hugging Face Llama's weights, ModelOpt's ``mcore_minitron``
pruning run on it, and the pruned model converted back to a Hugging Face Llama.

Only what the tests need: one process (gloo, world size 1), TP = PP = 1, fp32, Llama-style
models (RMSNorm, SwiGLU, rotary, no biases, grouped-query attention, tied or untied embeddings).

Megatron's tensors are ``[seq, batch, hidden]`` (ours ``[batch, seq, hidden]``); its fused QKV
weight interleaves per KV group: for group ``g``, the ``heads_per_group`` query heads' rows, then
the group's key rows, then its value rows (``head_dim`` rows each). Its SwiGLU ``linear_fc1`` is
``[gate; up]`` stacked on the output dimension.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import torch

# --------------------------------------------------------------------------------------------
# process group and ModelOpt set-up


@contextlib.contextmanager
def cpu_megatron():
    """A one-process gloo group and Megatron's model-parallel state with TP = PP = 1, plus the
    three places where Megatron-Core 0.16 assumes a GPU even with the local spec, each replaced
    by its CPU equivalent for the duration (restored on exit):

    - the global scratch buffer of the local attention (``CpuMemoryBuffer``);
    - the CUDA RNG tracker that attention dropout forks (dropout is 0 here: nothing to fork);
    - RoPE's move of ``inv_freq`` to CUDA (:func:`keep_rope_on_cpu`, per model).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    own_group = not dist.is_initialized()
    if own_group:
        # a file rendezvous: no port to collide with another test run on the same machine
        handle, path = tempfile.mkstemp(prefix="minispec-gloo-")
        os.close(handle)
        os.unlink(path)
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    parallel_state._GLOBAL_MEMORY_BUFFER = CpuMemoryBuffer()
    tracker = tensor_parallel.get_cuda_rng_tracker
    tensor_parallel.get_cuda_rng_tracker = lambda *a, **k: _NoRngFork()
    try:
        yield
    finally:
        tensor_parallel.get_cuda_rng_tracker = tracker
        parallel_state.destroy_model_parallel()
        if own_group:
            dist.destroy_process_group()


class _NoRngFork:
    def fork(self, *args, **kwargs):
        return contextlib.nullcontext()


class CpuMemoryBuffer:
    """Megatron's global scratch buffer (``GlobalMemoryBuffer``, which the local attention's
    ``baddbmm`` writes into) allocates on ``torch.cuda.current_device()``; the same on the CPU."""

    def __init__(self):
        self.buffer: dict = {}

    def get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
        numel = 1
        for size in tensor_shape:
            numel *= size
        if self.buffer.get((name, dtype)) is None or self.buffer[(name, dtype)].numel() < numel:
            self.buffer[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return self.buffer[(name, dtype)][:numel].view(*tensor_shape)


def register_torch_rmsnorm() -> None:
    """Let ModelOpt prune ``hidden_size`` through ``torch.nn.RMSNorm``.

    Megatron-Core's local spec without Apex builds its norms with ``WrappedTorchNorm``, which
    returns a plain ``torch.nn.RMSNorm``; ModelOpt (0.37-0.47) registers a dynamic module for
    ``nn.LayerNorm`` and Megatron's ``FusedLayerNorm`` only, so conversion stops at the first
    RMSNorm. This registers the same dynamic module for it, sharing the model's ``hidden_size``
    hparam (``_DynamicFusedLayerNorm`` does the same for ``FusedLayerNorm``; RMSNorm has no bias).
    """
    from modelopt.torch.nas.modules import _DynamicLayerNorm
    from modelopt.torch.nas.registry import DMRegistry

    if torch.nn.RMSNorm in DMRegistry:
        return

    @DMRegistry.register({torch.nn.RMSNorm: "torch.nn.RMSNorm"})
    class _DynamicTorchRMSNorm(_DynamicLayerNorm):
        def _setup(self, *, num_features):
            self._register_hparam("num_features", num_features)
            self._register_dynamic_attribute("weight", self._cut_to_active_features)
            self._register_dynamic_attribute("normalized_shape", self._get_normalized_shape)


# --------------------------------------------------------------------------------------------
# HF Llama <-> Megatron-Core GPT


def mcore_gpt_from_hf(hf_model):
    """A Megatron-Core ``GPTModel`` (local spec) with ``hf_model``'s architecture and weights."""
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    c = hf_model.config
    assert c.hidden_act == "silu" and not getattr(c, "attention_bias", False)
    rope = getattr(c, "rope_parameters", None) or {"rope_theta": c.rope_theta}
    assert rope.get("rope_type", "default") == "default", "llama3 rope scaling is not mapped here"
    config = TransformerConfig(
        num_layers=c.num_hidden_layers,
        hidden_size=c.hidden_size,
        ffn_hidden_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads,
        num_query_groups=c.num_key_value_heads,
        kv_channels=c.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=c.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=c.vocab_size,
        max_sequence_length=c.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=rope["rope_theta"],
        share_embeddings_and_output_weights=c.tie_word_embeddings,
    )
    keep_rope_on_cpu(model.rotary_pos_emb)
    missing, unexpected = model.load_state_dict(hf_to_mcore_state_dict(hf_model), strict=False)
    # Megatron keeps a non-persistent-looking "_extra_state" per module; nothing else may be missing
    assert not unexpected, unexpected
    assert all(k.endswith("_extra_state") for k in missing), missing
    return model.eval()


def keep_rope_on_cpu(rotary) -> None:
    """Megatron's ``RotaryEmbedding.get_emb`` moves ``inv_freq`` to ``torch.cuda.current_device()``
    on the first forward (it assumes a GPU); this instance computes the same embedding where
    ``inv_freq`` already is. The frequencies themselves are Megatron's own code."""
    import types

    def get_emb(self, max_seq_len: int, offset: int = 0):
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)  # [T, dim / 2]
        assert not self.rotary_interleaved
        return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]  # [T, 1, 1, dim]

    rotary.get_emb = types.MethodType(get_emb, rotary)


def hf_to_mcore_state_dict(hf_model) -> dict[str, torch.Tensor]:
    c = hf_model.config
    hd, groups = c.head_dim, c.num_key_value_heads
    per_group = c.num_attention_heads // groups
    sd = {"embedding.word_embeddings.weight": hf_model.model.embed_tokens.weight}
    for i, layer in enumerate(hf_model.model.layers):
        attn, mlp, prefix = layer.self_attn, layer.mlp, f"decoder.layers.{i}."
        q = attn.q_proj.weight.view(groups, per_group * hd, -1)  # [G, hpg*hd, H]
        k = attn.k_proj.weight.view(groups, hd, -1)  # [G, hd, H]
        v = attn.v_proj.weight.view(groups, hd, -1)
        sd[prefix + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], 1).flatten(0, 1)
        sd[prefix + "self_attention.linear_proj.weight"] = attn.o_proj.weight
        sd[prefix + "input_layernorm.weight"] = layer.input_layernorm.weight
        sd[prefix + "pre_mlp_layernorm.weight"] = layer.post_attention_layernorm.weight
        sd[prefix + "mlp.linear_fc1.weight"] = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        sd[prefix + "mlp.linear_fc2.weight"] = mlp.down_proj.weight
    sd["decoder.final_layernorm.weight"] = hf_model.model.norm.weight
    if not c.tie_word_embeddings:
        sd["output_layer.weight"] = hf_model.lm_head.weight
    return {k: v.detach().clone() for k, v in sd.items()}


def hf_from_mcore(mcore_model, like):
    """A Hugging Face model of ``like``'s family with ``mcore_model``'s (possibly pruned) shapes
    and weights: the inverse of :func:`hf_to_mcore_state_dict`."""
    from transformers import AutoModelForCausalLM

    mc = mcore_model.config
    config = like.config.__class__.from_dict(like.config.to_dict())
    config.hidden_size = mc.hidden_size
    config.intermediate_size = mc.ffn_hidden_size
    config.num_attention_heads = mc.num_attention_heads
    config.num_key_value_heads = mc.num_query_groups
    config.num_hidden_layers = mc.num_layers
    config.head_dim = mc.kv_channels
    hd, groups = mc.kv_channels, mc.num_query_groups
    per_group = mc.num_attention_heads // groups
    sd = {k: v for k, v in mcore_model.state_dict().items() if not k.endswith("_extra_state")}
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"]}
    for i in range(mc.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[src + "self_attention.linear_qkv.weight"].view(groups, (per_group + 2) * hd, -1)
        q, k, v = qkv.split([per_group * hd, hd, hd], dim=1)
        out[dst + "self_attn.q_proj.weight"] = q.flatten(0, 1)
        out[dst + "self_attn.k_proj.weight"] = k.flatten(0, 1)
        out[dst + "self_attn.v_proj.weight"] = v.flatten(0, 1)
        out[dst + "self_attn.o_proj.weight"] = sd[src + "self_attention.linear_proj.weight"]
        out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "pre_mlp_layernorm.weight"]
        gate, up = sd[src + "mlp.linear_fc1.weight"].chunk(2)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = sd[src + "mlp.linear_fc2.weight"]
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.load_state_dict(
        {k: v.contiguous() for k, v in out.items()}, strict=not config.tie_word_embeddings
    )
    return model.eval()


def mcore_logits(mcore_model, input_ids: torch.Tensor) -> torch.Tensor:
    """``[b, T]`` ids → ``[b, T, vocab]`` logits of a Megatron GPT.

    The causal mask is passed in (``True`` = masked, ``[1, 1, T, T]``): Megatron's default one is
    built on ``device="cuda"``."""
    length = input_ids.shape[1]
    position_ids = torch.arange(length).unsqueeze(0).expand_as(input_ids)
    mask = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        return mcore_model(input_ids, position_ids, attention_mask=mask)


# --------------------------------------------------------------------------------------------
# ModelOpt's Minitron


def modelopt_prune(mcore_model, batches: list[torch.Tensor], export_config: dict):
    """``mtp.prune`` in ``mcore_minitron`` mode with explicit targets: what
    ``examples/megatron_bridge/prune_minitron.py --prune_export_config`` calls (the same search
    space divisors), calibrating on ``batches`` of ``[b, T + 1]`` windows (the first T tokens, as
    our importance pass reads them). Returns the pruned model (in place) and ModelOpt's scores
    (``activations_per_rank``, ``layer_scores``, ``sorted_layers``)."""
    import modelopt.torch.prune as mtp

    def forward_loop(model):
        for batch in batches:
            mcore_logits(model, batch[:, :-1])

    ss_config = mtp.mcore_minitron.get_mcore_minitron_config(
        hidden_size_divisor=1,  # prune_minitron.py uses 64 for real models; ours are 64 wide
        ffn_hidden_size_divisor=1,
        mamba_head_dim_divisor=8,
        num_moe_experts_divisor=8,
        num_layers_divisor=1,
    )
    pruned, scores = mtp.prune(
        mcore_model,
        mode=[("mcore_minitron", ss_config)],
        constraints={"export_config": dict(export_config)},
        dummy_input=None,
        config={"forward_loop": forward_loop, "checkpoint": None},
    )
    return pruned, scores
