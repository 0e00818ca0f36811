"""``data`` stage: the spec's corpus → ``data/jsonl/<split>.jsonl`` (+ ``metrics/data.json``).

Sources (``data.source``):

- ``hf://NAME[/CONFIG]`` or ``hf://ORG/NAME[/CONFIG]``: a Hugging Face dataset, loaded with
  ``datasets`` (downloaded once into the ``datasets`` cache, then read memory-mapped). Two parts
  mean NAME/CONFIG (``hf://wikitext/wikitext-103-v1``); when no dataset NAME exists they are read
  as ORG/NAME. Offline, the stage stops and says how to point ``data.source`` at local files.
- a local directory: files named after the splits (``train.jsonl``, ``valid.parquet``,
  ``test-00000-of-00002.parquet``, ...; aliases in :data:`SPLIT_ALIASES`);
- a local file (jsonl, json, parquet, txt, optionally ``.gz``): one split, so it needs
  ``data.split_ratio``.

``data.splits`` maps a split to a hub split name (slices such as ``train[:1%]`` work) or to files
/ globs relative to the source directory; splits it does not name are found by their names.
``data.split_ratio`` ("98,1,1") splits a single-split source over documents with ``spec.seed``:
the exact counts are fixed first (largest remainders), then a seeded permutation of split labels
(one byte per document) assigns every document, which keeps its original order inside its split.

Local files are read directly rather than through ``datasets``: line by line (or in Parquet
record batches), so memory stays flat, nothing is copied into a cache, and a bad record is
reported with its file and line. (A ``.json`` file holding one JSON array is the exception: it
is parsed whole; use JSON Lines or Parquet for large corpora.)

Output: one JSON object per line, ``{"text": ...}`` (``json.dumps`` defaults, the format of the
original tutorial's snippet with a real newline), every row kept exactly as the source has it,
empty rows included (WikiText's blank lines stay). The ``tokenize`` stage, like NeMo's
``preprocess_data_for_megatron.py``, drops rows whose text tokenizes to nothing.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minispec import layout
from minispec.errors import StageError
from minispec.fsio import atomic_dir, write_json_atomic
from minispec.sources import Source, local_path, parse_source

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}
COMPRESSED = {".gz"}  # jsonl, json and txt may be gzip-compressed
OFFLINE_HINT = (
    "point data.source at local files instead, e.g. `--set data.source=DIR` where DIR holds "
    'train.jsonl, validation.jsonl and test.jsonl (one {"text": ...} object per line); '
    "jsonl, json, parquet and txt files work"
)


# --------------------------------------------------------------------------------------------
# a split of the source: where its rows come from and how to read them


@dataclass
class SplitSource:
    """Rows of one source split: ``read()`` yields texts, ``count()`` the number of rows."""

    description: str  # for metrics and messages: "test.jsonl", "hub split 'train'", ...
    read: Callable[[], Iterator[str]]
    count: Callable[[], int]
    files: list[Path] = field(default_factory=list)


def run(spec, variant, root: Path) -> None:
    data = spec.data
    if data.splits and data.split_ratio:
        raise StageError("data.splits and data.split_ratio are exclusive", hint="keep one of them")
    source = parse_source(data.source)
    if source.kind == "hub":
        available = hub_splits(source, data)
    else:
        available = local_splits(resolve(local_path(source), root), data, root)
    _warn_shared_files(available)
    out = root / layout.DATA_DIR
    with atomic_dir(out) as tmp:
        if data.split_ratio:
            stats = write_ratio_split(available, data.split_ratio, spec.seed, tmp)
        else:
            stats = {
                split: write_split(available[split], tmp / f"{split}.jsonl", split)
                for split in layout.SPLITS
            }
    metrics = {
        "source": data.source,
        "text_field": data.text_field,
        "split_ratio": data.split_ratio,
        "seed": spec.seed if data.split_ratio else None,
        "splits": stats,
    }
    write_json_atomic(root / layout.metrics_path("data"), metrics)
    for split, s in stats.items():
        print(
            f"data: {split}: {s['rows']} rows, {s['characters']} characters ({s['from']})",
            file=sys.stderr,
        )


def resolve(path: Path, root: Path) -> Path:
    """Paths in params.yaml are relative to the pipeline root (the dvc.yaml directory)."""
    return path if path.is_absolute() else root / path


def _warn_shared_files(available: dict[str, SplitSource]) -> None:
    seen: dict[Path, str] = {}
    for split, src in available.items():
        for file in src.files:
            if file in seen and seen[file] != split:
                print(
                    f"warning: {file} feeds both the {seen[file]} and the {split} split",
                    file=sys.stderr,
                )
            seen.setdefault(file, split)


# --------------------------------------------------------------------------------------------
# writing


class JsonlSplitWriter:
    """Writes ``{"text": ...}`` lines and keeps rows, characters, bytes and the sha256."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.rows = self.empty_rows = self.characters = self.bytes = 0

    def write(self, text: str) -> None:
        line = (json.dumps({"text": text}) + "\n").encode(
            "ascii"
        )  # ASCII JSON, as json.dumps writes it
        self.handle.write(line)
        self.sha256.update(line)
        self.rows += 1
        self.empty_rows += not text
        self.characters += len(text)
        self.bytes += len(line)

    def close(self, description: str) -> dict:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return {
            "rows": self.rows,
            "empty_rows": self.empty_rows,
            "characters": self.characters,
            "bytes": self.bytes,
            "sha256": self.sha256.hexdigest(),
            "from": description,
        }


def write_split(src: SplitSource, path: Path, split: str) -> dict:
    writer = JsonlSplitWriter(path)
    for text in src.read():
        writer.write(text)
    stats = writer.close(src.description)
    if stats["rows"] == 0:
        raise StageError(
            f"the {split} split ({src.description}) is empty",
            hint="every split needs at least one document",
        )
    return stats


def write_ratio_split(available: dict[str, SplitSource], ratio: str, seed: int, out: Path) -> dict:
    """Split the source's only split by ``ratio`` (train,validation,test weights) over documents."""
    if len(available) != 1:
        names = ", ".join(sorted(available))
        raise StageError(
            f"data.split_ratio splits a single-split source, but the source has the splits {names}",
            hint="remove data.split_ratio to use the source's own splits, or point data.source at one file",
        )
    (src,) = available.values()
    total = src.count()
    counts = ratio_counts(ratio, total)
    for split, count in zip(layout.SPLITS, counts, strict=True):
        if count == 0:
            raise StageError(
                f"data.split_ratio '{ratio}' leaves the {split} split empty ({total} documents in {src.description})",
                hint="raise that split's weight or provide more documents",
            )
    labels = split_labels(counts, seed)
    writers = [JsonlSplitWriter(out / f"{split}.jsonl") for split in layout.SPLITS]
    rows = 0
    for rows, text in enumerate(src.read(), start=1):
        if rows > total:
            break
        writers[labels[rows - 1]].write(text)
    if rows != total:
        raise StageError(
            f"{src.description} changed while it was read ({total} rows counted, {rows} read)"
        )
    what = f"{ratio} split of {src.description}, seed {seed}"
    return {split: w.close(what) for split, w in zip(layout.SPLITS, writers, strict=True)}


def ratio_counts(ratio: str, total: int) -> list[int]:
    """Exact documents per split: floor of each share, the remainder to the largest fractions."""
    weights = np.array([float(part) for part in ratio.split(",")])
    if weights.sum() <= 0:
        raise StageError(f"data.split_ratio '{ratio}' has no positive weight")
    shares = weights / weights.sum() * total
    counts = np.floor(shares).astype(np.int64)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


def split_labels(counts: list[int], seed: int) -> np.ndarray:
    """A seeded permutation of split labels: one byte per document."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int8), counts)
    return np.random.Generator(np.random.PCG64(seed)).permutation(labels)


# --------------------------------------------------------------------------------------------
# local sources


def local_splits(path: Path, data, root: Path | None = None) -> dict[str, SplitSource]:
    """The splits of a local source; files are described relative to ``root`` (see local_split)."""
    if not path.exists():
        raise StageError(
            f"data.source {path} does not exist",
            hint="point data.source at a directory or a jsonl/json/parquet/txt file",
        )
    base = path if path.is_dir() else path.parent
    mapped = {
        split: files_of(base, pattern, split) for split, pattern in (data.splits or {}).items()
    }
    if path.is_file():
        found = mapped or {"train": [path]}
        if not mapped and not data.split_ratio:
            raise StageError(
                f"data.source {path} is a single file: one split",
                hint='split it by documents with data.split_ratio (e.g. "98,1,1"), or point data.source at a directory of split files',
            )
    else:
        found = {**splits_in_directory(path, exclude=set(mapped)), **mapped}
    missing = [s for s in layout.SPLITS if s not in found]
    if missing and not data.split_ratio:
        have = (
            "; ".join(f"{s}: {', '.join(f.name for f in files)}" for s, files in found.items())
            or "no split files"
        )
        raise StageError(
            f"no {' or '.join(missing)} split in {path} (found {have})",
            hint=f"add a file named {missing[0]}.jsonl (or .parquet, .json, .txt), map a file with "
            f"data.splits (e.g. --set data.splits.{missing[0]}=FILE), or split one file with data.split_ratio",
        )
    return {split: local_split(files, data.text_field, root) for split, files in found.items()}


def files_of(base: Path, pattern: str, split: str) -> list[Path]:
    """The files a ``data.splits`` entry names: a path or a glob relative to the source directory."""
    target = Path(pattern)
    full = target if target.is_absolute() else base / target
    files = sorted(Path(p) for p in glob.glob(str(full))) if glob.has_magic(str(full)) else [full]
    files = [f for f in files if f.is_file()]
    if not files:
        raise StageError(f"data.splits.{split}: '{pattern}' matches no file under {base}")
    for file in files:
        file_format(file)
    return files


def splits_in_directory(directory: Path, exclude: set[str] = frozenset()) -> dict[str, list[Path]]:
    """Files named ``<alias>.<ext>`` or ``<alias>-*.<ext>`` (shards) for each split."""
    by_alias: dict[str, dict[str, list[Path]]] = {split: {} for split in SPLIT_ALIASES}
    for file in sorted(directory.iterdir()):
        if not file.is_file() or _format_or_none(file) is None:
            continue
        stem = _stem(file).lower()
        for split, aliases in SPLIT_ALIASES.items():
            for alias in aliases:
                if stem == alias or (stem.startswith(alias) and stem[len(alias)] in "-_."):
                    by_alias[split].setdefault(alias, []).append(file)
    found = {}
    for split, groups in by_alias.items():
        if split in exclude or not groups:
            continue
        formats = {_format_or_none(f) for files in groups.values() for f in files}
        if len(groups) > 1 or len(formats) > 1:
            names = ", ".join(f.name for files in groups.values() for f in files)
            raise StageError(
                f"several candidates for the {split} split in {directory}: {names}",
                hint=f"choose with data.splits (e.g. --set data.splits.{split}=FILE)",
            )
        found[split] = next(iter(groups.values()))
    return found


def _stem(file: Path) -> str:
    name = file.name
    for suffix in (*COMPRESSED, *FORMATS):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _format_or_none(file: Path) -> str | None:
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None
    return FORMATS.get(suffixes[-1]) if suffixes else None


def file_format(file: Path) -> str:
    fmt = _format_or_none(file)
    if fmt is None:
        raise StageError(
            f"{file}: unsupported file type",
            hint="use .jsonl, .json, .parquet or .txt (jsonl/json/txt may be .gz)",
        )
    return fmt


def local_split(files: list[Path], text_field: str, root: Path | None = None) -> SplitSource:
    """``root``: the pipeline directory. Files are described relative to it, as params.yaml names
    the source, so the metrics of a copy of the pipeline (a reproduction elsewhere) are the same."""

    def read() -> Iterator[str]:
        for file in files:
            yield from READERS[file_format(file)](file, text_field)

    def count() -> int:
        return sum(COUNTERS[file_format(file)](file, text_field) for file in files)

    description = ", ".join(
        str(f) if root is None else Path(os.path.relpath(f, root)).as_posix() for f in files
    )
    return SplitSource(description, read, count, files)


def _open_binary(file: Path):
    return gzip.open(file, "rb") if file.suffix.lower() == ".gz" else open(file, "rb")


def _decode(raw: bytes, file: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StageError(
            f"{file}:{line}: invalid UTF-8 (byte {exc.start} of the line)",
            hint="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


def _text_of(record, file: Path, where: str, text_field: str) -> str:
    if not isinstance(record, dict):
        raise StageError(f"{file}:{where}: expected a JSON object, found {type(record).__name__}")
    if text_field not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise StageError(
            f"{file}:{where}: no field '{text_field}' (fields: {fields})",
            hint="set data.text_field to the field that holds the text",
        )
    return _check_text(record[text_field], file, where, text_field)


def _check_text(text, file: Path | str, where: str, text_field: str) -> str:
    if not isinstance(text, str):
        raise StageError(
            f"{file}:{where}: field '{text_field}' is {type(text).__name__ if text is not None else 'null'}, expected a string"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a "\udXXX" JSON escape
        raise StageError(
            f"{file}:{where}: field '{text_field}' holds invalid Unicode ({exc.reason} at character {exc.start})"
        ) from None
    return text


def read_jsonl(file: Path, text_field: str) -> Iterator[str]:
    with _open_binary(file) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines separate nothing in JSON Lines
            line = _decode(raw, file, number)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                truncated = (
                    not raw.endswith(b"\n") or "Unterminated" in exc.msg or "Expecting" in exc.msg
                )
                raise StageError(
                    f"{file}:{number}: invalid JSON ({exc.msg} at column {exc.colno})",
                    hint="the line looks truncated; regenerate or repair the file"
                    if truncated
                    else "each line must be one JSON object",
                ) from None
            yield _text_of(record, file, str(number), text_field)


def count_jsonl(file: Path, text_field: str) -> int:
    with _open_binary(file) as handle:
        return sum(1 for raw in handle if raw.strip())


def read_txt(file: Path, text_field: str) -> Iterator[str]:
    """One document per line (``datasets``' text loader without line breaks)."""
    with _open_binary(file) as handle:
        for number, raw in enumerate(handle, start=1):
            yield _decode(raw, file, number).rstrip("\r\n")


def count_txt(file: Path, text_field: str) -> int:
    with _open_binary(file) as handle:
        return sum(1 for _ in handle)


def _json_records(file: Path, text_field: str) -> list | None:
    """Records of a ``.json`` file that is one array (or ``{"data": [...]}``); None for JSON Lines."""
    with _open_binary(file) as handle:
        first_line = handle.readline()
        while first_line and not first_line.strip():
            first_line = handle.readline()
    if not first_line.lstrip().startswith((b"[", b"{")):
        return None  # the JSON Lines reader reports what is wrong, with the line
    try:
        first = json.loads(first_line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        first = None  # a document spread over several lines
    else:
        if not _is_data_wrapper(first, text_field) and not isinstance(first, list):
            return None  # the first line is a complete record: JSON Lines
    with _open_binary(file) as handle:
        text = _decode_whole(handle.read(), file)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if first is not None or exc.msg == "Extra data":
            return None  # several values: JSON Lines after all
        raise StageError(
            f"{file}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})",
            hint="the file looks truncated or malformed",
        ) from None
    if _is_data_wrapper(document, text_field):
        document = document["data"]
    if not isinstance(document, list):
        raise StageError(
            f'{file}: expected JSON Lines, a JSON array of records or {{"data": [...]}}'
        )
    return document


def _is_data_wrapper(value, text_field: str) -> bool:
    return (
        isinstance(value, dict) and isinstance(value.get("data"), list) and text_field not in value
    )


def _decode_whole(raw: bytes, file: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise StageError(
            f"{file}:{line}: invalid UTF-8", hint="re-encode the file as UTF-8"
        ) from None


def read_json(file: Path, text_field: str) -> Iterator[str]:
    records = _json_records(file, text_field)
    if records is None:
        yield from read_jsonl(file, text_field)
        return
    for index, record in enumerate(records):
        yield _text_of(record, file, f"record {index}", text_field)


def count_json(file: Path, text_field: str) -> int:
    records = _json_records(file, text_field)
    return count_jsonl(file, text_field) if records is None else len(records)


def _parquet_file(file: Path, text_field: str):
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for damaged files
        raise StageError(f"{file}: not a readable Parquet file ({exc})") from None
    if text_field not in parquet.schema_arrow.names:
        raise StageError(
            f"{file}: no column '{text_field}' (columns: {', '.join(parquet.schema_arrow.names)})",
            hint="set data.text_field to the column that holds the text",
        )
    return parquet


def read_parquet(file: Path, text_field: str) -> Iterator[str]:
    parquet = _parquet_file(file, text_field)
    row = 0
    try:
        for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                yield _check_text(text, file, f"row {row}", text_field)
                row += 1
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"{file}: damaged Parquet data after row {row} ({exc})") from None


def count_parquet(file: Path, text_field: str) -> int:
    return _parquet_file(file, text_field).metadata.num_rows


READERS = {"jsonl": read_jsonl, "json": read_json, "parquet": read_parquet, "txt": read_txt}
COUNTERS = {"jsonl": count_jsonl, "json": count_json, "parquet": count_parquet, "txt": count_txt}


# --------------------------------------------------------------------------------------------
# Hugging Face Hub


def hub_splits(source: Source, data) -> dict[str, SplitSource]:
    """The hub dataset's splits under minispec's names (``data.splits`` maps hub split names)."""
    parts = source.repo.split("/")
    if len(parts) > 3:
        raise StageError(
            f"data.source '{source.text}' is not hf://NAME[/CONFIG] or hf://ORG/NAME[/CONFIG]"
        )
    candidates = [(source.repo, None)] if len(parts) == 1 else []
    if len(parts) == 2:
        candidates = [(parts[0], parts[1]), (source.repo, None)]  # NAME/CONFIG first, else ORG/NAME
    if len(parts) == 3:
        candidates = [("/".join(parts[:2]), parts[2])]
    path, config, names = _hub_split_names(source, candidates)
    mapping = dict(data.splits or {})
    if data.split_ratio:
        chosen = {"train": names[0]} if len(names) == 1 else {name: name for name in names}
    else:
        chosen = {}
        for split in layout.SPLITS:
            if split in mapping:
                chosen[split] = mapping[split]
                continue
            match = [n for n in names if n.lower() in SPLIT_ALIASES[split]]
            if not match:
                raise StageError(
                    f"dataset '{path}'{f' ({config})' if config else ''} has no {split} split (splits: {', '.join(names)})",
                    hint=f"map one with data.splits (e.g. --set data.splits.{split}=NAME, slices like 'train[:1%]' work) or use data.split_ratio",
                )
            chosen[split] = match[0]
    return {
        split: _hub_split(path, config, hub_name, data.text_field)
        for split, hub_name in chosen.items()
    }


def _hub_split_names(
    source: Source, candidates: list[tuple[str, str | None]]
) -> tuple[str, str | None, list[str]]:
    import datasets

    last: Exception | None = None
    for path, config in candidates:
        try:
            return path, config, list(datasets.get_dataset_split_names(path, config))
        except Exception as exc:  # datasets raises many types; classify below
            _raise_if_offline(exc, source.text)
            if type(exc).__name__ != "DatasetNotFoundError":
                raise _hub_error(exc, source.text) from None
            last = exc
    raise StageError(
        f"dataset {source.text} not found on the Hugging Face Hub ({last})",
        hint="check the name; write hf://NAME/CONFIG or hf://ORG/NAME/CONFIG",
    )


def _hub_split(path: str, config: str | None, split: str, text_field: str) -> SplitSource:
    loaded = {}

    def dataset():
        if "ds" not in loaded:
            import datasets

            try:
                loaded["ds"] = datasets.load_dataset(path, config, split=split)
            except Exception as exc:
                _raise_if_offline(exc, f"hf://{path}{'/' + config if config else ''}")
                raise _hub_error(exc, f"hf://{path} split '{split}'") from None
            if text_field not in loaded["ds"].column_names:
                raise StageError(
                    f"dataset {path} split '{split}' has no column '{text_field}' (columns: {', '.join(loaded['ds'].column_names)})",
                    hint="set data.text_field to the column that holds the text",
                )
        return loaded["ds"]

    def read() -> Iterator[str]:
        row = 0
        for batch in dataset().select_columns([text_field]).iter(batch_size=1024):
            for text in batch[text_field]:
                yield _check_text(text, f"hf://{path}", f"split '{split}' row {row}", text_field)
                row += 1

    return SplitSource(
        f"hub split '{split}' of {path}{' (' + config + ')' if config else ''}",
        read,
        lambda: len(dataset()),
    )


def _raise_if_offline(exc: BaseException, what: str) -> None:
    """Turn "the hub is unreachable" (offline mode or no network) into the error users can act on."""
    offline_env = [
        v
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
    ]
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    connection = (
        any(isinstance(e, ConnectionError) for e in chain)
        or names
        & {
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "ConnectError",
            "ConnectTimeout",
            "ConnectionError",
            "Timeout",
        }
        or "Couldn't reach" in text
        or "couldn't connect" in text.lower()
    )
    if connection:
        why = (
            f"{' and '.join(offline_env)} {'is' if len(offline_env) == 1 else 'are'} set"
            if offline_env
            else "no connection"
        )
        raise StageError(
            f"cannot reach the Hugging Face Hub to load {what} ({why})", hint=OFFLINE_HINT
        ) from None


def _hub_error(exc: BaseException, what: str) -> StageError:
    message = " ".join(str(exc).split())
    if "Config name is missing" in message or "BuilderConfig" in message:
        return StageError(f"{what}: {message}", hint="name the config: hf://NAME/CONFIG")
    return StageError(f"cannot load {what}: {type(exc).__name__}: {message}")
