"""Atomic file and directory writes: an output appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _default_mode(directory: bool) -> int:
    """Permissions a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp create 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), _default_mode(directory=False))
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (e.g. safetensors);
    it is renamed onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.fchmod(fd, _default_mode(directory=False))  # not mkstemp's 0600
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` only if the block succeeds.

    On failure the temporary directory is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        os.chmod(tmp, _default_mode(directory=True))
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- metrics files: numbers for DVC, everything else beside them --------------------------------


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def split_metrics(data: dict, settings: frozenset[str] = frozenset()) -> tuple[dict, dict]:
    """``(numbers, info)``: finite numbers (nested dicts kept) for ``dvc metrics``; strings,
    lists, None, booleans and the keys named in ``settings`` (values that repeat params, such as
    batch sizes) for the info file. Empty objects are dropped from either side."""
    numbers: dict = {}
    info: dict = {}
    for key, value in data.items():
        if key in settings:
            info[key] = value
        elif isinstance(value, dict):
            inner_numbers, inner_info = split_metrics(value, settings)
            if inner_numbers:
                numbers[key] = inner_numbers
            if inner_info:
                info[key] = inner_info
        elif _is_number(value):
            numbers[key] = value
        else:
            info[key] = value
    return numbers, info


def write_metrics(
    root: str | os.PathLike[str], stage: str, data: dict, settings: frozenset[str] = frozenset()
) -> None:
    """Write a stage's record as ``layout.metrics_path`` (numbers only: `dvc metrics show PATH`
    reads it, though only ``layout.SUMMARY_METRICS`` is declared a DVC metric) and
    ``layout.info_path`` (settings and provenance, not a metric); the info file first, so a
    metrics file never exists without its explanation."""
    from minispec import layout

    numbers, info = split_metrics(data, settings)
    write_json_atomic(Path(root) / layout.info_path(stage), info)
    write_json_atomic(Path(root) / layout.metrics_path(stage), numbers)


def merge_records(numbers: Any, info: Any) -> Any:
    """The stage's whole record again: ``info`` laid over ``numbers`` (nested dicts merged)."""
    if not isinstance(numbers, dict) or not isinstance(info, dict):
        return info if info is not None else numbers
    merged = dict(numbers)
    for key, value in info.items():
        merged[key] = merge_records(merged.get(key), value)
    return merged


def read_metrics_record(root: str | os.PathLike[str], stage: str) -> dict:
    """A stage's metrics and its info file merged (either may be missing: older runs, nemo)."""
    from minispec import layout

    record: Any = {}
    for rel in (layout.metrics_path(stage), layout.info_path(stage)):
        path = Path(root) / rel
        if path.is_file():
            record = merge_records(record, json.loads(path.read_text(encoding="utf-8")))
    return record if isinstance(record, dict) else {}
