"""Fixed-length token windows over a tokenized split, and the seeded order they are read in.

A split's ``.bin`` holds its documents back to back, each ending in EOD, so the file is one
token stream. Window ``i`` is ``tokens[i*L : i*L + L + 1]`` (``L = seq_length``): the model reads
the first ``L`` tokens and predicts the last ``L``, as Megatron's GPT dataset does, so every
window scores exactly ``L`` tokens and windows never overlap in what they predict.

The order is a pure function of ``(seed, sample number)``: sample ``g`` of a run is window
``permutation(seed, epoch)[g % n]`` with ``epoch = g // n``. Training resumes at any step with
the same data order, and importance, training and evaluation agree on what a window is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minispec.engines.torch.indexed import IndexedDataset
from minispec.errors import StageError


class TokenWindows:
    """Windows of ``seq_length + 1`` tokens over ``<prefix>.bin``."""

    def __init__(self, prefix: str | Path, seq_length: int):
        self.prefix = Path(prefix)
        try:
            self.dataset = IndexedDataset(self.prefix)
        except FileNotFoundError:
            raise StageError(
                f"{self.prefix}.idx/.bin not found", hint="run the tokenize stage first"
            ) from None
        self.seq_length = seq_length
        self.tokens = self.dataset.tokens

    def __len__(self) -> int:
        return max(0, (self.dataset.num_tokens - 1) // self.seq_length)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.seq_length
        return np.asarray(self.tokens[start : start + self.seq_length + 1], dtype=np.int64)

    def batch(self, indices):
        """``[len(indices), seq_length + 1]`` int64 torch tensor."""
        import torch

        return torch.from_numpy(np.stack([self[int(i)] for i in indices]))

    def require(self, count: int, what: str) -> None:
        if count > len(self):
            raise StageError(
                f"{what} needs {count} windows of {self.seq_length} tokens, but {self.prefix.name} has only {len(self)}",
                hint="lower the count, lower data.seq_length, or provide more data",
            )


def permutation(count: int, seed: int, epoch: int = 0) -> np.ndarray:
    """The seeded order of ``count`` windows in one epoch."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(count)


def sample_window(sample: int, count: int, seed: int, _cache: dict | None = None) -> int:
    """Window index of the run's ``sample``-th sample (epochs reshuffle with the same seed)."""
    epoch, position = divmod(sample, count)
    if _cache is not None:
        order = _cache.get(epoch)
        if order is None:
            order = _cache[epoch] = permutation(count, seed, epoch)
    else:
        order = permutation(count, seed, epoch)
    return int(order[position])


def calibration_indices(
    windows: TokenWindows, count: int, seed: int, what: str = "calibration"
) -> np.ndarray:
    """The first ``count`` windows of the seeded order: the calibration set for importance passes."""
    windows.require(count, what)
    return permutation(len(windows), seed)[:count]
