"""The teacher's shapes for lint, read without ever touching weights or the network.

- a local Hugging Face directory → its ``config.json``;
- a local or ``pkg://`` ``.gguf`` file → the GGUF metadata (``llama.block_count``, ...): only the
  file's header is parsed, here, by :func:`read_gguf_metadata`;
- ``hf://ORG/NAME`` → the ``config.json`` of the hub cache on this machine if the model was
  downloaded before; else nothing (lint never goes online) and the rules that need the shapes
  are skipped, which :func:`minispec.spec.rules.teacher_source` reports once.

Why not ``gguf.GGUFReader``: it decodes every metadata array, and a GGUF carries its whole
vocabulary and merge list (about 100,000 strings for SmolLM2): 1.5 s on this machine, three
times lint's start-up budget. The header walk below skips arrays by length and reads the same
values (a test compares the two on the real SmolLM2 GGUF) in a few milliseconds.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minispec.errors import MinispecError
from minispec.shapes import ModelShapes
from minispec.sources import Source, parse_source

HUB_REPO_PATTERN = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class TeacherInfo:
    """The outcome of looking at ``teacher.source``: shapes, or why there are none."""

    shapes: ModelShapes | None = None
    error: MinispecError | None = None  # the source is unusable: lint reports an error
    offline_hub: str | None = None  # a hub id whose config is not on this machine
    missing_package: str | None = None  # pkg:// of a package not installed here


def teacher_info(source_text: str, revision: str | None = None) -> TeacherInfo:
    """Look at a (loaded, so absolute) ``teacher.source``; never raises for a bad source."""
    try:
        source = parse_source(source_text)
        if source.kind == "hub":
            return _hub_info(source, revision)
        if source.kind == "package" and not _installed(source.package):
            # like a hub model not downloaded yet: this machine lacks it, the spec may be right
            return TeacherInfo(missing_package=source.package)
        from minispec.sources import local_path

        path = local_path(source)
        assert path is not None
        return TeacherInfo(shapes=local_shapes(path))
    except MinispecError as exc:
        return TeacherInfo(error=exc)


def _installed(package: str | None) -> bool:
    import importlib.util

    try:
        return bool(package) and importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def local_shapes(path: Path) -> ModelShapes:
    """Shapes of a local HF directory or GGUF file; MinispecError says what is wrong with it."""
    if not path.exists():
        raise MinispecError(
            f"teacher not found: {path}",
            hint="point teacher.source at a Hugging Face model directory, a .gguf file, pkg://PACKAGE/FILE or hf://ORG/NAME",
        )
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise MinispecError(
                f"{path} has no config.json, so it is not a Hugging Face model directory",
                hint="point teacher.source at the directory save_pretrained wrote, or at a .gguf file",
            )
        return config_shapes(config, f"config.json in {shown_path(path)}")
    if path.suffix.lower() == ".gguf":
        return gguf_shapes(path)
    raise MinispecError(
        f"{path} is neither a model directory nor a .gguf file",
        hint="teacher.source takes a Hugging Face model directory (with config.json), a .gguf file, pkg://PACKAGE/FILE or hf://ORG/NAME",
    )


def shown_path(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it (shorter messages)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Hugging Face config.json


def config_shapes(config: Path, origin: str) -> ModelShapes:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MinispecError(f"cannot read {config}: {exc}") from None
    if not isinstance(data, dict):
        raise MinispecError(f"{config} does not hold a JSON object")
    return ModelShapes.from_hf_config(data, origin)


def _hub_info(source: Source, revision: str | None) -> TeacherInfo:
    repo = source.repo or ""
    if not HUB_REPO_PATTERN.match(repo) or "--" in repo or ".." in repo:
        raise MinispecError(
            f"'{source.text}' is not a valid hub model id",
            hint="write hf://ORG/NAME, e.g. hf://meta-llama/Llama-3.1-8B",
        )
    config = hub_cache_config(repo, revision)
    if config is not None:
        return TeacherInfo(
            shapes=config_shapes(config, f"config.json in the local hub cache ({config.parent})")
        )
    return TeacherInfo(offline_hub=repo)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_cache_config(repo: str, revision: str | None) -> Path | None:
    """``config.json`` of ``repo`` at ``revision`` in the local hub cache, if it was downloaded."""
    model_dir = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    revision = revision or "main"
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None
    if commit is None:
        ref = model_dir / "refs" / revision
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except OSError:
            return None
    config = model_dir / "snapshots" / commit / "config.json"
    return config if config.is_file() else None


# --------------------------------------------------------------------------------------------
# GGUF metadata


class GGUFArray:
    """A metadata array, described but not decoded."""

    def __init__(self, value_type: int, count: int):
        self.value_type = value_type
        self.count = count

    def __repr__(self) -> str:
        return f"GGUFArray(type={self.value_type}, count={self.count})"


# GGUF value types (ggml's gguf.h / the gguf package's GGUFValueType) → struct format
_SCALAR_FORMATS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
# far above real files (a vocabulary is 32k-262k strings, a header some dozens of keys), far
# below what takes long to walk: a header may declare any count over a sparse file
MAX_GGUF_STRINGS = 1 << 22
MAX_GGUF_KEYS = 1 << 16


class _Cursor:
    def __init__(self, buffer: Any, order: str):
        self.buffer = buffer
        self.order = order
        self.offset = 0

    def take(self, fmt: str) -> Any:
        fmt = self.order + fmt
        value = struct.unpack_from(fmt, self.buffer, self.offset)[0]
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("Q")
        self._need(length)
        raw = bytes(self.buffer[self.offset : self.offset + length])
        self.offset += length
        return raw.decode("utf-8", errors="replace")

    def skip(self, length: int) -> None:
        self._need(length)
        self.offset += length

    def _need(self, length: int) -> None:
        if length > len(self.buffer) - self.offset:
            raise struct.error("truncated")


def read_gguf_metadata(
    path: str | os.PathLike[str], tensor_names: list[str] | None = None
) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (v2 or v3); arrays as :class:`GGUFArray`.

    Only the header is read (memory-mapped), never the tensors. A ``tensor_names`` list is
    filled with the names in the tensor index that follows the metadata (left empty when that
    index is unreadable).
    """
    path = Path(path)
    try:
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
        ):
            return _parse_gguf(memoryview(buffer), path, tensor_names)
    except ValueError as exc:  # mmap of an empty file
        raise MinispecError(f"{path} is not a GGUF file ({exc})") from None
    except OSError as exc:
        raise MinispecError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_gguf(
    buffer: memoryview, path: Path, tensor_names: list[str] | None = None
) -> dict[str, Any]:
    try:
        if bytes(buffer[:4]) != b"GGUF":
            raise MinispecError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        order = "<"
        version = struct.unpack_from("<I", buffer, 4)[0]
        if version & 0xFFFF == 0:  # a big-endian file read as little-endian
            order, version = ">", struct.unpack_from(">I", buffer, 4)[0]
        if version not in (2, 3):
            raise MinispecError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        cursor = _Cursor(buffer, order)
        cursor.offset = 8
        tensor_count = cursor.take("Q")
        kv_count = cursor.take("Q")
        if kv_count > MAX_GGUF_KEYS:
            raise _BadValueType(
                f"{kv_count:,} metadata keys declared (more than {MAX_GGUF_KEYS:,})"
            )
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = cursor.string()
            metadata[key] = _gguf_value(cursor, cursor.take("I"))
        if tensor_names is not None:
            _read_tensor_names(cursor, tensor_count, tensor_names)
        return metadata
    except (struct.error, _BadValueType) as exc:
        raise MinispecError(
            f"{path} is not a readable GGUF file (truncated or corrupt header: {exc})"
        ) from None
    finally:
        buffer.release()


class _BadValueType(Exception):
    pass


def _read_tensor_names(cursor: _Cursor, count: int, names: list[str]) -> None:
    """Each tensor info: name, n_dims (u32), n_dims × u64 dims, type (u32), offset (u64)."""
    found = []
    try:
        for _ in range(count):
            found.append(cursor.string())
            cursor.skip(8 * cursor.take("I"))
            cursor.take("I")
            cursor.take("Q")
    except struct.error:
        return
    names.extend(found)


def _gguf_value(cursor: _Cursor, value_type: int) -> Any:
    if value_type in _SCALAR_FORMATS:
        return cursor.take(_SCALAR_FORMATS[value_type])
    if value_type == _STRING:
        return cursor.string()
    if value_type == _ARRAY:
        item_type, count = cursor.take("I"), cursor.take("Q")
        if item_type in _SCALAR_FORMATS:
            cursor.skip(count * struct.calcsize(_SCALAR_FORMATS[item_type]))
        elif item_type == _STRING:
            # each string has at least its 8-byte length: refuse absurd counts before looping
            # (a sparse file holds any number of bytes, so cap the count itself too)
            if count > MAX_GGUF_STRINGS:
                raise _BadValueType(
                    f"a string array declares {count:,} entries (more than {MAX_GGUF_STRINGS:,})"
                )
            cursor._need(count * 8)
            cursor.offset = _skip_strings(cursor.buffer, cursor.offset, count, cursor.order)
        else:
            raise _BadValueType(f"array of value type {item_type}")
        return GGUFArray(item_type, count)
    raise _BadValueType(f"value type {value_type}")


def _skip_strings(buffer: Any, offset: int, count: int, order: str) -> int:
    """Offset after ``count`` length-prefixed strings (the hot loop: a vocabulary is ~50k)."""
    unpack = struct.Struct(order + "Q").unpack_from
    end = len(buffer)
    for _ in range(count):
        offset += 8 + unpack(buffer, offset)[0]
        if offset > end:
            raise struct.error("truncated")
    return offset


def gguf_shapes(path: Path) -> ModelShapes:
    tensors: list[str] = []
    meta = read_gguf_metadata(path, tensors)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise MinispecError(f"{path}: GGUF metadata has no general.architecture")

    # per-layer KV head counts (an array) vary by layer: no single number to check against
    per_layer_kv = isinstance(meta.get(f"{arch}.attention.head_count_kv"), GGUFArray)
    tokens = meta.get("tokenizer.ggml.tokens")
    return ModelShapes.from_gguf(
        meta,
        tensors,
        f"GGUF metadata of {path.name}",
        per_layer_kv=per_layer_kv,
        token_count=tokens.count if isinstance(tokens, GGUFArray) else None,
    )
