"""``tokenize`` stage: ``data/jsonl/<split>.jsonl`` → Megatron ``data/tokens/<split>_text_document``.

The output is byte for byte what NeMo's ``preprocess_data_for_megatron.py --append-eod
--tokenizer-library huggingface`` writes for the same tokenizer, so both engines share it:

- a document's ids are the tokenizer's ids without special tokens: NeMo's HF wrapper
  (``AutoTokenizer.text_to_ids``) is ``convert_tokens_to_ids(tokenize(text))``, which adds no
  BOS; we call the same Rust tokenizer with ``add_special_tokens=False``;
- one EOD per document: the tokenizer's ``eos_token`` id (NeMo's ``eos_id``; its wrapper falls
  back to ``sep_token`` when a tokenizer has no EOS, and so do we);
- a row whose text yields no tokens (WikiText's blank lines) is skipped, EOD included, as NeMo
  skips documents with no ids;
- tokens are uint16 when ``len(tokenizer)`` < 65,500, else int32 (Megatron's
  ``best_fitting_dtype`` of the same vocabulary size).

Speed: the file is cut into line-aligned byte ranges that worker processes (``data.workers``,
default every core) read, parse and tokenize themselves, each with the Rust tokenizer on one
thread; the parent only appends the returned arrays. That beat the tokenizer's own rayon batch
parallelism here (``benchmarks/tokenize_speed.py``). Memory stays flat: a bounded number of
ranges is in flight and the writer streams to disk.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minispec import layout
from minispec.engines.torch.indexed import IndexedDatasetWriter, optimal_dtype
from minispec.errors import StageError
from minispec.fsio import atomic_dir, write_json_atomic

CHUNK_BYTES = 512 * 1024  # a worker's unit of work: big enough to amortise IPC, small for progress
INT32_MAX = np.iinfo(np.int32).max


@dataclass
class Encoded:
    """What a worker returns for one byte range of a JSONL file."""

    lengths: np.ndarray  # int32[documents]: tokens per kept document, EOD included
    ids: np.ndarray  # dtype[sum(lengths)]: every kept document's ids back to back
    rows: int  # JSON lines read
    empty: int  # rows skipped because their text has no tokens
    bytes: int  # bytes of the range
    max_id: int  # largest id in ``ids`` (-1 when none)


class BadRecord(Exception):
    """A line a worker cannot use; ``offset`` is its byte offset in the file."""

    def __init__(self, offset: int, message: str, hint: str | None = None):
        super().__init__(offset, message, hint)
        self.offset, self.message, self.hint = offset, message, hint


# --------------------------------------------------------------------------------------------
# the stage


def run(spec, variant, root: Path) -> None:
    tokenizer, tokenizer_source = load_stage_tokenizer(spec, root)
    vocab_size = len(tokenizer)
    dtype = token_dtype(vocab_size, tokenizer_source)
    eod, eod_token = eod_of(tokenizer, tokenizer_source)
    teacher_vocab = teacher_vocab_size(root)
    workers = spec.data.workers or available_cores()
    inputs = {split: root / layout.jsonl_path(split) for split in layout.SPLITS}
    for path in inputs.values():
        if not path.exists():
            raise StageError(f"{path} not found", hint="run the data stage first")

    splits = {}
    started = time.perf_counter()
    with TokenizerPool(tokenizer.backend_tokenizer.to_str(), eod, dtype, workers) as pool:
        with atomic_dir(root / layout.TOKENS_DIR) as tmp:
            for split, path in inputs.items():
                prefix = tmp / Path(layout.tokens_prefix(split)).name
                splits[split] = tokenize_file(path, prefix, pool, dtype, desc=split)
                _check_split(split, path, splits[split], teacher_vocab)
    seconds = time.perf_counter() - started
    total = sum(s["tokens"] for s in splits.values())
    metrics = {
        "tokenizer": tokenizer_source,
        "vocab_size": vocab_size,
        "dtype": np.dtype(dtype).name,
        "eod_id": eod,
        "eod_token": eod_token,
        "append_eod": True,
        "bos_added": False,
        "workers": workers,
        "tokens": total,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(total / seconds, 1) if seconds > 0 else None,
        "splits": splits,
    }
    write_json_atomic(root / layout.metrics_path("tokenize"), metrics)


def _check_split(split: str, path: Path, stats: dict, teacher_vocab: int | None) -> None:
    if stats["documents"] == 0:
        raise StageError(
            f"{path}: the {split} split has no document with any token ({stats['rows']} rows)",
            hint="check data.source and data.text_field",
        )
    if teacher_vocab is not None and stats["max_id"] >= teacher_vocab:
        raise StageError(
            f"{path}: token id {stats['max_id']} is outside the teacher's vocabulary ({teacher_vocab} embeddings)",
            hint="data.tokenizer must match the teacher's vocabulary; unset it to use the teacher's tokenizer",
        )


def load_stage_tokenizer(spec, root: Path):
    """The teacher's tokenizer (``models/teacher``), or ``data.tokenizer`` when the spec sets one."""
    from minispec.engines.torch.modeling import load_tokenizer, load_tokenizer_from_source

    if spec.data.tokenizer:
        return load_tokenizer_from_source(
            spec.data.tokenizer, root, trust_remote_code=spec.teacher.trust_remote_code
        ), spec.data.tokenizer
    teacher = root / layout.TEACHER_DIR
    if (
        not (teacher / "tokenizer_config.json").exists()
        and not (teacher / "tokenizer.json").exists()
    ):
        raise StageError(
            f"{teacher} has no tokenizer", hint="run the import stage first, or set data.tokenizer"
        )
    return load_tokenizer(teacher), layout.TEACHER_DIR


def token_dtype(vocab_size: int, where: str) -> type[np.number]:
    """Megatron's choice: uint16 below 65,500 ids, int32 up to 2^31 - 1, else an error."""
    if vocab_size > INT32_MAX:
        raise StageError(
            f"the tokenizer {where} has {vocab_size} ids, more than the int32 token dtype of Megatron's .bin format holds",
            hint="use a tokenizer with fewer than 2,147,483,647 ids",
        )
    return optimal_dtype(vocab_size)


def eod_of(tokenizer, where: str) -> tuple[int, str]:
    """NeMo's ``eos_id`` (the EOS token, else the SEP token)."""
    for token in (tokenizer.eos_token, tokenizer.sep_token):
        if token is not None:
            return int(tokenizer.convert_tokens_to_ids(token)), str(token)
    raise StageError(
        f"the tokenizer {where} has no EOS (or SEP) token to end documents with",
        hint="use a tokenizer that defines eos_token",
    )


def teacher_vocab_size(root: Path) -> int | None:
    config = root / layout.TEACHER_DIR / "config.json"
    if not config.exists():
        return None
    value = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
    return int(value) if isinstance(value, int) else None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# one file


def tokenize_file(path: Path, prefix: Path, pool: TokenizerPool, dtype, desc: str = "") -> dict:
    """Tokenize one JSONL file into ``<prefix>.bin/.idx``; returns the split's statistics."""
    from tqdm import tqdm

    size = path.stat().st_size
    rows = empty = 0
    max_id = -1
    started = time.perf_counter()
    with (
        IndexedDatasetWriter(prefix, dtype) as writer,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"tokenize {desc}".strip(),
            file=sys.stderr,
            mininterval=0.5,
        ) as bar,
    ):
        try:
            for encoded in pool.map(str(path), line_ranges(path, chunk_bytes(size, pool.workers))):
                writer.add_documents(encoded.lengths, encoded.ids)
                rows += encoded.rows
                empty += encoded.empty
                max_id = max(max_id, encoded.max_id)
                bar.update(encoded.bytes)
        except BadRecord as bad:
            raise StageError(
                f"{path}:{line_of_offset(path, bad.offset)}: {bad.message}", hint=bad.hint
            ) from None
        documents, tokens = writer.documents, writer.tokens
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "documents": documents,
        "empty_skipped": empty,
        "tokens": tokens,
        "max_id": max_id,
        "bytes": size,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
    }


def chunk_bytes(size: int, workers: int) -> int:
    """``CHUNK_BYTES``, or less for small files so that every worker gets several ranges."""
    return min(CHUNK_BYTES, max(16 * 1024, size // (8 * workers) + 1))


def line_ranges(path: Path, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` byte ranges of about ``chunk_bytes`` that begin and end on line boundaries."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = 0
        while start < size:
            handle.seek(min(start + chunk_bytes, size))
            handle.readline()  # move to the end of the line the cut fell into
            end = min(handle.tell(), size)
            yield start, end
            start = end


def line_of_offset(path: Path, offset: int) -> int:
    """1-based line number of a byte offset (only computed when reporting an error)."""
    line, done = 1, 0
    with open(path, "rb") as handle:
        while done < offset:
            block = handle.read(min(1 << 20, offset - done))
            if not block:
                break
            line += block.count(b"\n")
            done += len(block)
    return line


# --------------------------------------------------------------------------------------------
# workers

_WORKER: dict = {}


def _init_worker(tokenizer_json: str, eod: int, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one Rust thread per worker process
    from tokenizers import Tokenizer

    _WORKER.update(tokenizer=Tokenizer.from_str(tokenizer_json), eod=eod, dtype=np.dtype(dtype))


def encode_range(path: str, start: int, end: int) -> Encoded:
    """Read, parse and tokenize the JSON lines in ``[start, end)`` of ``path``."""
    with open(path, "rb") as handle:
        handle.seek(start)
        lines = handle.read(end - start).split(b"\n")
    texts = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue  # the empty piece after the last newline, or a blank line
        try:
            texts.append(json.loads(line)["text"])
        except Exception as exc:  # explained with the line's offset in _bad_line
            raise _bad_line(
                exc, line, start + sum(len(piece) + 1 for piece in lines[:index])
            ) from None
        if not isinstance(texts[-1], str):
            raise BadRecord(
                start + sum(len(piece) + 1 for piece in lines[:index]),
                f"field 'text' is {type(texts[-1]).__name__}, expected a string",
            )
    return encode_texts(texts, end - start)


def encode_texts(texts: list[str], nbytes: int) -> Encoded:
    tokenizer, eod, dtype = _WORKER["tokenizer"], _WORKER["eod"], _WORKER["dtype"]
    ids = [
        encoding.ids for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    ]
    kept = [doc for doc in ids if doc]
    for doc in kept:
        doc.append(eod)
    lengths = np.fromiter(map(len, kept), dtype=np.int32, count=len(kept))
    flat = np.fromiter(itertools.chain.from_iterable(kept), dtype=dtype, count=int(lengths.sum()))
    max_id = int(flat.max()) if flat.size else -1
    return Encoded(lengths, flat, len(texts), len(ids) - len(kept), nbytes, max_id)


def _bad_line(exc: Exception, line: bytes, offset: int) -> BadRecord:
    if isinstance(exc, UnicodeDecodeError):
        return BadRecord(
            offset,
            f"invalid UTF-8 (byte {exc.start} of the line)",
            "re-encode the file as UTF-8, or rerun the data stage",
        )
    if isinstance(exc, json.JSONDecodeError):
        return BadRecord(
            offset,
            f"invalid JSON ({exc.msg} at column {exc.colno}); a truncated line?",
            "rerun the data stage to rewrite the file",
        )
    if isinstance(exc, KeyError):
        return BadRecord(
            offset, "no field 'text'", 'the data stage writes {"text": ...} lines; rerun it'
        )
    return BadRecord(
        offset, f"expected a JSON object with a 'text' field ({type(exc).__name__}: {exc})"
    )


class TokenizerPool:
    """Worker processes that each hold the tokenizer; ``map`` keeps order and a bounded backlog.

    With one worker everything runs in this process (no start-up cost, easy to debug).
    """

    def __init__(self, tokenizer_json: str, eod: int, dtype, workers: int):
        self.args = (tokenizer_json, int(eod), np.dtype(dtype).name)
        self.workers = max(1, int(workers))
        self.pool = None

    def __enter__(self) -> TokenizerPool:
        if self.workers == 1:
            _init_worker(*self.args)
        else:
            import multiprocessing

            # spawn: workers start clean (no inherited threads of torch or of a parallel tokenizer)
            self.pool = multiprocessing.get_context("spawn").Pool(
                self.workers, initializer=_init_worker, initargs=self.args
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, path: str, ranges: Iterator[tuple[int, int]]) -> Iterator[Encoded]:
        if self.pool is None:
            for start, end in ranges:
                yield encode_range(path, start, end)
            return
        pending: deque = deque()
        for start, end in ranges:
            pending.append(self.pool.apply_async(encode_range, (path, start, end)))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
