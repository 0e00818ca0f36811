"""The ``teacher_logits`` stage: the working teacher runs once, every student distills from its cache.

**What is cached.** For every train window that distillation reads — the windows of samples
``0 … distill.steps × distill.global_batch_size − 1`` in the trainer's own order
(:func:`windows.sample_window`), so every step's micro batches on every rank are covered —
and for every one of its ``seq_length`` positions: the teacher's ``K = top_k`` most likely
token ids, their log-probabilities at T = 1, and the log of the remaining (tail) mass. The
validation windows are not cached: validation scores the student's own cross-entropy.

**Arithmetic.** Exactly the online teacher's: the same weights and dtype (fp32 on CPU, bf16 on
GPU with ``resources.precision`` bf16/auto), the same autocast, the logits sliced to the real
vocabulary, log-softmax in fp32.

**Format** (``data/teacher-logits/``), written to a temporary directory and renamed on success:

- ``manifest.json``: format version, ``top_k``, ``vocab_size``, ``index_bits``, ``seq_length``
  and the fingerprint fields (:func:`identity`): tokenizer (SHA-256 of its token → id map),
  data (SHA-256 of the split's ``.idx`` and of the tokens of every cached window), window
  order (``seed``, ``samples``, the split's window count) — plus each shard's SHA-256.
- ``shard-RRRRR.bin``: one zlib-compressed record per window, written by rank R of the stage;
  ``shard-RRRRR.npy`` ``[M, 3]`` int64: (window, byte offset, byte length) of each record.
- A record (``L`` positions, ``K`` per position): the ids bit-packed at ``index_bits`` bits
  (17 for a 49k–131k vocabulary), the log-probabilities as bf16 with their high and low bytes
  in two planes (the exponent bytes of sorted log-probabilities compress well), the tail log
  masses as fp32. Uncompressed: ``L · (K · (index_bits / 8 + 2) + 4)`` bytes.

**Reading.** :class:`TeacherLogits` opens the directory, checks the fingerprint against the run
that reads it (:meth:`TeacherLogits.verify`: a clear error naming every mismatch) and returns
any windows as a :class:`sparse_kd.SparseTeacher`; each rank of a distributed run reads only
the records of its own windows (one ``pread`` each).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from minispec import layout
from minispec.engines.torch import distributed
from minispec.engines.torch.windows import TokenWindows, permutation
from minispec.errors import StageError

if TYPE_CHECKING:
    from minispec.engines.torch.sparse_kd import SparseTeacher
    from minispec.spec.model import Spec

FORMAT = "minispec-teacher-logits"
VERSION = 1
MANIFEST = "manifest.json"
COMPRESSION_LEVEL = 6
# the fields that must match between the cache and the run that reads it, with what they mean
IDENTITY_FIELDS = {
    "tokenizer_sha256": "tokenizer",
    "vocab_size": "vocabulary size",
    "seq_length": "data.seq_length",
    "window_count": "windows in the train split",
    "seed": "seed (window order)",
    "data_sha256": "train data (token ids of the cached windows)",
}


# --------------------------------------------------------------------------------------------
# which windows, and their fingerprint


def distill_windows(window_count: int, samples: int, seed: int) -> np.ndarray:
    """Sorted unique windows that samples ``0 … samples − 1`` of a run read (int64); the same
    order as :func:`windows.sample_window`, one permutation per epoch."""
    chunks = []
    epoch = 0
    while samples > 0:
        take = min(samples, window_count)
        chunks.append(permutation(window_count, seed, epoch)[:take])
        samples -= take
        epoch += 1
        if take == window_count:  # a full epoch already covers every window
            break
    return np.unique(np.concatenate(chunks)).astype(np.int64)


def tokenizer_sha256(tokenizer) -> str:
    """Identity of a tokenizer: its token → id map (what logit distillation depends on)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def data_sha256(windows: TokenWindows, ids: np.ndarray) -> str:
    """The split's document index and the tokens of windows ``ids`` (the ones the cache holds)."""
    digest = hashlib.sha256(Path(f"{windows.prefix}.idx").read_bytes())
    for index in ids:
        digest.update(windows[int(index)].astype("<i8").tobytes())
    return digest.hexdigest()


def identity(
    windows: TokenWindows, ids: np.ndarray, tokenizer, vocab_size: int, seed: int, samples: int
) -> dict:
    return {
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "vocab_size": int(vocab_size),
        "seq_length": int(windows.seq_length),
        "window_count": len(windows),
        "seed": int(seed),
        "samples": int(samples),
        "data_sha256": data_sha256(windows, ids),
    }


# --------------------------------------------------------------------------------------------
# records: one window's K ids, K log-probabilities and one tail mass per position


def index_bits(vocab_size: int) -> int:
    return max(1, (int(vocab_size) - 1).bit_length())


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Non-negative ints ``< 2**bits`` → a big-endian bit stream of ``bits`` bits each."""
    as_bytes = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return np.packbits(np.unpackbits(as_bytes, axis=1)[:, 32 - bits :]).tobytes()


def unpack_bits(buffer: bytes, bits: int, count: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8))[: count * bits]
    full = np.zeros((count, 32), dtype=np.uint8)
    full[:, 32 - bits :] = stream.reshape(count, bits)
    return np.packbits(full, axis=1).view(">u4").reshape(count).astype(np.int64)


def record_sizes(seq_length: int, top_k: int, bits: int) -> tuple[int, int, int]:
    """Uncompressed bytes of (ids, log-probabilities, tail) in one window's record."""
    count = seq_length * top_k
    return (count * bits + 7) // 8, count * 2, seq_length * 4


def encode_window(indices: torch.Tensor, logprobs: torch.Tensor, tail: torch.Tensor, bits: int):
    """One window's record: ``indices`` ``[L, K]``, ``logprobs`` ``[L, K]``, ``tail`` ``[L]``."""
    ids = pack_bits(indices.to(torch.int64).cpu().numpy().ravel(), bits)
    halves = logprobs.to(torch.bfloat16).cpu().view(torch.int16).numpy().astype("<i2")
    planes = halves.view(np.uint8).reshape(-1, 2).T.copy()  # [2, L·K]: low bytes, high bytes
    tails = tail.float().cpu().numpy().astype("<f4")
    return zlib.compress(ids + planes.tobytes() + tails.tobytes(), COMPRESSION_LEVEL)


def decode_window(record: bytes, seq_length: int, top_k: int, bits: int):
    """``(indices [L, K] int64, logprobs [L, K] fp32, tail [L] fp32)`` numpy arrays."""
    raw = zlib.decompress(record)
    id_bytes, value_bytes, tail_bytes = record_sizes(seq_length, top_k, bits)
    if len(raw) != id_bytes + value_bytes + tail_bytes:
        raise ValueError(
            f"record of {len(raw)} bytes, expected {id_bytes + value_bytes + tail_bytes}"
        )
    count = seq_length * top_k
    indices = unpack_bits(raw[:id_bytes], bits, count).reshape(seq_length, top_k)
    planes = np.frombuffer(raw, dtype=np.uint8, count=value_bytes, offset=id_bytes)
    halves = planes.reshape(2, count).T.copy().view("<u2").reshape(seq_length, top_k)
    logprobs = (halves.astype(np.uint32) << 16).view(np.float32)  # bf16 → fp32, exact
    tail = np.frombuffer(raw, dtype="<f4", count=seq_length, offset=id_bytes + value_bytes)
    return indices, logprobs, tail.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the reader


class TeacherLogits:
    """A finished cache directory: fingerprint check and random access by window."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise StageError(
                f"{self.directory} holds no teacher logits ({MANIFEST} is missing)",
                hint="run the teacher_logits stage first (minispec run, or dvc repro teacher_logits)",
            )
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise StageError(
                f"{path} is not a version-{VERSION} {FORMAT} manifest (format {manifest.get('format')!r}, version {manifest.get('version')!r})",
                hint="re-run the teacher_logits stage with this minispec",
            )
        self.manifest = manifest
        self.top_k = int(manifest["top_k"])
        self.bits = int(manifest["index_bits"])
        self.seq_length = int(manifest["seq_length"])
        tables = []
        for number, shard in enumerate(manifest["shards"]):
            table = np.load(self.directory / shard["index"], allow_pickle=False)  # [M, 3]
            tables.append(np.column_stack([table, np.full(len(table), number, dtype=np.int64)]))
        table = np.concatenate(tables) if tables else np.zeros((0, 4), dtype=np.int64)
        table = table[np.argsort(table[:, 0], kind="stable")]
        self.windows = table[:, 0]  # sorted window ids
        self._locations = table[:, 1:]  # offset, length, shard
        self._files: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def verify(self, expected: dict, required: np.ndarray, windows: TokenWindows) -> None:
        """Refuse a cache made for other inputs, naming every difference.

        ``expected``: :func:`identity` fields of the reading run except ``data_sha256``, which
        is recomputed here over the cache's own windows from this run's tokens; ``required``:
        the windows the run reads (all must be cached)."""
        problems = []
        for key, what in IDENTITY_FIELDS.items():
            if key == "data_sha256":
                continue
            if self.manifest.get(key) != expected.get(key):
                problems.append(
                    f"{what}: the cache has {_short(self.manifest.get(key))}, this run {_short(expected.get(key))}"
                )
        if not problems:  # the same split layout: compare the tokens the cache was made from
            if data_sha256(windows, self.windows) != self.manifest.get("data_sha256"):
                problems.append(f"{IDENTITY_FIELDS['data_sha256']}: the tokens differ")
            missing = np.setdiff1d(required, self.windows)
            if len(missing):
                problems.append(
                    f"window order: this run reads {len(missing)} window(s) the cache lacks (the cache covers "
                    f"{self.manifest.get('samples')} samples of seed {self.manifest.get('seed')}, e.g. window {int(missing[0])} is missing)"
                )
        if problems:
            raise StageError(
                f"the teacher logits in {self.directory} were made for other inputs: "
                + "; ".join(problems),
                hint="re-run the teacher_logits stage for this spec (minispec run recomputes it), or remove distill.teacher_logits to run the teacher online",
            )

    def batch(self, window_ids) -> SparseTeacher:
        """The cached teacher of windows ``window_ids``: tensors ``[B, L, K]`` / ``[B, L]``."""
        from minispec.engines.torch.sparse_kd import SparseTeacher

        ids = np.asarray(list(window_ids), dtype=np.int64)
        rows = np.searchsorted(self.windows, ids)
        found = (rows < len(self.windows)) & (
            self.windows[np.minimum(rows, len(self.windows) - 1)] == ids
        )
        if not found.all():
            raise StageError(
                f"window {int(ids[~found][0])} is not in the teacher logits of {self.directory}",
                hint="re-run the teacher_logits stage for this spec",
            )
        parts = [self._read(int(row)) for row in rows]
        return SparseTeacher(
            torch.from_numpy(np.stack([p[0] for p in parts])),
            torch.from_numpy(np.stack([p[1] for p in parts])),
            torch.from_numpy(np.stack([p[2] for p in parts])),
        )

    def _read(self, row: int):
        offset, length, shard = (int(x) for x in self._locations[row])
        fd = self._files.get(shard)
        if fd is None:
            name = self.manifest["shards"][shard]["file"]
            fd = self._files[shard] = os.open(self.directory / name, os.O_RDONLY)
        record = os.pread(fd, length, offset)
        try:
            if len(record) != length:
                raise ValueError(f"short read ({len(record)} of {length} bytes)")
            return decode_window(record, self.seq_length, self.top_k, self.bits)
        except (ValueError, zlib.error) as exc:
            raise StageError(
                f"damaged teacher logits record of window {int(self.windows[row])} in {self.directory} ({exc})",
                hint="re-run the teacher_logits stage (dvc repro -f teacher_logits)",
            ) from None

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


def _short(value) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


# --------------------------------------------------------------------------------------------
# the stage


def run(spec: Spec, variant: str | None, root: Path) -> None:
    """Compute ``data/teacher-logits`` for ``spec`` (every rank its share of the windows)."""
    if spec.distill is None or spec.distill.teacher_logits is None:
        raise StageError(
            "the spec has no distill.teacher_logits block",
            hint="add distill.teacher_logits, or recompile: without it the pipeline has no teacher_logits stage",
        )
    root = Path(root)
    ctx = distributed.setup(spec.resources.accelerator, spec.resources.devices)
    try:
        build(spec, root, ctx)
    finally:
        ctx.shutdown()


def build(spec: Spec, root: Path, ctx) -> None:
    from minispec.engines.torch.modeling import load_model
    from minispec.engines.torch.train import _maybe_tokenizer, config_from_spec

    cfg = config_from_spec(spec, "distill", "teacher_logits", ctx.device)
    top_k = spec.distill.teacher_logits.top_k
    teacher_dir = root / layout.working_teacher_dir(spec)
    trust = spec.teacher.trust_remote_code
    tokenizer = _maybe_tokenizer(teacher_dir, trust)
    if tokenizer is None:
        raise StageError(
            f"{teacher_dir} has no tokenizer: the cache is fingerprinted by the teacher's tokenizer",
            hint="re-run the import stage (it saves the tokenizer with the teacher)",
        )
    vocab = len(tokenizer)
    if top_k > vocab:
        raise StageError(
            f"distill.teacher_logits.top_k {top_k} exceeds the vocabulary ({vocab} tokens)",
            hint=f"use at most {vocab}",
        )
    windows = TokenWindows(root / layout.tokens_prefix("train"), cfg.seq_length)
    windows.require(1, "teacher_logits (train split)")
    samples = cfg.steps * cfg.global_batch_size
    ids = distill_windows(len(windows), samples, cfg.seed)
    fields = identity(windows, ids, tokenizer, vocab, cfg.seed, samples) if ctx.is_main else None
    bits = index_bits(vocab)

    target = root / layout.TEACHER_LOGITS_DIR
    partial = None
    if ctx.is_main:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.partial"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        partial = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    partial = Path(ctx.broadcast_object(partial))
    committed = False
    try:
        teacher_dtype = (
            torch.bfloat16 if cfg.bf16_autocast and ctx.device.type == "cuda" else torch.float32
        )
        teacher = load_model(
            teacher_dir, dtype=teacher_dtype, device=ctx.device, trust_remote_code=trust
        )
        teacher.requires_grad_(False)
        mine = ids[ctx.rank :: ctx.world_size]
        shard = write_shard(
            teacher,
            windows,
            mine,
            partial,
            ctx.rank,
            top_k=top_k,
            vocab=vocab,
            bits=bits,
            batch_size=cfg.micro_batch_size,
            autocast=cfg.bf16_autocast,
        )
        shards = gather_objects(ctx, shard)
        if ctx.is_main:
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "top_k": top_k,
                "index_bits": bits,
                "value_dtype": "bfloat16",
                "compression": f"zlib-{COMPRESSION_LEVEL}",
                **fields,
                "windows": len(ids),
                "tokens": len(ids) * cfg.seq_length,
                "teacher_dtype": str(teacher_dtype).removeprefix("torch."),
                "shards": sorted(shards, key=lambda s: s["file"]),
            }
            manifest["bytes"] = sum(s["bytes"] for s in manifest["shards"])
            manifest["bytes_per_token"] = manifest["bytes"] / max(1, manifest["tokens"])
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
            committed = True
            print(
                f"[teacher_logits] {len(ids)} windows × {cfg.seq_length} tokens, top {top_k}: "
                f"{manifest['bytes'] / 1e6:.1f} MB ({manifest['bytes_per_token']:.1f} bytes/token)",
                flush=True,
            )
        ctx.barrier()
    finally:
        if ctx.is_main and not committed:
            shutil.rmtree(partial, ignore_errors=True)


def gather_objects(ctx, value) -> list:
    if not ctx.enabled:
        return [value]
    import torch.distributed as dist

    out = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


@torch.no_grad()
def write_shard(
    teacher,
    windows: TokenWindows,
    ids: np.ndarray,
    directory: Path,
    rank: int,
    *,
    top_k: int,
    vocab: int,
    bits: int,
    batch_size: int,
    autocast: bool,
) -> dict:
    """Run the teacher over windows ``ids`` in batches; one record per window → this rank's shard."""
    from minispec.engines.torch.losses import default_chunk_tokens
    from minispec.engines.torch.sparse_kd import tail_logmass

    device = next(teacher.parameters()).device
    name = f"shard-{rank:05d}"
    digest = hashlib.sha256()
    table = np.zeros((len(ids), 3), dtype=np.int64)
    offset = 0
    chunk = default_chunk_tokens(vocab, device.type)
    started = time.perf_counter()
    with open(directory / f"{name}.bin", "wb") as handle:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            tokens = windows.batch(batch)[:, :-1].to(device)  # [B, L]
            context = (
                torch.autocast(device.type, dtype=torch.bfloat16) if autocast else _nullcontext()
            )
            with context:
                logits = teacher(input_ids=tokens, use_cache=False).logits  # [B, L, V_pad]
            flat = logits.reshape(-1, logits.shape[-1])
            values, indices, tails = [], [], []
            for first in range(0, flat.shape[0], chunk):
                logprobs = torch.log_softmax(flat[first : first + chunk, :vocab].float(), dim=-1)
                top_values, top_indices = logprobs.topk(top_k, dim=-1)
                values.append(top_values)
                indices.append(top_indices)
                tails.append(tail_logmass(logprobs, top_indices))
            length = tokens.shape[1]
            values = torch.cat(values).view(len(batch), length, top_k)
            indices = torch.cat(indices).view(len(batch), length, top_k)
            tails = torch.cat(tails).view(len(batch), length)
            for row, window in enumerate(batch):
                record = encode_window(indices[row], values[row], tails[row], bits)
                handle.write(record)
                digest.update(record)
                table[start + row] = (window, offset, len(record))
                offset += len(record)
            if rank == 0 and (start // batch_size) % 50 == 0:
                rate = (start + len(batch)) / max(time.perf_counter() - started, 1e-9)
                print(
                    f"[teacher_logits] {start + len(batch)}/{len(ids)} windows ({rate:.1f}/s)",
                    flush=True,
                )
        handle.flush()
        os.fsync(handle.fileno())
    np.save(directory / f"{name}.npy", table, allow_pickle=False)
    return {
        "file": f"{name}.bin",
        "index": f"{name}.npy",
        "windows": len(ids),
        "bytes": offset,
        "sha256": digest.hexdigest(),
    }


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def expected_identity(windows: TokenWindows, tokenizer, vocab_size: int, seed: int) -> dict:
    """The reading run's side of :meth:`TeacherLogits.verify` (``data_sha256`` is computed there)."""
    return {
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "vocab_size": int(vocab_size),
        "seq_length": int(windows.seq_length),
        "window_count": len(windows),
        "seed": int(seed),
    }


def open_for_training(
    spec: Spec, root: Path, cfg, train_windows: TokenWindows, tokenizer, vocab_size: int
):
    """The distill stage's cache, checked against the run that reads it (``cfg``: its TrainConfig)."""
    cache = TeacherLogits(root / layout.TEACHER_LOGITS_DIR)
    if tokenizer is None:
        raise StageError(
            f"{cfg.stage}: the student has no tokenizer to check against the cached teacher logits",
            hint="re-run the prune stage (it saves the tokenizer with the student)",
        )
    required = distill_windows(len(train_windows), cfg.steps * cfg.global_batch_size, cfg.seed)
    expected = expected_identity(train_windows, tokenizer, vocab_size, cfg.seed)
    cache.verify(expected, required, train_windows)
    if cache.top_k != spec.distill.teacher_logits.top_k:
        raise StageError(
            f"the teacher logits in {cache.directory} keep the top {cache.top_k}, but distill.teacher_logits.top_k is {spec.distill.teacher_logits.top_k}",
            hint="re-run the teacher_logits stage for this spec",
        )
    return cache
