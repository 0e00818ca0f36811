"""Depth pruning: the layer runner, layer removal, and the two importance scores."""

from __future__ import annotations

import pytest
import torch
from prune_support import expected_params, unique_params

from minispec.engines.torch.calibration import lm_loss_sum
from minispec.engines.torch.depth import (
    LayerRunner,
    attention_types,
    check_drop_layers,
    choose_layers,
    drop_layers,
    score_layers,
    scores_report,
)
from minispec.errors import StageError

# architectures and configs the runner and the surgery must handle; sliding windows shorter
# than the test sequences so that the masks matter
ARCHS = {
    "llama-gqa": ("llama", {}),
    "llama-mha-untied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": False}),
    "qwen2-mixed-sliding": (
        "qwen2",
        {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 2},
    ),
    "mistral-sliding": ("mistral", {"sliding_window": 5}),
    "qwen3": ("qwen3", {}),
}


@pytest.fixture(params=sorted(ARCHS))
def arch_model(request, tiny_llama):
    model_type, overrides = ARCHS[request.param]
    return tiny_llama(model_type, **overrides)


def tokens(batch=3, length=13, vocab=256, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_attention_types_follow_the_model(tiny_llama):
    qwen2 = tiny_llama("qwen2", **ARCHS["qwen2-mixed-sliding"][1])
    assert attention_types(qwen2.config) == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert (
        attention_types(tiny_llama("mistral", sliding_window=5).config) == ["sliding_attention"] * 4
    )
    assert attention_types(tiny_llama("llama").config) == ["full_attention"] * 4


def test_runner_reproduces_the_model_forward(arch_model):
    ids = tokens()
    runner = LayerRunner(arch_model)
    with torch.no_grad():
        hidden = arch_model.model.embed_tokens(ids)
        context = runner.context(hidden)
        out = runner.run(hidden, range(arch_model.config.num_hidden_layers), context)
        logits = arch_model.lm_head(arch_model.model.norm(out))
        expected = arch_model(ids).logits
    torch.testing.assert_close(logits, expected)


def test_drop_layers_equals_running_only_the_kept_layers(arch_model):
    ids = tokens()
    pruned = drop_layers(arch_model, [1, 2])
    assert pruned.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    if getattr(arch_model.config, "layer_types", None):
        assert pruned.config.layer_types == [arch_model.config.layer_types[i] for i in (0, 3)]
    runner = LayerRunner(arch_model)
    with torch.no_grad():
        hidden = arch_model.model.embed_tokens(ids)
        reference = arch_model.lm_head(
            arch_model.model.norm(runner.run(hidden, [0, 3], runner.context(hidden)))
        )
        torch.testing.assert_close(pruned(ids).logits, reference)
    # the source model is untouched
    assert arch_model.config.num_hidden_layers == 4 and len(arch_model.model.layers) == 4


def test_depth_pruned_model_reloads_with_the_implied_parameter_count_and_generates(
    arch_model, tmp_path
):
    from transformers import AutoModelForCausalLM

    from minispec.engines.torch.modeling import save_model

    pruned = drop_layers(arch_model, [0, 2])
    save_model(pruned, None, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.num_hidden_layers == 2
    assert unique_params(reloaded) == expected_params(reloaded.config) == unique_params(pruned)
    prompt = tokens(batch=1, length=6)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(prompt).logits, pruned(prompt).logits)
        cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached)  # KV-cache slots follow the renumbered layer_idx


def naive_block_loss(model, batch, start, length):
    kept = [i for i in range(model.config.num_hidden_layers) if not start <= i < start + length]
    runner = LayerRunner(model)
    inputs, labels = batch[:, :-1], batch[:, 1:]
    with torch.no_grad():
        hidden = model.model.embed_tokens(inputs)
        out = runner.run(hidden, kept, runner.context(hidden))
        return lm_loss_sum(model, model.model.norm(out), labels) / labels.numel()


def test_block_scores_equal_removing_each_block_and_measuring(tiny_llama):
    model = tiny_llama("llama", num_hidden_layers=5)
    batch = tokens(batch=4, length=17)
    scores = score_layers(model, [batch[:2], batch[2:]], block_length=2, block_losses=True)
    assert len(scores.block_loss) == 4
    for start in range(4):
        assert scores.block_loss[start] == pytest.approx(
            naive_block_loss(model, batch, start, 2), rel=1e-5
        )
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(
            model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten()
        )
    assert scores.full_loss == pytest.approx(full.item(), rel=1e-5)
    assert scores.tokens == 4 * 16


def test_block_influence_is_one_minus_cosine_of_layer_input_and_output(tiny_llama):
    model = tiny_llama("llama")
    batch = tokens(batch=2, length=9)
    seen = {}

    def hook(index):
        def record(_module, args, kwargs, output):
            x = (args[0] if args else kwargs["hidden_states"]).float()
            seen[index] = (
                (1 - torch.nn.functional.cosine_similarity(x, output.float(), dim=-1)).mean().item()
            )

        return record

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True)
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(batch[:, :-1])
    for handle in handles:
        handle.remove()
    scores = score_layers(model, [batch], block_length=1, block_losses=False)
    assert scores.block_loss is None
    assert scores.block_influence == pytest.approx([seen[i] for i in range(4)], rel=1e-5)


def test_choose_layers_picks_the_best_block_or_the_least_influential_layers():
    from minispec.engines.torch.depth import DepthScores

    scores = DepthScores(
        num_layers=6,
        block_length=2,
        block_influence=[0.5, 0.1, 0.9, 0.05, 0.3, 0.2],
        block_loss=[4.0, 3.0, 3.5, 2.5, 5.0],
    )
    assert choose_layers(scores, "lm_loss") == [3, 4]
    assert choose_layers(scores, "block_influence") == [1, 3]
    report = scores_report(scores, "lm_loss", [3, 4], calibration_samples=8)
    assert report["drop_layers"] == [4, 5]  # 1-indexed
    assert report["blocks"][3] == {"first_layer": 4, "last_layer": 5, "loss": 2.5}
    assert [entry["layer"] for entry in report["layers"]] == [1, 2, 3, 4, 5, 6]
    # the layout's format, which the report reads
    from minispec.report.collect import parse_depth_scores

    assert (report["metric"], report["num_layers"], report["dropped_layers"]) == (
        "lm_loss",
        6,
        [4, 5],
    )
    assert report["per_block"][3] == {"start": 4, "end": 5, "score": 2.5}
    assert "per_layer" not in report  # no single-layer losses when blocks are 2 layers long
    parsed = parse_depth_scores("d", report)
    assert parsed.per_block[3] == (4, 5, 2.5) and parsed.dropped_layers == [4, 5]
    shortgpt = parse_depth_scores("s", scores_report(scores, "block_influence", [1, 3], 8))
    assert shortgpt.metric == "block_influence" and shortgpt.dropped_layers == [2, 4]
    assert shortgpt.per_layer == [0.5, 0.1, 0.9, 0.05, 0.3, 0.2] and shortgpt.per_block == []
    single = DepthScores(num_layers=3, block_length=1, block_influence=[0.1, 0.2, 0.3])
    single.block_loss = [3.0, 2.0, 4.0]
    assert scores_report(single, "lm_loss", [1], 8)["per_layer"] == [3.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([0, 2], "out of range"),
        ([5], "out of range"),
        ([2, 2], "listed twice"),
        ([1, 2, 3, 4], "leaves none"),
    ],
)
def test_bad_drop_layers_are_refused(layers, message):
    with pytest.raises(StageError, match=message):
        check_drop_layers(layers, 4, "prune.depth.drop_layers")


def test_drop_layers_are_one_indexed():
    assert check_drop_layers([4, 1], 4, "x") == [0, 3]
