"""Distillation losses against direct reference formulas (masking, temperature, chunking, grads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minispec.engines.torch.losses import (
    IGNORE_INDEX,
    ForwardKLLoss,
    HiddenStateCosineLoss,
    JSDLoss,
    ReverseKLLoss,
    logits_objective,
    make_divergence,
    resolve_vocab_size,
)
from minispec.errors import StageError

B, S, V = 3, 7, 50


def reference(
    kind: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-token loss ``[B, S]`` written out in full, in float64, without chunking."""
    p_log = F.log_softmax(student.double() / temperature, -1)
    q_log = F.log_softmax(teacher.double() / temperature, -1)
    p, q = p_log.exp(), q_log.exp()
    if kind == "logits_kl":
        per_token = (q * (q.log() - p.log())).sum(-1)
    elif kind == "reverse_kl":
        per_token = (p * (p.log() - q.log())).sum(-1)
    else:
        m = 0.5 * (p + q)
        per_token = 0.5 * (p * (p.log() - m.log())).sum(-1) + 0.5 * (q * (q.log() - m.log())).sum(
            -1
        )
    return per_token * temperature**2


def masked_mean(per_token: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = labels != IGNORE_INDEX
    return (per_token * mask).sum() / mask.sum()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(B, S, V, generator=generator) * 3
    teacher = torch.randn(B, S, V, generator=generator) * 3
    labels = torch.randint(0, V, (B, S), generator=generator)
    labels[0, :3] = IGNORE_INDEX
    labels[2, -1] = IGNORE_INDEX
    return student, teacher, labels


@pytest.mark.parametrize("kind", ["logits_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergence_matches_reference_with_masking_and_temperature(batch, kind, temperature):
    student, teacher, labels = batch
    loss = make_divergence(kind, temperature=temperature, chunk_tokens=4)  # several chunks
    student = student.clone().requires_grad_()
    got = loss(student, teacher, labels)

    student_ref = student.detach().double().requires_grad_()
    expected = masked_mean(reference(kind, student_ref, teacher, labels, temperature), labels)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)

    got.backward()
    expected.backward()
    torch.testing.assert_close(student.grad.double(), student_ref.grad, rtol=1e-4, atol=1e-7)
    # masked tokens get no gradient at all
    assert student.grad[0, :3].abs().max() == 0


def test_divergences_are_zero_for_identical_distributions(batch):
    student, _, labels = batch
    for cls in (ForwardKLLoss, ReverseKLLoss, JSDLoss):
        assert cls(temperature=2.0)(student, student.clone(), labels).abs() < 1e-6


def test_forward_kl_equals_torch_kl_div(batch):
    student, teacher, labels = batch
    labels = torch.zeros_like(labels)  # nothing masked
    expected = F.kl_div(
        F.log_softmax(student, -1).view(-1, V),
        F.log_softmax(teacher, -1).view(-1, V),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(
        ForwardKLLoss()(student, teacher, labels), expected, rtol=1e-5, atol=1e-6
    )


def test_objective_mixes_kd_and_ce_with_alpha(batch):
    student, teacher, labels = batch
    alpha, temperature = 0.3, 2.0
    divergence = ForwardKLLoss(temperature=temperature, chunk_tokens=5)
    count = (labels != IGNORE_INDEX).sum()
    s = student.clone().requires_grad_()
    total, kd_sum, ce_sum = logits_objective(
        s, teacher, labels, divergence, kd_weight=alpha, ce_weight=1 - alpha, normalizer=count
    )

    s_ref = student.detach().clone().requires_grad_()
    kd_ref = masked_mean(
        reference("logits_kl", s_ref, teacher, labels, temperature).float(), labels
    )
    ce_ref = F.cross_entropy(s_ref.view(-1, V), labels.view(-1), ignore_index=IGNORE_INDEX)
    expected = alpha * kd_ref + (1 - alpha) * ce_ref
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd_sum / count, kd_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce_sum / count, ce_ref, rtol=1e-5, atol=1e-6)
    total.backward()
    expected.backward()
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-4, atol=1e-7)


def test_objective_without_teacher_is_cross_entropy(batch):
    student, _, labels = batch
    count = (labels != IGNORE_INDEX).sum()
    s = student.clone().requires_grad_()
    total, kd_sum, ce_sum = logits_objective(
        s, None, labels, None, kd_weight=1.0, ce_weight=1.0, normalizer=count
    )
    s_ref = student.clone().requires_grad_()
    expected = F.cross_entropy(s_ref.view(-1, V), labels.view(-1))
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    assert kd_sum == 0
    total.backward()
    expected.backward()
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-4, atol=1e-7)


def test_padded_vocabulary_is_sliced(batch):
    """Extra (padding) columns of either model do not change the loss and get zero gradient."""
    student, teacher, labels = batch
    padded_student = torch.cat([student, torch.full((B, S, 14), 5.0)], -1).requires_grad_()
    padded_teacher = torch.cat([teacher, torch.full((B, S, 78), -3.0)], -1)
    loss = ForwardKLLoss(vocab_size=V)
    got = loss(padded_student, padded_teacher, labels)
    torch.testing.assert_close(got, ForwardKLLoss()(student, teacher, labels))
    got.backward()
    assert padded_student.grad[..., V:].abs().max() == 0


def test_bf16_logits_give_bf16_gradient_without_fp32_copy(batch):
    student, teacher, labels = batch
    s = student.bfloat16().requires_grad_()
    loss = ForwardKLLoss(chunk_tokens=4)(s, teacher.bfloat16(), labels)
    assert loss.dtype == torch.float32  # softmax in fp32
    loss.backward()
    assert s.grad.dtype == torch.bfloat16
    expected = masked_mean(
        reference("logits_kl", s.detach().float(), teacher.bfloat16().float(), labels, 1.0), labels
    )
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-5)


def test_hidden_state_cosine_loss_with_projection():
    torch.manual_seed(0)
    student_hidden = torch.randn(2, 5, 8)
    teacher_hidden = torch.randn(2, 5, 12)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    loss = HiddenStateCosineLoss(8, 12)
    assert isinstance(loss.projection, torch.nn.Linear)
    got = loss(student_hidden, teacher_hidden, mask)
    projected = student_hidden @ loss.projection.weight.T
    cos = (projected * teacher_hidden).sum(-1) / (
        projected.norm(dim=-1) * teacher_hidden.norm(dim=-1)
    )
    expected = ((1 - cos) * mask).sum() / mask.sum()
    torch.testing.assert_close(got, expected)
    got.backward()
    assert loss.projection.weight.grad is not None

    same = HiddenStateCosineLoss(12, 12)
    assert isinstance(same.projection, torch.nn.Identity)
    assert same(teacher_hidden, teacher_hidden).abs() < 1e-6


def word_tokenizer(vocab: dict[str, int]):
    """A real fast tokenizer over a fixed word vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0")


def test_vocab_padding_is_accepted_and_mismatch_refused():
    from transformers import LlamaConfig

    words = {f"t{i}": i for i in range(100)}
    tokenizer = word_tokenizer(words)
    # same tokenizer, embedding rows padded to a multiple of 64 on one side
    assert (
        resolve_vocab_size(
            LlamaConfig(vocab_size=128),
            LlamaConfig(vocab_size=100),
            tokenizer,
            word_tokenizer(words),
        )
        == 100
    )
    swapped = dict(words)
    swapped["t5"], swapped["t6"] = 6, 5
    with pytest.raises(StageError, match="different tokenizers.*2 with different ids"):
        resolve_vocab_size(
            LlamaConfig(vocab_size=100),
            LlamaConfig(vocab_size=100),
            tokenizer,
            word_tokenizer(swapped),
        )
    # without tokenizers a size difference cannot be told from padding
    with pytest.raises(StageError, match="vocab_size 128 but student has 100"):
        resolve_vocab_size(LlamaConfig(vocab_size=128), LlamaConfig(vocab_size=100))
    assert resolve_vocab_size(LlamaConfig(vocab_size=100), LlamaConfig(vocab_size=100)) == 100
    with pytest.raises(StageError, match="embedding rows"):
        resolve_vocab_size(
            LlamaConfig(vocab_size=90),
            LlamaConfig(vocab_size=100),
            tokenizer,
            word_tokenizer(words),
        )


def test_zero_weights_give_zero_gradient(batch):
    student, teacher, labels = batch
    s = student.clone().requires_grad_()
    total, _, ce_sum = logits_objective(
        s, teacher, labels, ForwardKLLoss(), kd_weight=0.0, ce_weight=0.0, normalizer=1.0
    )
    total.backward()
    assert total == 0 and ce_sum > 0 and s.grad.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_chunks_match_the_eager_objective(batch, dtype):
    """`resources.compile: on` runs the forward-KL/CE chunks through torch.compile, with the
    fp32 casts inside: same objective, same gradient (in the logits' dtype) as eager."""
    student, teacher, labels = batch
    results = []
    for compiled in (False, True):
        s = student.to(dtype).requires_grad_()
        total, kd_sum, ce_sum = logits_objective(
            s,
            teacher.to(dtype),
            labels,
            ForwardKLLoss(temperature=2.0),
            kd_weight=0.7,
            ce_weight=0.3,
            normalizer=float((labels != IGNORE_INDEX).sum()),
            chunk_tokens=8,  # 21 tokens: two full chunks and a shorter last one
            compiled=compiled,
        )
        total.backward()
        results.append((total.detach(), kd_sum, ce_sum, s.grad))
    (eager_total, eager_kd, eager_ce, eager_grad), (total, kd_sum, ce_sum, grad) = results
    assert grad.dtype == dtype
    torch.testing.assert_close(total, eager_total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd_sum, eager_kd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce_sum, eager_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        grad, eager_grad, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6
    )
