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

Speed: three stages overlap, connected by small bounded queues — a thread reads and parses
JSON lines, a thread runs the Rust tokenizer on batches (it releases the GIL and spreads each
batch over ``data.workers`` threads, default every core), and the main thread appends the ids
to the ``.bin``. Per token, Python only turns the tokenizer's lists into numpy arrays.
Memory stays flat: a few batches are in flight and the writer streams to disk. (Worker
processes that each tokenize a byte range serially were measured too: the Rust tokenizer's
own thread pool spends ~20 % less CPU per token here; see ``benchmarks/RESULTS.md``.)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minispec import layout
from minispec.engines.torch.indexed import IndexedDatasetWriter, optimal_dtype
from minispec.errors import StageError
from minispec.fsio import atomic_dir, write_json_atomic

INT32_MAX = np.iinfo(np.int32).max


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
    encoder = Encoder(tokenizer.backend_tokenizer, eod, dtype)
    with tokenizer_threads(workers), atomic_dir(root / layout.TOKENS_DIR) as tmp:
        for split, path in inputs.items():
            prefix = tmp / Path(layout.tokens_prefix(split)).name
            splits[split] = tokenize_file(path, prefix, encoder, desc=split)
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
        "threads": workers,
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

# JSONL bytes per tokenizer call, ~400 WikiText rows: of 64 KiB to 1 MiB, 128 KiB used the least
# CPU per token here (benchmarks/RESULTS.md); bounded in bytes because documents can be huge
BATCH_BYTES = 128 * 1024
QUEUE_DEPTH = 2  # batches waiting between two stages


@dataclass
class Batch:
    texts: list[str]
    rows: int  # JSON lines read (blank lines are not rows)
    bytes: int  # bytes of the file these lines span


@dataclass
class Encoded:
    lengths: np.ndarray  # int32[documents]: tokens per kept document, EOD included
    ids: np.ndarray  # dtype[sum(lengths)]: every kept document's ids back to back
    rows: int
    empty: int  # rows skipped because their text has no tokens
    bytes: int
    max_id: int  # largest id in ``ids`` (-1 when none)


def tokenize_file(path: Path, prefix: Path, encoder: Encoder, desc: str = "") -> dict:
    """Tokenize one JSONL file into ``<prefix>.bin/.idx``; returns the split's statistics."""
    from tqdm import tqdm

    size = path.stat().st_size
    rows = empty = 0
    max_id = -1
    started = time.perf_counter()
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"tokenize {desc}".strip(),
        file=sys.stderr,
        mininterval=0.5,
    )
    with IndexedDatasetWriter(prefix, encoder.dtype) as writer, bar:
        batches = in_background(read_batches(path))
        for batch, encodings in in_background(encode_all(batches, encoder)):
            # converting here lets the tokenizer's threads already work on the next batch
            encoded = encoder.to_arrays(batch, encodings)
            writer.add_documents(encoded.lengths, encoded.ids)
            rows += encoded.rows
            empty += encoded.empty
            max_id = max(max_id, encoded.max_id)
            bar.update(encoded.bytes)
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


def read_batches(path: Path) -> Iterator[Batch]:
    """The texts of ``{"text": ...}`` lines, in batches; a bad line stops with its file and line."""
    number = 1  # line number of the batch's first line
    with open(path, "rb") as handle:
        while lines := handle.readlines(BATCH_BYTES):
            texts = parse_lines(lines, path, number)  # blank lines hold no record: not rows
            yield Batch(texts, len(texts), sum(map(len, lines)))
            number += len(lines)


def parse_lines(lines: list[bytes], path: Path, first_number: int) -> list[str]:
    """Parse a batch of lines in one ``json.loads`` call; on any doubt, line by line (exact errors)."""
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; a record that is not an object
    # raises TypeError, one without "text" KeyError; a line holding two records changes the count
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
        texts = [record["text"] for record in records]
        if len(texts) == len(lines) and all(type(text) is str for text in texts):
            return texts
    except (ValueError, TypeError, KeyError):
        pass
    return [
        parse_line(line, path, first_number + i) for i, line in enumerate(lines) if line.strip()
    ]


def parse_line(line: bytes, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except UnicodeDecodeError as exc:
        raise StageError(
            f"{path}:{number}: invalid UTF-8 (byte {exc.start} of the line)",
            hint="re-encode the file as UTF-8, or rerun the data stage",
        ) from None
    except json.JSONDecodeError as exc:
        raise StageError(
            f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno}); a truncated line?",
            hint="rerun the data stage to rewrite the file",
        ) from None
    if not isinstance(record, dict) or "text" not in record:
        raise StageError(
            f"{path}:{number}: no field 'text'",
            hint='the data stage writes {"text": ...} lines; rerun it',
        )
    text = record["text"]
    if not isinstance(text, str):
        raise StageError(
            f"{path}:{number}: field 'text' is {type(text).__name__}, expected a string"
        )
    return text


class Encoder:
    """Token ids of a batch of texts, NeMo's way: no special tokens, EOD appended, empty skipped.

    Two halves so that they can overlap: :meth:`encode` runs the Rust tokenizer (no GIL, every
    thread of its pool) and :meth:`to_arrays` turns its output into numpy arrays (Python).
    """

    def __init__(self, tokenizer, eod: int, dtype):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer (the Rust one behind the HF tokenizer)
        self.eod = int(eod)
        self.dtype = np.dtype(dtype)

    def encode(self, batch: Batch) -> tuple[Batch, list]:
        return batch, self.tokenizer.encode_batch_fast(batch.texts, add_special_tokens=False)

    def to_arrays(self, batch: Batch, encodings: list) -> Encoded:
        kept = [ids for ids in (encoding.ids for encoding in encodings) if ids]
        for ids in kept:
            ids.append(self.eod)
        lengths = np.fromiter(map(len, kept), dtype=np.int32, count=len(kept))
        flat = np.fromiter(
            itertools.chain.from_iterable(kept), dtype=self.dtype, count=int(lengths.sum())
        )
        max_id = int(flat.max()) if flat.size else -1
        return Encoded(lengths, flat, batch.rows, len(batch.texts) - len(kept), batch.bytes, max_id)

    def __call__(self, batch: Batch) -> Encoded:
        return self.to_arrays(*self.encode(batch))


def encode_all(batches: Iterator[Batch], encoder: Encoder) -> Iterator[tuple[Batch, list]]:
    try:
        for batch in batches:
            yield encoder.encode(batch)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the reader thread behind ``batches``


def in_background(iterator: Iterator, depth: int = QUEUE_DEPTH) -> Iterator:
    """Run ``iterator`` in a thread, ``depth`` items ahead; its exceptions surface here.

    Closing the returned generator (or an exception in the consumer) stops the thread and closes
    ``iterator``, so a chain of these shuts down cleanly.
    """
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="minispec-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def tokenizer_threads(threads: int):
    """Let the Rust tokenizer use ``threads`` threads (its rayon pool) while the stage runs.

    ``RAYON_NUM_THREADS`` takes effect only if the pool has not started yet in this process,
    which is the case in a stage process; the count never changes results.
    """
    names = ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
