"""Distillation losses: logit divergences, cross-entropy mixing, hidden-state cosine losses.

Small modules in the style of torchtune's ``kd_losses``. Conventions shared by all of them:

- ``student_logits``: ``[B, S, V_s]``, ``teacher_logits``: ``[B, S, V_t]``, ``labels``: ``[B, S]``
  (already shifted: position ``s`` predicts ``labels[:, s]``). Positions whose label equals
  ``ignore_index`` are masked out of every loss (KD included).
- ``V_s`` and ``V_t`` may exceed the real vocabulary (embedding rows padded to a multiple of 64):
  the logits are sliced to ``vocab_size`` (the tokenizer's size, see :func:`resolve_vocab_size`).
- Softmaxes run in fp32 on chunks of ``chunk_tokens`` tokens: logits stay in their compute dtype
  (bf16 on GPU) and at most one chunk of fp32 temporaries exists at a time, so memory is bounded
  for a 128k vocabulary. The gradient with respect to the student logits is computed chunk by
  chunk during the forward pass and stored in the logits' dtype (what autocast would produce),
  so autograd never keeps fp32 ``[tokens, vocab]`` tensors alive.
- The divergence at temperature ``T`` is multiplied by ``T²`` (Hinton et al.), so gradient
  magnitudes do not depend on ``T``.

:func:`logits_objective` is what the trainer calls: ``kd_weight · KD + ce_weight · CE`` in one
chunked pass, returning the token sums of both parts for logging.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from minispec.errors import StageError

if TYPE_CHECKING:
    from collections.abc import Sequence

IGNORE_INDEX = -100
# Elements of one fp32 ``[tokens, vocab]`` temporary per chunk (a chunk makes about four).
# GPU: 2^27 floats = 512 MiB, i.e. ~1k tokens of a 128k vocabulary, ~2.7k of a 49k one — big
# enough to keep the GPU busy. CPU: 2^24 floats = 64 MiB, because host memory is the limit there
# (the CPU quickstart stays under 4 GB) and chunk overhead is nothing next to CPU compute.
CHUNK_ELEMENTS = {"cuda": 1 << 27, "cpu": 1 << 24}


def default_chunk_tokens(vocab_size: int, device_type: str = "cuda") -> int:
    budget = CHUNK_ELEMENTS.get(device_type, CHUNK_ELEMENTS["cuda"])
    return max(64, min(4096, budget // max(1, vocab_size)))


# --------------------------------------------------------------------------------------------
# divergences on log-probabilities (fp32, temperature already applied)


class LogitsDivergence(nn.Module):
    """Base of the logit KD losses: a per-token divergence between two distributions.

    Subclasses implement :meth:`divergence` on log-probabilities ``[N, V]`` (fp32) and return a
    per-token loss ``[N]``. ``forward`` is the standalone loss: the mean over unmasked tokens of
    ``T² · divergence(log_softmax(student / T), log_softmax(teacher / T))``.
    """

    kind = ""

    def __init__(
        self,
        temperature: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        vocab_size: int | None = None,
        chunk_tokens: int | None = None,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.ignore_index = ignore_index
        self.vocab_size = vocab_size
        self.chunk_tokens = chunk_tokens

    def divergence(
        self, student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def token_loss(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``T² · divergence`` per token ``[N]`` and the student's log-probabilities at ``T``.

        Inputs are fp32 ``[N, V]`` chunks; the log-probabilities are returned so that the
        cross-entropy can reuse them when ``T == 1``.
        """
        t = self.temperature
        student_logprobs = F.log_softmax(student_logits / t if t != 1 else student_logits, dim=-1)
        teacher_logprobs = F.log_softmax(teacher_logits / t if t != 1 else teacher_logits, dim=-1)
        return self.divergence(student_logprobs, teacher_logprobs) * (t * t), student_logprobs

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over unmasked tokens (a scalar); shapes as in the module docstring."""
        mask = labels.reshape(-1) != self.ignore_index
        count = mask.sum().clamp(min=1)
        total, _, _ = logits_objective(
            student_logits,
            teacher_logits,
            labels,
            self,
            kd_weight=1.0,
            ce_weight=0.0,
            normalizer=count,
            vocab_size=self.vocab_size,
            chunk_tokens=self.chunk_tokens,
        )
        return total


class ForwardKLLoss(LogitsDivergence):
    """KL(teacher ‖ student) = Σ_v q_v (log q_v − log p_v): the tutorial's (and Minitron's) loss."""

    kind = "logits_kl"

    def divergence(self, student_logprobs, teacher_logprobs):
        teacher_probs = teacher_logprobs.exp()
        # 0 · log 0 terms: teacher_probs is exactly 0 there, and both log-probs are finite.
        return (teacher_probs * (teacher_logprobs - student_logprobs)).sum(-1)


class ReverseKLLoss(LogitsDivergence):
    """KL(student ‖ teacher) = Σ_v p_v (log p_v − log q_v): mode-seeking."""

    kind = "reverse_kl"

    def divergence(self, student_logprobs, teacher_logprobs):
        student_probs = student_logprobs.exp()
        return (student_probs * (student_logprobs - teacher_logprobs)).sum(-1)


class JSDLoss(LogitsDivergence):
    """Jensen–Shannon divergence ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = ½ (p + q)."""

    kind = "jsd"

    def divergence(self, student_logprobs, teacher_logprobs):
        log_half = math.log(0.5)
        mixture_logprobs = torch.logsumexp(
            torch.stack([student_logprobs, teacher_logprobs]) + log_half, dim=0
        )
        student_part = (student_logprobs.exp() * (student_logprobs - mixture_logprobs)).sum(-1)
        teacher_part = (teacher_logprobs.exp() * (teacher_logprobs - mixture_logprobs)).sum(-1)
        return 0.5 * (student_part + teacher_part)


LOSSES: dict[str, type[LogitsDivergence]] = {
    cls.kind: cls for cls in (ForwardKLLoss, ReverseKLLoss, JSDLoss)
}


def make_divergence(kind: str, temperature: float = 1.0, **kwargs) -> LogitsDivergence:
    if kind not in LOSSES:
        raise StageError(
            f"unknown distillation loss '{kind}'",
            hint=f"distill.loss.kind is one of {', '.join(LOSSES)}",
        )
    return LOSSES[kind](temperature=temperature, **kwargs)


# --------------------------------------------------------------------------------------------
# the chunked objective


class _ChunkedLogitsObjective(torch.autograd.Function):
    """``scale · (kd_weight · Σ KD + ce_weight · Σ CE)`` over unmasked tokens, chunked.

    ``student`` ``[N, V_s]`` and ``teacher`` ``[N, V_t]`` (or None) are flat token views,
    ``labels`` ``[N]``. Returns the objective (differentiable in ``student``) and the detached
    token sums of KD and CE (unscaled, for logging).
    """

    @staticmethod
    def forward(
        ctx,
        student,
        teacher,
        labels,
        divergence,
        kd_weight,
        ce_weight,
        scale,
        vocab_size,
        chunk_tokens,
        compiled,
    ):
        need_grad = ctx.needs_input_grad[0] and bool(kd_weight or ce_weight)
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        if grad is not None and (vocab_size < student.shape[1] or not need_grad):
            grad[:, vocab_size:] = 0  # padded vocabulary columns get no gradient
            if not need_grad:
                grad.zero_()
        ignore_index = divergence.ignore_index if divergence is not None else IGNORE_INDEX
        analytic = teacher is None or type(divergence) is ForwardKLLoss
        chunk_objective = _analytic_chunk if analytic else _autograd_chunk
        if compiled and analytic:
            # the gradient comes back in the logits' dtype: its cast fuses into the kernels too
            chunk_objective = functools.partial(
                _compiled_analytic_chunk(), grad_dtype=student.dtype
            )

        def chunk(start, end, logits, chunk_labels, mask):
            return chunk_objective(
                logits,
                teacher[start:end, :vocab_size] if teacher is not None else None,
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
            ignore_index,
            vocab_size,
            chunk_tokens,
            grad if need_grad else None,
            chunk,
        )
        return finish_objective(ctx, grad, kd_sum, ce_sum, kd_weight, ce_weight, scale)

    @staticmethod
    def backward(ctx, grad_total, _grad_kd, _grad_ce):
        (grad,) = ctx.saved_tensors
        # in place: the stored gradient is used once (no retain_graph in training)
        return grad.mul_(grad_total.to(grad.dtype)), *([None] * 9)


def accumulate_chunks(student, labels, ignore_index, vocab_size, chunk_tokens, grad, chunk):
    """The chunk loop shared by the dense and the sparse objective.

    ``student`` ``[N, V_s]``, ``labels`` ``[N]``. ``chunk(start, end, logits, labels, mask)``
    gets the chunk's logits ``[n, V]`` in their own dtype (each chunk function computes in
    fp32: the cast is then one of its own passes, fused when it is compiled), its labels
    (masked ones replaced by 0) and mask ``[n]`` and returns (KD token sum, CE token sum,
    gradient ``[n, V]`` or None); gradients are written into ``grad`` (cast to the logits'
    dtype) when it is given. Returns the two sums.
    """
    kd_sum = torch.zeros((), dtype=torch.float32, device=student.device)
    ce_sum = torch.zeros((), dtype=torch.float32, device=student.device)
    with torch.autocast(student.device.type, enabled=False):
        for start in range(0, student.shape[0], chunk_tokens):
            end = min(start + chunk_tokens, student.shape[0])
            chunk_labels = labels[start:end]
            kd_chunk, ce_chunk, chunk_grad = chunk(
                start,
                end,
                student[start:end, :vocab_size],  # [n, V]
                chunk_labels.masked_fill(chunk_labels == ignore_index, 0),
                (chunk_labels != ignore_index).to(torch.float32),  # [n]
            )
            kd_sum += kd_chunk
            ce_sum += ce_chunk
            if grad is not None:
                grad[start:end, :vocab_size] = chunk_grad
    return kd_sum, ce_sum


def finish_objective(ctx, grad, kd_sum, ce_sum, kd_weight, ce_weight, scale):
    """Save the precomputed gradient for backward and return ``(total, kd_sum, ce_sum)``."""
    if grad is not None:
        ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(kd_sum, ce_sum)
    return (kd_weight * kd_sum + ce_weight * ce_sum) * scale, kd_sum, ce_sum


def _analytic_chunk(
    logits,
    teacher,
    labels,
    mask,
    divergence,
    kd_weight,
    ce_weight,
    scale,
    need_grad,
    grad_dtype=torch.float32,
):
    """Forward KL and/or CE of one chunk with their closed-form gradient (fewer passes over
    ``[n, V]`` than autograd): with ``p = softmax(s/T)``, ``q = softmax(t/T)``,
    ``d(T² KL(q‖p))/ds = T (p − q)`` and ``d CE/ds = softmax(s) − onehot(label)``.

    ``logits``/``teacher``: ``[n, V]``, computed on in fp32; ``labels`` ``[n]`` (masked ones
    replaced by 0); ``mask`` ``[n]`` (1 = counts). Returns (KD token sum, CE token sum,
    gradient in ``grad_dtype`` or None).
    """
    logits = logits.float()  # no-ops on fp32 input
    teacher = teacher.float() if teacher is not None else None
    kd_sum = logits.new_zeros(())
    grad = None
    if teacher is not None:
        t = divergence.temperature
        student_logprobs = F.log_softmax(logits / t if t != 1 else logits, dim=-1)
        teacher_logprobs = F.log_softmax(teacher / t if t != 1 else teacher, dim=-1)
        teacher_probs = teacher_logprobs.exp()
        kd_tokens = torch.linalg.vecdot(teacher_probs, teacher_logprobs.sub_(student_logprobs)) * (
            t * t
        )
        kd_sum = (kd_tokens * mask).sum()
        ce_logprobs = student_logprobs if t == 1 else F.log_softmax(logits, dim=-1)
        if need_grad:
            grad = student_logprobs.exp().sub_(teacher_probs).mul_(t * kd_weight)  # T·(p − q)·w
            del teacher_probs, teacher_logprobs
            if ce_weight:
                grad.add_(ce_logprobs.exp(), alpha=ce_weight)
    else:
        ce_logprobs = F.log_softmax(logits, dim=-1)
        if need_grad:
            grad = ce_logprobs.exp().mul_(ce_weight)
    ce_tokens = -ce_logprobs.gather(1, labels.unsqueeze(1)).squeeze(1)  # [n]
    ce_sum = (ce_tokens * mask).sum()
    if grad is not None:
        if ce_weight:
            grad.scatter_add_(
                1, labels.unsqueeze(1), torch.full_like(ce_tokens, -ce_weight).unsqueeze(1)
            )
        grad = grad.mul_((mask * scale).unsqueeze(1)).to(grad_dtype)
    return kd_sum, ce_sum, grad


@functools.cache
def _compiled_analytic_chunk():
    """:func:`_analytic_chunk` through torch.compile (``resources.compile: on``).

    Eager, a chunk is ~12 separate passes over fp32 ``[n, V]`` temporaries (two log-softmaxes,
    exps, the difference, the dot product, the scaling, the cast); compiled, the elementwise work
    fuses into the reductions, which matters when the step is otherwise compute-bound (a 128k
    vocabulary at thousands of tokens per step). Shapes are static: every chunk but a shorter
    last one has the same size, so it compiles at most twice per run."""
    return torch.compile(_analytic_chunk, dynamic=False)


def _autograd_chunk(
    logits, teacher, labels, mask, divergence, kd_weight, ce_weight, scale, need_grad
):
    """Any divergence: the chunk's objective differentiated by autograd (same returns)."""
    with torch.enable_grad():
        logits = logits.detach().float().requires_grad_(need_grad)
        kd_tokens, student_logprobs = divergence.token_loss(logits, teacher.float())
        kd_chunk = (kd_tokens * mask).sum()
        ce_logprobs = (
            student_logprobs if divergence.temperature == 1.0 else F.log_softmax(logits, dim=-1)
        )
        ce_chunk = (-ce_logprobs.gather(1, labels.unsqueeze(1)).squeeze(1) * mask).sum()
        grad = None
        if need_grad:
            (grad,) = torch.autograd.grad(
                (kd_weight * kd_chunk + ce_weight * ce_chunk) * scale, logits
            )
    return kd_chunk.detach(), ce_chunk.detach(), grad


def logits_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    divergence: LogitsDivergence | None,
    *,
    kd_weight: float,
    ce_weight: float,
    normalizer: float | torch.Tensor,
    vocab_size: int | None = None,
    chunk_tokens: int | None = None,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kd_weight · Σ KD + ce_weight · Σ CE) / normalizer`` and the token sums of KD and CE.

    ``student_logits`` ``[B, S, V_s]``; ``teacher_logits`` ``[B, S, V_t]`` or None (no KD, e.g.
    teacher correction); ``labels`` ``[B, S]``. ``normalizer`` is the number of tokens the
    caller averages over (the whole global batch in training, so that gradient accumulation
    and data parallelism give the same gradient as one big batch). ``compiled``: run forward
    KL and CE chunks through torch.compile (the stage's ``resources.compile: on``).
    """
    vocab = vocab_size or student_logits.shape[-1]
    if vocab > student_logits.shape[-1] or (
        teacher_logits is not None and vocab > teacher_logits.shape[-1]
    ):
        raise ValueError(f"vocab_size {vocab} exceeds the logits' last dimension")
    if teacher_logits is not None and teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} differ in batch/sequence"
        )
    if teacher_logits is None:
        kd_weight = 0.0
    if teacher_logits is not None and divergence is None:
        raise ValueError("teacher logits given without a divergence")
    student = student_logits.reshape(-1, student_logits.shape[-1])
    teacher = (
        teacher_logits.reshape(-1, teacher_logits.shape[-1]) if teacher_logits is not None else None
    )
    chunk = (
        chunk_tokens
        or (divergence.chunk_tokens if divergence is not None else None)
        or default_chunk_tokens(vocab, student_logits.device.type)
    )
    scale = 1.0 / normalizer
    return _ChunkedLogitsObjective.apply(
        student,
        teacher,
        labels.reshape(-1),
        divergence,
        float(kd_weight),
        float(ce_weight),
        scale,
        vocab,
        chunk,
        compiled,
    )


# --------------------------------------------------------------------------------------------
# intermediate hidden states


class HiddenStateCosineLoss(nn.Module):
    """``1 − cos(proj(h_student), h_teacher)`` per token, over unmasked tokens.

    ``student_hidden`` ``[B, S, H_s]``, ``teacher_hidden`` ``[B, S, H_t]``, ``mask`` ``[B, S]``
    (True where the token counts). When ``H_s != H_t`` a learned linear projection
    ``H_s → H_t`` (no bias) maps the student's states, as ModelOpt and Minitron do; it trains
    with the student and is not part of the student checkpoint.
    """

    def __init__(self, student_hidden_size: int, teacher_hidden_size: int):
        super().__init__()
        if student_hidden_size == teacher_hidden_size:
            self.projection: nn.Module = nn.Identity()
        else:
            self.projection = nn.Linear(student_hidden_size, teacher_hidden_size, bias=False)

    def project(self, student_hidden: torch.Tensor) -> torch.Tensor:
        return self.projection(student_hidden)

    @staticmethod
    def token_sum(
        projected: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sum over tokens of ``1 − cos`` (fp32); ``projected`` is already in the teacher's width."""
        cosine = F.cosine_similarity(
            projected.float(), teacher_hidden.float(), dim=-1, eps=1e-8
        )  # [B, S]
        loss = 1.0 - cosine
        if mask is not None:
            loss = loss * mask.to(loss.dtype)
        return loss.sum()

    def forward(
        self,
        student_hidden: torch.Tensor,
        teacher_hidden: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over unmasked tokens."""
        count = (
            mask.sum().clamp(min=1)
            if mask is not None
            else student_hidden.shape[0] * student_hidden.shape[1]
        )
        return self.token_sum(self.project(student_hidden), teacher_hidden, mask) / count


# --------------------------------------------------------------------------------------------
# vocabulary compatibility


def resolve_vocab_size(
    teacher_config,
    student_config,
    teacher_tokenizer=None,
    student_tokenizer=None,
    *,
    teacher_name: str = "teacher",
    student_name: str = "student",
) -> int:
    """The real vocabulary size both models share; a clear error when they do not share one.

    With tokenizers, their token → id maps must be identical (same tokenizer), and the real
    vocabulary is the tokenizer's size; embedding rows beyond it (padding to a multiple of 64
    or 128) are ignored by slicing the logits. Without tokenizers the configs' ``vocab_size``
    must agree exactly.
    """
    teacher_rows = int(teacher_config.vocab_size)
    student_rows = int(student_config.vocab_size)
    if teacher_tokenizer is not None and student_tokenizer is not None:
        teacher_vocab = teacher_tokenizer.get_vocab()
        student_vocab = student_tokenizer.get_vocab()
        if teacher_vocab != student_vocab:
            only_teacher = len(teacher_vocab.keys() - student_vocab.keys())
            only_student = len(student_vocab.keys() - teacher_vocab.keys())
            moved = sum(
                1
                for token, i in teacher_vocab.items()
                if token in student_vocab and student_vocab[token] != i
            )
            raise StageError(
                f"{teacher_name} and {student_name} use different tokenizers ({len(teacher_vocab)} vs {len(student_vocab)} tokens; "
                f"{only_teacher} only in the teacher, {only_student} only in the student, {moved} with different ids)",
                hint="logit distillation needs the same vocabulary: prune the student from this teacher, or distill from a teacher with the student's tokenizer",
            )
        vocab = len(teacher_tokenizer)
    else:
        if teacher_rows != student_rows:
            raise StageError(
                f"{teacher_name} has vocab_size {teacher_rows} but {student_name} has {student_rows}, and no tokenizer files to tell padding from a different vocabulary",
                hint="save the tokenizer with both models (tokenizer.json), or use models with the same vocab_size",
            )
        vocab = teacher_rows
    for name, rows in ((teacher_name, teacher_rows), (student_name, student_rows)):
        if rows < vocab:
            raise StageError(
                f"{name} has {rows} embedding rows but its tokenizer has {vocab} tokens",
                hint="the model and tokenizer do not belong together; re-import the model",
            )
    return vocab


def intermediate_pairs_valid(
    pairs: Sequence[tuple[int, int]], student_layers: int, teacher_layers: int
) -> None:
    """1-indexed layer pairs must exist in both models."""
    for student_layer, teacher_layer in pairs:
        if not 1 <= student_layer <= student_layers:
            raise StageError(
                f"distill.loss.intermediate: student_layer {student_layer} does not exist (the student has {student_layers} layer(s), numbered from 1)",
                hint="choose layers 1..N of the pruned student",
            )
        if not 1 <= teacher_layer <= teacher_layers:
            raise StageError(
                f"distill.loss.intermediate: teacher_layer {teacher_layer} does not exist (the teacher has {teacher_layers} layer(s), numbered from 1)",
                hint="choose layers 1..N of the teacher",
            )
