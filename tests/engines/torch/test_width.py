"""Width pruning: targets, scores, plans and the equivalences that prove the slicing right.

What the equivalence tests prove, for every architecture below:

- MLP neurons, query heads and whole KV groups: the pruned model's logits equal the dense
  model's with the removed units' outputs zeroed (their ``down_proj`` / ``o_proj`` input
  columns). So the kept neurons, heads and groups are wired exactly as in the dense model,
  including GQA's head→group mapping, biases and Qwen3's per-head norms.
- Hidden channels: pruning is NOT zeroing, because RMSNorm divides by the RMS over the channels
  that exist. The equivalence that holds: zero the removed channels everywhere they enter the
  residual stream (embedding columns, ``o_proj``/``down_proj`` rows and biases) so they stay zero
  through the network, and rescale every residual RMSNorm for the smaller width — gain ×
  sqrt(k/d) and epsilon × k/d, which turns ``x / sqrt(sum x²/d + eps)`` into
  ``x / sqrt(sum x²/k + eps)`` exactly. That dense model equals the pruned one, which proves
  every hidden-dim slice (embeddings, norms, q/k/v/gate/up columns, o/down rows, LM head)
  selects the same global channel set in the same order.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from prune_support import expected_params, unique_params

from minispec.engines.torch.surgery import model_dims
from minispec.engines.torch.width import (
    WidthScores,
    WidthTargets,
    group_scores_from_heads,
    head_channels,
    magnitude_scores,
    prune_width,
    random_scores,
    resolve_targets,
)
from minispec.errors import StageError
from minispec.spec.model import WidthPrune

ARCHS = {
    "llama-gqa": ("llama", {}),
    "llama-mha-untied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": False}),
    "llama-gqa-8-heads": (
        "llama",
        {"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8},
    ),
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
    "qwen3": ("qwen3", {}),
}
# targets for a model's dims, valid for every arch above (4 heads in 2 groups, 4 in 4, 8 in 4):
# "heads" halves the query heads (within groups under GQA; MHA stays MHA), "groups" halves the
# KV groups with their heads, "heads-and-groups" keeps half the groups with one head each
CUTS = {
    "ffn": lambda d: dict(target_ffn_hidden_size=96),
    "heads": lambda d: dict(target_num_attention_heads=d.num_attention_heads // 2),
    "groups": lambda d: dict(target_num_query_groups=d.num_query_groups // 2),
    "heads-and-groups": lambda d: dict(
        target_num_attention_heads=d.num_query_groups // 2,
        target_num_query_groups=d.num_query_groups // 2,
    ),
    "hidden": lambda d: dict(target_hidden_size=48),
    "all": lambda d: dict(
        target_ffn_hidden_size=80, target_hidden_size=40, target_num_query_groups=1
    ),
}


def arch(tiny_llama, name, seed=0):
    model_type, overrides = ARCHS[name]
    return tiny_llama(model_type, seed=seed, **overrides)


def variant(**targets):
    return WidthPrune(kind="width", **targets)


def tokens(batch=2, length=11):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(3))


def complement(kept: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[kept] = False
    return torch.nonzero(mask).flatten()


def zeroed_reference(model, plan):
    """The dense model with every unit the plan removes switched off (hidden: see module doc)."""
    dense = copy.deepcopy(model)
    dims = model_dims(model.config)
    dropped_hidden = complement(plan.hidden, dims.hidden_size)
    ratio = len(plan.hidden) / dims.hidden_size
    with torch.no_grad():
        for index, layer in enumerate(dense.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            mlp.down_proj.weight[:, complement(plan.ffn[index], dims.ffn_hidden_size)] = 0
            gone = complement(plan.query_heads[index], dims.num_attention_heads)
            attn.o_proj.weight[:, head_channels(gone, dims.head_dim)] = 0
            # hidden: the removed channels never get written...
            for writer in (attn.o_proj, mlp.down_proj):
                writer.weight[dropped_hidden, :] = 0
                if writer.bias is not None:
                    writer.bias[dropped_hidden] = 0
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.mul_(math.sqrt(ratio))
                norm.variance_epsilon *= ratio
        dense.model.embed_tokens.weight[:, dropped_hidden] = 0  # ...nor read from the embeddings
        dense.model.norm.weight.mul_(math.sqrt(ratio))
        dense.model.norm.variance_epsilon *= ratio
    return dense


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
def test_pruning_to_the_same_sizes_changes_nothing(tiny_llama, arch_name):
    model = arch(tiny_llama, arch_name)
    dims = model_dims(model.config)
    targets = resolve_targets(
        variant(
            target_hidden_size=dims.hidden_size,
            target_ffn_hidden_size=dims.ffn_hidden_size,
            target_num_attention_heads=dims.num_attention_heads,
            target_num_query_groups=dims.num_query_groups,
        ),
        dims,
        "prune.w",
        allow_same=True,
    )
    pruned, _ = prune_width(model, random_scores(dims, seed=1), targets)
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(pruned(ids).logits, model(ids).logits)


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("arch_name", sorted(ARCHS))
def test_width_pruning_equals_the_dense_model_with_the_pruned_units_zeroed(
    tiny_llama, arch_name, cut
):
    model = arch(tiny_llama, arch_name)
    dims = model_dims(model.config)
    targets = resolve_targets(variant(**CUTS[cut](dims)), dims, "prune.w")
    pruned, plan = prune_width(model, random_scores(dims, seed=5), targets)
    reference = zeroed_reference(model, plan)
    ids = tokens()
    with torch.no_grad():
        expected = reference(ids).logits
        torch.testing.assert_close(pruned(ids).logits, expected, rtol=1e-4, atol=1e-5)
        # and the cut is not vacuous: the dense model itself differs
        assert not torch.allclose(model(ids).logits, expected, atol=1e-3)


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
def test_width_pruned_model_reloads_in_transformers_with_the_implied_parameter_count(
    tiny_llama, arch_name, tmp_path
):
    from transformers import AutoModelForCausalLM

    from minispec.engines.torch.modeling import save_model

    model = arch(tiny_llama, arch_name)
    dims = model_dims(model.config)
    pruned, _ = prune_width(
        model,
        magnitude_scores(model),
        resolve_targets(variant(**CUTS["all"](dims)), dims, "prune.w"),
    )
    save_model(pruned, None, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    config = reloaded.config
    assert (config.hidden_size, config.intermediate_size, config.num_key_value_heads) == (40, 80, 1)
    assert config.num_attention_heads == dims.heads_per_group  # one whole group kept
    assert config.head_dim == dims.head_dim
    assert unique_params(reloaded) == expected_params(config) == unique_params(pruned)
    assert config.tie_word_embeddings == dims.tie_embeddings
    if dims.tie_embeddings:
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    prompt = tokens(batch=1, length=5)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(prompt).logits, pruned(prompt).logits)
        generated = reloaded.generate(prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 10)


def test_gqa_plan_keeps_whole_groups_and_heads_within_their_groups(tiny_llama):
    model = tiny_llama("llama", num_attention_heads=8, num_key_value_heads=4, head_dim=8)
    dims = model_dims(model.config)
    heads = [torch.tensor([1.0, 9, 2, 8, 3, 7, 4, 6])] * 4  # groups {0,1} {2,3} {4,5} {6,7}
    scores = WidthScores(
        ffn=[torch.rand(128)] * 4,
        heads=heads,
        groups=[group_scores_from_heads(h, 4) for h in heads],
        hidden=torch.rand(64),
    )
    targets = resolve_targets(
        variant(target_num_attention_heads=2, target_num_query_groups=2), dims, "w"
    )
    _, plan = prune_width(model, scores, targets)
    # group norms: g0 sqrt(82), g1 sqrt(68), g2 sqrt(58), g3 sqrt(52) -> keep g0, g1; best head of each
    assert plan.kv_heads[0].tolist() == [0, 1]
    assert plan.query_heads[0].tolist() == [1, 3]


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (dict(target_hidden_size=65), "cannot grow"),
        (dict(target_ffn_hidden_size=200), "cannot grow"),
        (dict(target_num_query_groups=3), "cannot grow"),
        (dict(target_hidden_size=64), "nothing would be pruned"),
        (dict(target_num_attention_heads=4, target_num_query_groups=2), "nothing would be pruned"),
        (dict(target_num_attention_heads=3), "cannot be split evenly"),
        (dict(target_num_attention_heads=3, target_num_query_groups=1), "3 query heads per group"),
    ],
)
def test_bad_targets_are_refused(tiny_llama, targets, message):
    dims = model_dims(tiny_llama("llama").config)  # hidden 64, ffn 128, 4 heads in 2 groups
    with pytest.raises(StageError, match=message):
        resolve_targets(variant(**targets), dims, "prune.width")


def _llama_config_refuses(**fields) -> bool:
    """Whether the installed transformers' LlamaConfig itself rejects these fields (5.x does
    for a hidden size that is not a multiple of the heads; 4.x does not)."""
    from transformers import LlamaConfig

    try:
        LlamaConfig(num_key_value_heads=2, head_dim=16, **fields)
    except Exception:
        return True
    return False


def test_targets_transformers_would_refuse_on_reload_are_refused_first(tiny_llama):
    from minispec.engines.torch.width import check_pruned_config

    # LlamaConfig wants hidden_size % num_attention_heads == 0 (6 heads in 2 groups, head_dim 16)
    model = tiny_llama(
        "llama", num_attention_heads=6, num_key_value_heads=2, head_dim=16, hidden_size=96
    )
    dims = model_dims(model.config)
    targets = resolve_targets(variant(target_hidden_size=64), dims, "prune.width")
    if not _llama_config_refuses(hidden_size=64, num_attention_heads=6):
        # transformers 4.x accepts it (and so reloads the pruned model): nothing to refuse
        check_pruned_config(model.config, targets, "prune.width")
        return
    with pytest.raises(
        StageError,
        match="hidden size \\(64\\) is not a multiple of the number of attention heads \\(6\\)",
    ) as error:
        check_pruned_config(model.config, targets, "prune.width")
    assert "multiple of 6 (e.g. 60 or 66)" in error.value.hint
    assert (
        "target_num_attention_heads to one of [2, 4]" in error.value.hint
    )  # 2 groups of 1 or 2 heads
    # Qwen2 has no such rule; a fitting Llama target passes
    qwen2 = tiny_llama(
        "qwen2", num_attention_heads=6, num_key_value_heads=2, head_dim=16, hidden_size=96
    )
    check_pruned_config(qwen2.config, targets, "prune.width")
    check_pruned_config(
        model.config, resolve_targets(variant(target_hidden_size=60), dims, "w"), "w"
    )


def test_heads_cannot_be_regrouped(tiny_llama):
    dims = model_dims(tiny_llama("llama", num_key_value_heads=4).config)  # MHA: 1 head per group
    with pytest.raises(
        StageError, match="2 query heads per group, but the model's groups have 1"
    ) as error:
        resolve_targets(
            variant(target_num_attention_heads=2, target_num_query_groups=1), dims, "prune.width"
        )
    assert "cannot regroup" in error.value.hint


def test_target_resolution_keeps_the_attention_kind():
    gqa = model_dims(_config(heads=4, kv=2))
    mha = model_dims(_config(heads=4, kv=4))
    assert resolve_targets(variant(target_num_attention_heads=2), gqa, "w") == WidthTargets(
        64, 128, 2, 2
    )
    assert resolve_targets(variant(target_num_attention_heads=2), mha, "w") == WidthTargets(
        64, 128, 2, 2
    )
    assert resolve_targets(variant(target_num_query_groups=1), gqa, "w") == WidthTargets(
        64, 128, 2, 1
    )
    assert resolve_targets(variant(target_hidden_size=32), gqa, "w") == WidthTargets(32, 128, 4, 2)
    # a target equal to the source size just says "keep" (NeMo's tutorial passes them)
    keep = variant(target_hidden_size=32, target_num_attention_heads=4, target_num_query_groups=2)
    assert resolve_targets(keep, gqa, "w") == WidthTargets(32, 128, 4, 2)


def _config(heads, kv):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tiny_models import tiny_config

    return tiny_config("llama", num_attention_heads=heads, num_key_value_heads=kv)


def test_random_scores_are_seeded(tiny_llama):
    dims = model_dims(tiny_llama("llama").config)
    a, b, c = random_scores(dims, 1), random_scores(dims, 1), random_scores(dims, 2)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.ffn[3], b.ffn[3])
    assert not torch.equal(a.hidden, c.hidden)


def test_magnitude_scores_see_the_weights(tiny_llama):
    model = tiny_llama("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 7] = 0
        model.model.layers[1].mlp.gate_proj.weight[7] = 0
        model.model.layers[1].mlp.up_proj.weight[7] = 0
        model.model.layers[2].self_attn.q_proj.weight[16:32] = 0  # head 1
        model.model.layers[2].self_attn.o_proj.weight[:, 16:32] = 0
        model.model.layers[1].mlp.down_proj.weight[:, 9] *= 10
    scores = magnitude_scores(model)
    assert scores.ffn[1][7] == 0 and scores.ffn[1].argmax() == 9
    assert scores.heads[2][1] == 0 and scores.heads[2].argmin() == 1
    assert [
        s.shape[0] for s in (scores.ffn[0], scores.heads[0], scores.groups[0], scores.hidden)
    ] == [128, 4, 2, 64]


def test_magnitude_scores_are_float32_host_tensors_like_the_other_importances(tiny_llama):
    """The plan indexes the weights with them wherever the weights live (a bf16 model on a GPU
    gave GPU scores, and pruning failed with a device mismatch)."""
    model = tiny_llama("llama").to(torch.bfloat16)
    scores = magnitude_scores(model)
    every = [*scores.ffn, *scores.heads, *scores.groups, scores.hidden]
    assert {(s.device.type, s.dtype) for s in every} == {("cpu", torch.float32)}
