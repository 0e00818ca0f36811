"""The candidate enumeration of search variants: valid shapes, exact parameter counts."""

from __future__ import annotations

import pytest

from minispec.search.space import (
    Arch,
    count_params,
    enumerate_candidates,
    teacher_arch,
)
from minispec.shapes import ModelShapes
from minispec.spec.model import SearchPrune

SMOLLM2 = ModelShapes(
    origin="SmolLM2-135M's config.json",
    model_type="llama",
    num_hidden_layers=30,
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    tie_word_embeddings=True,
)


def settings(**fields) -> SearchPrune:
    return SearchPrune(kind="search", short_distill={"tokens": 1000}, **fields)


def test_smollm2_parameter_count_is_the_measured_one():
    # 134.5M total, 106.2M without embeddings (README's evaluation table, counted on the model)
    assert count_params(teacher_arch(SMOLLM2), SMOLLM2) == (134_515_008, 106_203_456)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False])
def test_count_matches_real_models_of_every_candidate_shape(tiny_llama, model_type, tied):
    from minispec.engines.torch.modeling import count_parameters

    teacher = tiny_llama(model_type, tie_word_embeddings=tied)
    dims = ModelShapes.from_hf_object(teacher.config)
    candidates = enumerate_candidates(dims, settings(target_params=120_000, budget_tolerance=0.5))
    assert candidates
    for candidate in candidates[:4]:
        arch = candidate.arch
        model = tiny_llama(
            model_type,
            tie_word_embeddings=tied,
            num_hidden_layers=arch.num_layers,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.ffn_hidden_size,
            num_attention_heads=arch.num_attention_heads,
            num_key_value_heads=arch.num_query_groups,
        )
        counted = count_parameters(model)
        assert (candidate.params_total, candidate.params_non_embedding) == (
            counted["total"],
            counted["non_embedding"],
        )


def test_candidates_are_gqa_consistent_within_budget_and_largest_first():
    chosen = settings(target_params=90_000_000, budget_tolerance=0.1, max_candidates=64)
    candidates = enumerate_candidates(SMOLLM2, chosen)
    assert len(candidates) == 40  # every fitting architecture (fewer than max_candidates)
    values = [c.params_total for c in candidates]
    assert values == sorted(values, reverse=True)
    for c in candidates:
        a = c.arch
        assert 81_000_000 <= c.params_total <= 90_000_000
        assert a.num_query_groups == 3 and a.num_attention_heads % 3 == 0
        assert a.num_attention_heads // 3 <= 3  # no more heads per group than the teacher's
        assert a.hidden_size % a.num_attention_heads == 0  # LlamaConfig's rule
        assert a.num_layers >= 15 and a.hidden_size >= 288 and a.ffn_hidden_size >= 768
        assert a != teacher_arch(SMOLLM2)
    assert [c.id for c in candidates[:3]] == ["c01", "c02", "c03"]
    assert enumerate_candidates(SMOLLM2, chosen) == candidates  # a pure function


def test_axes_to_skip_stay_at_the_teacher_size():
    chosen = settings(
        target_non_embedding_params=80_000_000,
        hparams_to_skip=["num_layers", "num_attention_heads"],
        max_candidates=256,
    )
    candidates = enumerate_candidates(SMOLLM2, chosen)
    assert candidates
    assert {c.arch.num_layers for c in candidates} == {30}
    assert {c.arch.num_attention_heads for c in candidates} == {9}
    assert all(c.params_non_embedding <= 80_000_000 for c in candidates)


def test_depth_only_search_removes_layers_only():
    chosen = settings(
        target_params=110_000_000,
        budget_tolerance=0.2,
        hparams_to_skip=["hidden_size", "ffn_hidden_size", "num_attention_heads"],
    )
    archs = [c.arch for c in enumerate_candidates(SMOLLM2, chosen)]
    assert archs and all(a == Arch(a.num_layers, 576, 1536, 9, 3) for a in archs)
    assert [a.num_layers for a in archs] == sorted((a.num_layers for a in archs), reverse=True)


def test_lint_checks_a_search_against_the_gguf_teacher(smollm2_gguf):
    from pathlib import Path

    from minispec.spec.lint import lint_file
    from minispec.spec.teacher_info import gguf_shapes

    assert gguf_shapes(smollm2_gguf).tie_word_embeddings is True  # no output.weight tensor
    spec = Path(__file__).resolve().parents[2] / "specs" / "smollm2-search.yaml"
    assert lint_file(spec).ok
    result = lint_file(spec, ["prune.best.budget_tolerance=0.001"])
    messages = [p.message for p in result.errors]
    assert any("0 architectures fit target_params 100,000,000" in m for m in messages), messages
