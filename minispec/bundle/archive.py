"""Reading and writing bundle archives (tar.gz) without trusting their content.

Writing is deterministic: members in a fixed order, no owner names, fixed mode and mtime, and a
gzip header without name or time, so the same files give the same bytes.

Reading checks every member before anything touches the disk: a bundle holds regular files
and directories with relative, normalized names, each named once. Absolute names, ``..``,
symbolic and hard links (inside or out), device files, FIFOs and duplicate members are refused
with the member named. Extraction then goes through ``tarfile``'s ``data`` filter as a second
guard and writes only below the target directory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from minispec.errors import MinispecError

CHUNK = 1 << 20
DEFAULT_SIZE_CAP = 256 << 30  # uncompressed bytes; an 8B model bundle with artifacts is ~50 GiB
MAX_MEMBERS = 1_000_000
MTIME = 0  # members' mtime: the epoch, so archives do not depend on when files were written


class BundleError(MinispecError):
    """A bundle cannot be written, read, verified or reproduced."""


class UnsafeArchiveError(BundleError):
    """An archive member that could write outside the target or is not a plain file."""


# ---- reading --------------------------------------------------------------------------------


def check_member(member: tarfile.TarInfo, seen: set[str]) -> str:
    """The member's normalized name, or :class:`UnsafeArchiveError` saying why it is refused."""
    name = member.name
    shown = repr(name)
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"archive member {shown}: empty or NUL in name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or name.startswith("\\"):
        raise UnsafeArchiveError(
            f"archive member {shown}: absolute path", hint="bundles hold only relative paths"
        )
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(
            f"archive member {shown}: '..' in path would write outside the target"
        )
    normalized = posixpath.normpath(name)
    if normalized in (".", ""):
        if member.isdir():
            return "."
        raise UnsafeArchiveError(f"archive member {shown}: not a file name")
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        target = member.linkname
        base = posixpath.dirname(normalized) if member.issym() else ""  # hard links name members
        resolved = posixpath.normpath(posixpath.join(base, target))
        outside = target.startswith("/") or resolved == ".." or resolved.startswith("../")
        where = "points outside the bundle" if outside else "bundles hold no links"
        raise UnsafeArchiveError(f"archive member {shown}: {kind} to {target!r} ({where})")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchiveError(f"archive member {shown}: device file or FIFO")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {shown}: unsupported member type {member.type!r}")
    if normalized in seen:
        raise UnsafeArchiveError(
            f"archive member {shown}: duplicate member (a later copy would silently replace the first)"
        )
    _check_nesting(normalized, member, seen, shown)
    seen.add(normalized)
    return normalized


# markers in ``seen`` (NUL never occurs in an accepted name): a file member, a directory that
# some member lies below
_FILE, _PARENT = "\x00f:", "\x00d:"


def _check_nesting(normalized: str, member: tarfile.TarInfo, seen: set[str], shown: str) -> None:
    """A member below a file member (or a file where members already lie below) cannot be
    extracted: refuse it, instead of failing half-way through an extraction."""
    parts = normalized.split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        if _FILE + parent in seen:
            raise UnsafeArchiveError(
                f"archive member {shown}: lies below the file member {parent!r}",
                hint="a bundle's members form one directory tree; this archive was not written by minispec",
            )
        seen.add(_PARENT + parent)
    if member.isfile():
        if _PARENT + normalized in seen:
            raise UnsafeArchiveError(
                f"archive member {shown}: a file where other members lie below a directory of that name"
            )
        seen.add(_FILE + normalized)


def size_cap() -> int:
    """The most bytes a bundle may unpack to: MINISPEC_BUNDLE_MAX_BYTES, default 256 GiB."""
    text = os.environ.get("MINISPEC_BUNDLE_MAX_BYTES", "")
    return int(text) if text.isdigit() else DEFAULT_SIZE_CAP


def check_total(total: int, count: int, shown: str) -> None:
    """Refuse an archive whose declared sizes (tar headers, read before any data) pass the cap."""
    cap = size_cap()
    if total > cap:
        raise UnsafeArchiveError(
            f"archive member {shown}: the members so far unpack to {total:,} bytes, over the cap of {cap:,}",
            hint="a bundle larger than this is refused as a decompression bomb; raise MINISPEC_BUNDLE_MAX_BYTES if it is genuine",
        )
    if count > MAX_MEMBERS:
        raise UnsafeArchiveError(
            f"archive member {shown}: more than {MAX_MEMBERS:,} members",
            hint="bundles of minispec runs hold far fewer files; this archive is refused",
        )


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[tuple[tarfile.TarFile, gzip.GzipFile]]:
    """A streaming tar reader (one pass) over our own gzip reader, which checks the CRC at the end."""
    if not Path(path).is_file():
        raise BundleError(f"{path}: no such bundle file")
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path}: not a readable tar.gz bundle ({exc})") from None
        with tar:
            yield tar, stream


def iter_members(path: Path) -> Iterator[tuple[str, tarfile.TarInfo, BinaryIO | None]]:
    """``(normalized name, member, file object or None for directories)`` after the safety checks.

    Corrupt data is reported with the member being read when it showed up.
    """
    seen: set[str] = set()
    where = "in the archive header"
    total = count = 0
    with open_archive(path) as (tar, stream):
        try:
            for member in tar:
                where = f"at or after member {member.name!r}"
                name = check_member(member, seen)
                total, count = total + member.size, count + 1
                check_total(total, count, repr(member.name))
                yield name, member, tar.extractfile(member) if member.isfile() else None
            # read to the end of the gzip stream so its CRC is checked: tarfile stops at the
            # first block that is not a header, which would hide corruption after it
            where = f"at the end of the archive, after {where.split(' ', 3)[-1]} (the gzip checksum covers every member)"
            while stream.read(CHUNK):
                pass
        except UnsafeArchiveError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path}: corrupt archive data {where} ({exc})") from None


def safe_extract(path: Path, dest: Path) -> list[str]:
    """Extract every member of ``path`` below ``dest`` after checking all of them first."""
    dest = Path(dest)
    listed = [
        (name, member.size) for name, member, _ in iter_members(path)
    ]  # refuse before writing
    names = [name for name, _ in listed]
    dest.mkdir(parents=True, exist_ok=True)
    need, free = sum(size for _, size in listed), shutil.disk_usage(dest).free
    if need > free:
        raise BundleError(
            f"{path} unpacks to {need:,} bytes but {dest} has {free:,} bytes free",
            hint="free some space or reproduce in another --dir",
        )
    root = dest.resolve()
    use_filter = hasattr(tarfile, "data_filter")
    seen: set[str] = set()
    with open_archive(path) as (tar, _):
        for member in tar:
            name = check_member(member, seen)
            target = (root / name).resolve()
            if target != root and root not in target.parents:
                raise UnsafeArchiveError(f"archive member {member.name!r}: resolves outside {dest}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if use_filter:
                tar.extract(member, root, filter="data")
            else:  # Python without extraction filters: write the bytes ourselves
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "xb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
    return names


# ---- writing --------------------------------------------------------------------------------


class ArchiveWriter:
    """A deterministic tar.gz writer; members are regular files with mode 0644 and mtime 0."""

    def __init__(self, path: Path, compresslevel: int = 6):
        self._raw = open(path, "xb")
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=compresslevel, mtime=MTIME
        )
        self._tar = tarfile.open(fileobj=self._gzip, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        info.mtime = MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_file(self, name: str, source: Path, reader) -> None:
        """Add ``source`` as ``name``; ``reader(fileobj)`` wraps the file so callers hash what is written."""
        size = os.stat(source).st_size
        with open(source, "rb") as handle:
            self._tar.addfile(self._info(name, size), reader(handle))

    def close(self) -> None:
        self._tar.close()
        self._gzip.close()
        self._raw.close()

    def abort(self) -> None:
        for closer in (self._tar.close, self._gzip.close, self._raw.close):
            try:
                closer()
            except Exception:  # closing a half-written archive on the way out of an error
                pass
