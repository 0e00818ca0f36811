"""Calibration batches and cheap loss measurements for the importance and prune stages.

Calibration data is the first ``count`` windows of the train split in the seeded order of
:func:`minispec.engines.torch.windows.calibration_indices`, so the importance pass and depth
scoring of one spec see the same sequences whatever the batch size. A window holds
``seq_length + 1`` tokens: the model reads the first ``seq_length`` and is scored on the last
``seq_length`` (next-token prediction), as in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from minispec import layout
from minispec.engines.torch.windows import TokenWindows, calibration_indices

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# Tokens per forward pass of the calibration and validation loops (batch = this // seq_length,
# at least one sequence). Results do not depend on it beyond float rounding; it bounds memory.
TOKENS_PER_BATCH = 4096
# Tokens per chunk when the LM head and cross-entropy run over hidden states: keeps the fp32
# logits of a large vocabulary (e.g. 128k) from being materialised for a whole batch at once.
LOSS_CHUNK_TOKENS = 2048
# Validation windows scored right after pruning (and on the teacher, for reference): a quick
# sanity figure in metrics/prune-<variant>.json; the evaluate stage measures the real thing.
PRUNE_VALIDATION_WINDOWS = 16


def batch_size_for(seq_length: int) -> int:
    return max(1, TOKENS_PER_BATCH // seq_length)


def train_windows(root: Path, seq_length: int) -> TokenWindows:
    return TokenWindows(root / layout.tokens_prefix("train"), seq_length)


def calibration_set(
    root: Path, seq_length: int, count: int, seed: int, what: str
) -> tuple[TokenWindows, np.ndarray]:
    """The train windows and the indices of the calibration sequences; a clear error when short."""
    windows = train_windows(root, seq_length)
    return windows, calibration_indices(windows, count, seed, what)


def iter_batches(
    windows: TokenWindows, indices: np.ndarray, device: torch.device
) -> Iterator[torch.Tensor]:
    """``[b, seq_length + 1]`` int64 token batches of the given windows, in order."""
    size = batch_size_for(windows.seq_length)
    for start in range(0, len(indices), size):
        yield windows.batch(indices[start : start + size]).to(device)


def lm_loss_sum(model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor) -> float:
    """Summed next-token cross-entropy (nats) of final-norm ``hidden`` [b, T, H] against ``labels`` [b, T].

    The LM head runs in chunks of tokens and the softmax in fp32.
    """
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # [b*T, H]
    flat_labels = labels.reshape(-1)  # [b*T]
    total = 0.0
    for start in range(0, flat_labels.numel(), LOSS_CHUNK_TOKENS):
        logits = head(flat_hidden[start : start + LOSS_CHUNK_TOKENS]).float()  # [chunk, V]
        total += F.cross_entropy(
            logits, flat_labels[start : start + LOSS_CHUNK_TOKENS], reduction="sum"
        ).item()
    return total


def windows_loss(
    model: PreTrainedModel, windows: TokenWindows, indices, device: torch.device
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` over the given windows."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in iter_batches(windows, np.asarray(indices), device):
            inputs, labels = batch[:, :-1], batch[:, 1:]
            hidden = model.model(
                input_ids=inputs, use_cache=False
            ).last_hidden_state  # [b, T, H], after the final norm
            total += lm_loss_sum(model, hidden, labels)
            tokens += labels.numel()
    return total / tokens


def validation_windows(
    root: Path, seq_length: int, count: int = PRUNE_VALIDATION_WINDOWS
) -> tuple[TokenWindows, np.ndarray] | None:
    """The first ``count`` validation windows, or None when there is no tokenized validation split."""
    prefix = root / layout.tokens_prefix("validation")
    if not Path(f"{prefix}.idx").exists():
        return None
    windows = TokenWindows(prefix, seq_length)
    if len(windows) == 0:
        return None
    return windows, np.arange(min(count, len(windows)))
