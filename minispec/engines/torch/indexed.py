"""Megatron indexed datasets (``<prefix>.bin`` + ``<prefix>.idx``): a streaming writer and a reader.

This is the on-disk format NeMo's ``preprocess_data_for_megatron.py`` writes and Megatron-Core's
``IndexedDataset`` reads, so tokenized data is shared by both engines.

``.bin``: the token ids of every document, back to back, in ``dtype``.
``.idx`` (little endian)::

    b"MMIDIDX\\x00\\x00"             9-byte magic
    <Q version = 1
    <B dtype code (uint16 = 8, int32 = 4, ...)
    <Q sequence_count              one sequence per document here
    <Q document_count              = sequence_count + 1 (document boundaries, starting at 0)
    int32[sequence_count]           tokens per sequence
    int64[sequence_count]           byte offset of each sequence in .bin
    int64[document_count]           sequence index where each document starts (+ the end)

The writer keeps memory constant: lengths are spooled to a side file while tokens stream into
``.bin`` and the index is written at the end. Both files appear under their final names only
when :meth:`IndexedDatasetWriter.close` succeeds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_CHUNK = 1 << 20  # entries per chunk when streaming the index


def optimal_dtype(vocab_size: int) -> type[np.number]:
    """Megatron's choice: uint16 below 65,500 ids, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def token_dtype_for(vocab_size: int) -> type[np.number]:
    """The token dtype for a vocabulary; refuses vocabularies int32 cannot hold."""
    if vocab_size > np.iinfo(np.int32).max:
        raise ValueError(
            f"a vocabulary of {vocab_size} ids does not fit the int32 token dtype of Megatron's format"
        )
    return optimal_dtype(vocab_size)


class IndexedDatasetWriter:
    """Append documents (token id arrays) and produce ``<prefix>.bin``/``.idx`` atomically."""

    def __init__(self, prefix: str | os.PathLike[str], dtype: type[np.number]):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._max_id = np.iinfo(self.dtype).max
        self._tmp_bin = self.prefix.with_name(self.prefix.name + ".bin.partial")
        self._tmp_lengths = self.prefix.with_name(self.prefix.name + ".lengths.partial")
        self._tmp_idx = self.prefix.with_name(self.prefix.name + ".idx.partial")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(self._tmp_bin, "wb")
        self._lengths = open(self._tmp_lengths, "wb")
        self.documents = 0
        self.tokens = 0

    def add_document(self, token_ids) -> None:
        array = np.asarray(token_ids)
        if array.size and (array.min() < 0 or array.max() > self._max_id):
            raise ValueError(
                f"token id out of range for {self.dtype.name}: {int(array.min())}..{int(array.max())}"
            )
        self._bin.write(array.astype(self.dtype, copy=False).tobytes(order="C"))
        self._lengths.write(struct.pack("<i", int(array.size)))
        self.documents += 1
        self.tokens += int(array.size)

    def add_documents(self, lengths: np.ndarray, flat_ids: np.ndarray) -> None:
        """Append many documents at once: ``flat_ids`` is every document's ids concatenated."""
        if int(np.sum(lengths, dtype=np.int64)) != flat_ids.size:
            raise ValueError(
                f"lengths sum to {int(np.sum(lengths))} tokens but {flat_ids.size} ids were given"
            )
        if flat_ids.size and (flat_ids.min() < 0 or flat_ids.max() > self._max_id):
            raise ValueError(f"token id out of range for {self.dtype.name}")
        self._bin.write(flat_ids.astype(self.dtype, copy=False).tobytes(order="C"))
        self._lengths.write(np.asarray(lengths, dtype="<i4").tobytes(order="C"))
        self.documents += int(len(lengths))
        self.tokens += int(flat_ids.size)

    def close(self) -> None:
        """Write the index and move both files to their final names (or leave nothing on failure)."""
        try:
            self._bin.flush()
            os.fsync(self._bin.fileno())  # the .bin must be on disk before an index points into it
            self._bin.close()
            self._lengths.close()
            self._write_index()
            os.replace(self._tmp_bin, self.prefix.with_name(self.prefix.name + ".bin"))
            os.replace(self._tmp_idx, self.prefix.with_name(self.prefix.name + ".idx"))
            self._tmp_lengths.unlink()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far (no partial dataset is left behind)."""
        for handle in (self._bin, self._lengths):
            handle.close()
        for path in (self._tmp_bin, self._tmp_lengths, self._tmp_idx):
            path.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _write_index(self) -> None:
        count = self.documents
        lengths = (
            np.memmap(self._tmp_lengths, dtype="<i4", mode="r", shape=(count,))
            if count
            else np.zeros(0, "<i4")
        )
        itemsize = self.dtype.itemsize
        with open(self._tmp_idx, "wb") as idx:
            idx.write(INDEX_MAGIC)
            idx.write(struct.pack("<Q", INDEX_VERSION))
            idx.write(struct.pack("<B", DTYPE_CODES[self.dtype.type]))
            idx.write(struct.pack("<Q", count))
            idx.write(struct.pack("<Q", count + 1))
            for start in range(0, count, _CHUNK):  # int32[count] lengths
                idx.write(np.asarray(lengths[start : start + _CHUNK], dtype="<i4").tobytes())
            offset = 0
            for start in range(0, count, _CHUNK):  # int64[count] byte pointers
                chunk = np.asarray(lengths[start : start + _CHUNK], dtype="<i8") * itemsize
                pointers = np.cumsum(chunk) - chunk + offset
                offset += int(chunk.sum())
                idx.write(pointers.astype("<i8").tobytes())
            for start in range(0, count + 1, _CHUNK):  # int64[count + 1] document starts
                idx.write(np.arange(start, min(start + _CHUNK, count + 1), dtype="<i8").tobytes())
            idx.flush()
            os.fsync(idx.fileno())
        del lengths


class IndexedDataset:
    """Read-only, memory-mapped view of a Megatron indexed dataset."""

    def __init__(self, prefix: str | os.PathLike[str]):
        self.prefix = Path(prefix)
        idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        with open(idx_path, "rb") as handle:
            header = handle.read(9 + 8 + 1 + 8 + 8)
        if len(header) < 34 or header[:9] != INDEX_MAGIC:
            raise ValueError(f"{idx_path}: not a Megatron indexed dataset index (bad header)")
        (version,) = struct.unpack("<Q", header[9:17])
        (code,) = struct.unpack("<B", header[17:18])
        sequence_count, document_count = struct.unpack("<QQ", header[18:34])
        if version != INDEX_VERSION or code not in CODE_DTYPES:
            raise ValueError(
                f"{idx_path}: unsupported index version {version} or dtype code {code}"
            )
        self.dtype = np.dtype(CODE_DTYPES[code])
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        offset = 34
        self.lengths = np.frombuffer(index, dtype="<i4", count=sequence_count, offset=offset)
        offset += self.lengths.nbytes
        self.pointers = np.frombuffer(index, dtype="<i8", count=sequence_count, offset=offset)
        offset += self.pointers.nbytes
        self.document_indices = np.frombuffer(
            index, dtype="<i8", count=document_count, offset=offset
        )
        expected = int(self.lengths.sum()) * self.dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise ValueError(
                f"{bin_path}: {bin_path.stat().st_size} bytes, the index expects {expected}"
            )
        self.tokens = (
            np.memmap(bin_path, mode="r", dtype=self.dtype) if expected else np.zeros(0, self.dtype)
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(self.pointers[index]) // self.dtype.itemsize
        return np.asarray(self.tokens[start : start + int(self.lengths[index])])

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])
