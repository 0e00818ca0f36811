"""DVC's own hashes, recomputed without DVC, so a bundle can be checked against its ``dvc.lock``.

What DVC 3 records (``dvc_data.hashfile``):

- a file out: ``md5`` of its bytes (``hash: md5`` in dvc.lock). Outs written by DVC 2.x carry no
  ``hash:`` key and use ``md5-dos2unix``: DVC reads the file in 1 MiB chunks and replaces CRLF
  by LF in every chunk whose first 512 bytes look like text (``istextblock``) before hashing.
- a directory out: ``md5`` of the JSON listing
  ``json.dumps(sorted([{"md5": <file md5>, "relpath": "a/b"}, ...], key=relpath), sort_keys=True)``
  followed by ``.dir`` (``Tree.digest``; ``relpath`` uses ``/``). DVC skips ``.git``, ``.hg``
  and ``.dvc`` while walking. The listing itself is stored in DVC's cache under that md5, which
  is how a changed file inside a directory can be named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

DVC_CHUNK = 1 << 20  # dvc_data.hashfile.hash.fobj_md5 chunk_size
TEXT_BLOCK = 512  # dvc_data.hashfile.istextfile.DEFAULT_CHUNK_SIZE
TEXT_CHARS = bytes(range(32, 127)) + b"\n\r\t\f\b"
DIR_SUFFIX = ".dir"
IGNORED_NAMES = {".git", ".hg", ".dvc"}  # DvcIgnoreFilter's default patterns


def istextblock(block: bytes) -> bool:
    """``dvc_data.hashfile.istextfile.istextblock``: at most 30 % non-text bytes and no NUL."""
    if not block:
        return True
    if b"\x00" in block:
        return False
    return len(block.translate(None, TEXT_CHARS)) / len(block) <= 0.30


class Hasher:
    """sha256 and DVC's md5 (and the legacy md5-dos2unix) of one stream, fed in any chunk sizes.

    Input is re-cut into DVC's 1 MiB blocks, because the dos2unix heuristic is per block.
    """

    def __init__(self, legacy: bool = False):
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.md5_dos2unix = hashlib.md5(usedforsecurity=False) if legacy else None
        self.size = 0
        self._pending = bytearray()

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.md5.update(data)
        self.size += len(data)
        if self.md5_dos2unix is not None:
            self._pending += data
            while len(self._pending) >= DVC_CHUNK:
                self._legacy_block(bytes(self._pending[:DVC_CHUNK]))
                del self._pending[:DVC_CHUNK]

    def _legacy_block(self, block: bytes) -> None:
        text = istextblock(block[:TEXT_BLOCK])
        self.md5_dos2unix.update(block.replace(b"\r\n", b"\n") if text else block)

    def digest(self) -> FileDigest:
        legacy = None
        if self.md5_dos2unix is not None:
            if self._pending:
                self._legacy_block(bytes(self._pending))
                self._pending.clear()
            legacy = self.md5_dos2unix.hexdigest()
        return FileDigest(self.sha256.hexdigest(), self.md5.hexdigest(), legacy, self.size)


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    md5: str
    md5_dos2unix: str | None
    size: int

    def dvc_md5(self, hash_name: str) -> str:
        if hash_name == "md5-dos2unix":
            assert self.md5_dos2unix is not None, "hash with legacy=True for DVC 2.x outs"
            return self.md5_dos2unix
        return self.md5


class HashingReader:
    """Wraps a binary file so that everything read from it is also hashed (one pass over data)."""

    def __init__(self, handle: BinaryIO, hasher: Hasher):
        self.handle, self.hasher = handle, hasher

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.hasher.update(data)
        return data


def hash_stream(handle: BinaryIO, legacy: bool = False) -> FileDigest:
    hasher = Hasher(legacy)
    while chunk := handle.read(DVC_CHUNK):
        hasher.update(chunk)
    return hasher.digest()


def hash_file(path: Path, legacy: bool = False) -> FileDigest:
    with open(path, "rb") as handle:
        return hash_stream(handle, legacy)


def dir_listing(md5_by_relpath: dict[str, str]) -> bytes:
    """The bytes DVC hashes for a directory (``Tree.as_bytes()``)."""
    entries = [{"md5": md5_by_relpath[rel], "relpath": rel} for rel in sorted(md5_by_relpath)]
    return json.dumps(entries, sort_keys=True).encode("utf-8")


def dir_entry_md5s(entry: LockEntry, digests: dict[str, FileDigest]) -> dict[str, str]:
    """DVC md5 of every file under the directory out ``entry``, keyed by its path inside it.

    ``digests`` maps pipeline-relative paths to their digests; the md5 is the flavour the
    entry's ``hash_name`` asks for.
    """
    prefix = entry.path + "/"
    return {
        rel[len(prefix) :]: digest.dvc_md5(entry.hash_name)
        for rel, digest in digests.items()
        if rel.startswith(prefix)
    }


def dir_md5(md5_by_relpath: dict[str, str]) -> str:
    return hashlib.md5(dir_listing(md5_by_relpath), usedforsecurity=False).hexdigest() + DIR_SUFFIX


def parse_listing(data: bytes) -> dict[str, str]:
    """A ``.dir`` listing (from DVC's cache or a bundle) as ``{relpath: md5}``."""
    entries = json.loads(data)
    if not isinstance(entries, list):
        raise ValueError("a .dir listing is a JSON list")
    return {
        e["relpath"]: e["md5"]
        for e in entries
        if isinstance(e, dict) and "relpath" in e and "md5" in e
    }


def walk_dir(path: Path) -> list[str]:
    """Files below ``path`` as DVC collects them (``/``-separated relpaths, DVC's ignores)."""
    found = []
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path)
        if IGNORED_NAMES & set(rel.parts):
            continue
        if item.is_file():
            found.append(rel.as_posix())
    return found


# ---- dvc.lock -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockEntry:
    """One out (or dep) of a stage in ``dvc.lock``."""

    stage: str
    path: str  # relative to the dvc.yaml directory, ``/``-separated
    md5: str | None
    hash_name: str  # md5 | md5-dos2unix
    nfiles: int | None = None

    @property
    def is_dir(self) -> bool:
        return bool(self.md5 and self.md5.endswith(DIR_SUFFIX))


@dataclass
class Lock:
    outs: list[LockEntry] = field(default_factory=list)
    deps: list[LockEntry] = field(default_factory=list)

    @property
    def needs_legacy(self) -> bool:
        return any(e.hash_name == "md5-dos2unix" for e in self.outs + self.deps)

    def out_for(self, relpath: str) -> LockEntry | None:
        """The out that ``relpath`` is (a file out) or lies in (a directory out)."""
        for entry in self.outs:
            if relpath == entry.path or relpath.startswith(entry.path.rstrip("/") + "/"):
                return entry
        return None

    def source_deps(self) -> list[LockEntry]:
        """Deps no stage produces: the pipeline's inputs (scripts, local data), one per path."""
        produced = [o.path for o in self.outs]
        seen: dict[str, LockEntry] = {}
        for dep in self.deps:
            inside_out = any(
                dep.path == p or dep.path.startswith(p.rstrip("/") + "/") for p in produced
            )
            if not inside_out and dep.path not in seen:
                seen[dep.path] = dep
        return list(seen.values())


def read_lock(text: str) -> Lock:
    """Parse ``dvc.lock`` (schema 2.0, YAML, safe loader)."""
    from ruamel.yaml import YAML

    raw = YAML(typ="safe", pure=True).load(text) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("stages", {}), dict):
        raise ValueError("not a dvc.lock (expected a mapping with 'stages')")
    lock = Lock()
    for stage, body in sorted(raw.get("stages", {}).items()):
        if not isinstance(body, dict):
            continue
        for kind, target in (("outs", lock.outs), ("deps", lock.deps)):
            for item in body.get(kind) or []:
                if isinstance(item, dict) and isinstance(item.get("path"), str):
                    target.append(_entry(stage, item))
    return lock


def _entry(stage: str, item: dict[str, Any]) -> LockEntry:
    # DVC 3 writes ``hash: md5``; an entry without it was written by DVC 2.x (md5-dos2unix)
    hash_name = "md5" if item.get("hash") == "md5" else "md5-dos2unix"
    path = item["path"].replace("\\", "/").rstrip("/")
    md5, nfiles = item.get("md5"), item.get("nfiles")
    if md5 is not None and not isinstance(md5, str):  # DVC writes hex strings; YAML may not
        raise ValueError(f"stage '{stage}', {path}: md5 {md5!r} is not a hex string")
    if nfiles is not None and (not isinstance(nfiles, int) or isinstance(nfiles, bool)):
        raise ValueError(f"stage '{stage}', {path}: nfiles {nfiles!r} is not a count")
    return LockEntry(stage, path, md5, hash_name, nfiles)
