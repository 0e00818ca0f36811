"""Distillation from a sparse teacher: its top-k log-probabilities plus one tail bucket per token.

The cached teacher (:mod:`teacher_logits`) keeps, for each token, the ``K`` most likely token
ids ``idx`` ``[N, K]``, their log-probabilities ``log q_i`` ``[N, K]`` (at T = 1) and the log of
the remaining mass ``log q_tail = log(1 − Σ_i q_i)`` ``[N]`` (−inf when K = vocabulary).

**The loss** is the divergence between two distributions over ``K + 1`` buckets — the K cached
tokens and "every other token":

- teacher: ``log_softmax([log q_1 … log q_K, log q_tail] / T)`` (renormalised, so bf16 rounding
  of the cached values cannot make the buckets sum to anything but 1);
- student: ``p = softmax(s / T)`` over the full vocabulary, then ``p_i`` at the K cached ids and
  ``p_tail = Σ_{v ∉ top-k} p_v`` (a logsumexp over the other ids, never ``1 − Σ``, which
  cancels catastrophically when the top-k hold nearly all the mass).

Scaled by T² like the dense loss (:mod:`losses`). With K = vocabulary the tail bucket is empty
and the loss *is* the dense divergence, at any T (tested). For K < vocabulary:

- T = 1 (the default) is exact bucket KL: the teacher's top-k and tail mass are what it said.
- T ≠ 1 tempers the tail as one bucket: its mass ``m`` becomes ``m^{1/T}`` before the buckets are
  renormalised, whereas tempering the full teacher would raise each tail token separately
  (``Σ q_v^{1/T}``, which the cache no longer knows). For T > 1 this gives the tail less weight
  than dense KD would; the top-k ratios are exact.

Forward KL gets a closed-form gradient (``T (p − q̃)`` with ``q̃_i = q_i`` on the top-k and
``q̃_v = q_tail · p_v / p_tail`` elsewhere: the tail's target mass spread like the student's);
reverse KL and JSD are differentiated by autograd per chunk. Cross-entropy on the labels mixes
in exactly as in :func:`losses.logits_objective`, and memory is bounded the same way (fp32
chunks of ``chunk_tokens`` tokens; the gradient stored in the logits' dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minispec.engines.torch.losses import (
    IGNORE_INDEX,
    ForwardKLLoss,
    LogitsDivergence,
    accumulate_chunks,
    default_chunk_tokens,
    finish_objective,
)

# A finite stand-in for log 0: an empty tail (K = vocabulary) or the masked top-k ids. exp()
# of it is exactly 0 in fp32, and unlike −inf it keeps logsumexp's gradient finite.
LOG_ZERO = -1.0e4


@dataclass
class SparseTeacher:
    """A batch of cached teacher outputs: ``indices`` ``[B, S, K]`` (int64), ``logprobs``
    ``[B, S, K]`` (fp32, at T = 1) and ``tail`` ``[B, S]`` (fp32 log of the mass outside the
    top-k; −inf when empty)."""

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor

    def split(self, size: int) -> list[SparseTeacher]:
        return [
            SparseTeacher(i, v, t)
            for i, v, t in zip(
                self.indices.split(size),
                self.logprobs.split(size),
                self.tail.split(size),
                strict=True,
            )
        ]

    def to(self, device: torch.device) -> SparseTeacher:
        non_blocking = device.type == "cuda"

        def move(tensor):
            if non_blocking:
                tensor = tensor.pin_memory()
            return tensor.to(device, non_blocking=non_blocking)

        return SparseTeacher(move(self.indices), move(self.logprobs), move(self.tail))


def from_dense(teacher_logits: torch.Tensor, top_k: int, vocab_size: int | None = None):
    """The sparse teacher of dense logits ``[..., V]`` (what the cache stores, before rounding)."""
    vocab = vocab_size or teacher_logits.shape[-1]
    logprobs = F.log_softmax(teacher_logits[..., :vocab].float(), dim=-1)
    values, indices = logprobs.topk(top_k, dim=-1)
    return SparseTeacher(indices, values, tail_logmass(logprobs, indices))


def tail_logmass(logprobs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``log Σ_{v ∉ indices} exp(logprobs_v)`` ``[...]``; −inf when ``indices`` cover every id."""
    if indices.shape[-1] >= logprobs.shape[-1]:
        return torch.full(logprobs.shape[:-1], float("-inf"), device=logprobs.device)
    return logprobs.scatter(-1, indices, float("-inf")).logsumexp(-1)


def bucket_logprobs(
    student_logits: torch.Tensor, indices: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student log-probabilities at T over the full vocabulary ``[n, V]`` and over the K + 1
    buckets ``[n, K + 1]`` (the cached ids, then the tail)."""
    t = temperature
    logprobs = F.log_softmax(student_logits / t if t != 1 else student_logits, dim=-1)
    top = logprobs.gather(1, indices)  # [n, K]
    tail = logprobs.scatter(1, indices, LOG_ZERO).logsumexp(-1, keepdim=True)  # [n, 1]
    if indices.shape[1] >= logprobs.shape[1]:
        tail = torch.full_like(tail, LOG_ZERO)  # an empty tail: a bucket of mass 0
    return logprobs, torch.cat([top, tail], dim=1)


def teacher_buckets(logprobs: torch.Tensor, tail: torch.Tensor, temperature: float):
    """The teacher's K + 1 bucket log-probabilities at T ``[n, K + 1]``, renormalised."""
    buckets = torch.cat([logprobs, tail.unsqueeze(1)], dim=1).clamp(min=LOG_ZERO)
    t = temperature
    return F.log_softmax(buckets / t if t != 1 else buckets, dim=-1)


# --------------------------------------------------------------------------------------------
# the chunked objective


class _SparseObjective(torch.autograd.Function):
    """``scale · (kd_weight · Σ KD + ce_weight · Σ CE)`` over unmasked tokens, chunked; the
    sparse twin of :class:`losses._ChunkedLogitsObjective` (same returns)."""

    @staticmethod
    def forward(
        ctx,
        student,  # [N, V_s]
        indices,  # [N, K] int64
        logprobs,  # [N, K] fp32
        tail,  # [N] fp32
        labels,  # [N]
        divergence,
        kd_weight,
        ce_weight,
        scale,
        vocab_size,
        chunk_tokens,
    ):
        need_grad = ctx.needs_input_grad[0] and bool(kd_weight or ce_weight)
        grad = torch.zeros_like(student) if ctx.needs_input_grad[0] else None
        analytic = type(divergence) is ForwardKLLoss
        chunk_objective = _analytic_chunk if analytic else _autograd_chunk

        def chunk(start, end, logits, chunk_labels, mask):
            teacher = teacher_buckets(
                logprobs[start:end].float(), tail[start:end].float(), divergence.temperature
            )
            return chunk_objective(
                logits,
                indices[start:end],
                teacher,
                chunk_labels,
                mask,
                divergence,
                kd_weight,
                ce_weight,
                scale,
                need_grad,
            )

        kd_sum, ce_sum = accumulate_chunks(
            student,
            labels,
            IGNORE_INDEX,
            vocab_size,
            chunk_tokens,
            grad if need_grad else None,
            chunk,
        )
        return finish_objective(ctx, grad, kd_sum, ce_sum, kd_weight, ce_weight, scale)

    @staticmethod
    def backward(ctx, grad_total, _grad_kd, _grad_ce):
        (grad,) = ctx.saved_tensors
        return (grad.mul_(grad_total.to(grad.dtype)),) + (None,) * 10


def _analytic_chunk(
    logits, indices, teacher, labels, mask, divergence, kd_weight, ce_weight, scale, need_grad
):
    """Bucket forward KL and CE of one chunk with their closed-form gradient.

    ``logits`` ``[n, V]`` (computed on in fp32); ``indices`` ``[n, K]``; ``teacher`` bucket log-probs at T
    ``[n, K + 1]``; ``labels``, ``mask`` ``[n]``. ``d(T² KL)/ds = T (p − q̃)`` (module docstring).
    """
    t = divergence.temperature
    logits = logits.float()
    student_logprobs, student_buckets = bucket_logprobs(logits, indices, t)
    teacher_probs = teacher.exp()  # [n, K + 1]
    # 0 · log 0 terms: teacher_probs is exactly 0 there and both bucket log-probs are finite
    kd_tokens = (teacher_probs * (teacher - student_buckets)).sum(-1) * (t * t)
    kd_sum = (kd_tokens * mask).sum()
    ce_logprobs = student_logprobs if t == 1 else F.log_softmax(logits, dim=-1)
    ce_tokens = -ce_logprobs.gather(1, labels.unsqueeze(1)).squeeze(1)
    ce_sum = (ce_tokens * mask).sum()
    grad = None
    if need_grad:
        probs = student_logprobs.exp()  # p at T, [n, V]
        # the tail's target mass spread like the student's own tail: q_tail / p_tail · p_v
        tail_ratio = torch.where(
            teacher_probs[:, -1] > 0,
            teacher_probs[:, -1] / student_buckets[:, -1].exp().clamp(min=1e-30),
            torch.zeros_like(teacher_probs[:, -1]),
        )
        target = probs * tail_ratio.unsqueeze(1)
        target.scatter_(1, indices, teacher_probs[:, :-1])
        grad = probs.sub_(target).mul_(t * kd_weight)  # T·(p − q̃)·w
        del target
        if ce_weight:
            grad.add_(ce_logprobs.exp(), alpha=ce_weight)
            grad.scatter_add_(
                1, labels.unsqueeze(1), torch.full_like(ce_tokens, -ce_weight).unsqueeze(1)
            )
        grad.mul_((mask * scale).unsqueeze(1))
    return kd_sum, ce_sum, grad


def _autograd_chunk(
    logits, indices, teacher, labels, mask, divergence, kd_weight, ce_weight, scale, need_grad
):
    """Any divergence on the K + 1 buckets, differentiated by autograd (same returns)."""
    t = divergence.temperature
    with torch.enable_grad():
        logits = logits.detach().float().requires_grad_(need_grad)
        student_logprobs, student_buckets = bucket_logprobs(logits, indices, t)
        kd_tokens = divergence.divergence(student_buckets, teacher) * (t * t)
        kd_chunk = (kd_tokens * mask).sum()
        ce_logprobs = student_logprobs if t == 1 else F.log_softmax(logits, dim=-1)
        ce_chunk = (-ce_logprobs.gather(1, labels.unsqueeze(1)).squeeze(1) * mask).sum()
        grad = None
        if need_grad:
            (grad,) = torch.autograd.grad(
                (kd_weight * kd_chunk + ce_weight * ce_chunk) * scale, logits
            )
    return kd_chunk.detach(), ce_chunk.detach(), grad


def sparse_logits_objective(
    student_logits: torch.Tensor,
    teacher: SparseTeacher,
    labels: torch.Tensor,
    divergence: LogitsDivergence,
    *,
    kd_weight: float,
    ce_weight: float,
    normalizer: float | torch.Tensor,
    vocab_size: int | None = None,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`losses.logits_objective` with a sparse teacher: ``(kd_weight · Σ KD + ce_weight · Σ
    CE) / normalizer`` and the token sums of KD and CE. ``student_logits`` ``[B, S, V_s]``,
    ``teacher`` fields ``[B, S, K]`` / ``[B, S]``, ``labels`` ``[B, S]``."""
    vocab = vocab_size or student_logits.shape[-1]
    if vocab > student_logits.shape[-1]:
        raise ValueError(f"vocab_size {vocab} exceeds the logits' last dimension")
    if teacher.indices.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"cached teacher {tuple(teacher.indices.shape)} and student logits {tuple(student_logits.shape)} differ in batch/sequence"
        )
    top_k = teacher.indices.shape[-1]
    if top_k > vocab:
        raise ValueError(f"top_k {top_k} exceeds the vocabulary ({vocab})")
    chunk = (
        chunk_tokens
        or divergence.chunk_tokens
        or default_chunk_tokens(vocab, student_logits.device.type)
    )
    return _SparseObjective.apply(
        student_logits.reshape(-1, student_logits.shape[-1]),
        teacher.indices.reshape(-1, top_k).long(),
        teacher.logprobs.reshape(-1, top_k),
        teacher.tail.reshape(-1),
        labels.reshape(-1),
        divergence,
        float(kd_weight),
        float(ce_weight),
        1.0 / normalizer,
        vocab,
        chunk,
    )
