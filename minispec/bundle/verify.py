"""``minispec bundle verify``: every member's sha256 against the manifest, and every bundled DVC
out (and source dep) against the bundle's own ``dvc.lock``, in one streaming pass.

The manifest catches accidental corruption and naive edits; ``dvc.lock`` catches an edit whose
author also rewrote the manifest, because an artifact's md5 must still be the one DVC recorded
when the pipeline produced it. A changed file inside a directory out is named through the
bundled ``.dir`` listing, which is trusted only when its own md5 is the one in ``dvc.lock``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minispec import layout
from minispec.bundle import dvchash, trust
from minispec.bundle.archive import BundleError, UnsafeArchiveError, iter_members
from minispec.bundle.create import (
    DIR_LISTINGS,
    ENVIRONMENT,
    FORMAT,
    FORMAT_VERSION,
    LOCK_FILE,
    MANIFEST,
    PIPELINE,
    RESOLVED_SPEC,
    checkable_entries,
)
from minispec.bundle.dvchash import FileDigest, Lock, LockEntry
from minispec.params import parse_params

KEEP_LIMIT = 64 << 20  # small members kept in memory for the checks (manifest, lock, listings)
LOCK_MEMBER = f"{PIPELINE}/{LOCK_FILE}"


class BundleVerifyError(BundleError):
    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"{path}: bundle verification failed ({len(problems)} {noun}):\n  "
            + "\n  ".join(problems),
            hint="the bundle was altered or corrupted after it was created; get an intact copy",
        )


@dataclass
class VerifyResult:
    path: Path
    manifest: dict[str, Any]
    files_checked: int = 0
    outs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> VerifyResult:
        if self.problems:
            raise BundleVerifyError(self.path, self.problems)
        return self

    @property
    def environment(self) -> dict[str, Any]:
        return json.loads(self.contents.get(ENVIRONMENT, b"{}"))


DVC_MEMBER = f"{PIPELINE}/{layout.DVC_FILE}"
PARAMS_MEMBER = f"{PIPELINE}/{layout.PARAMS_FILE}"


def _kept(name: str) -> bool:
    return name in (
        MANIFEST,
        LOCK_MEMBER,
        ENVIRONMENT,
        RESOLVED_SPEC,
        DVC_MEMBER,
        PARAMS_MEMBER,
    ) or name.startswith(f"{DIR_LISTINGS}/")


def verify_bundle(path: Path) -> VerifyResult:
    path = Path(path)
    digests: dict[str, FileDigest] = {}
    contents: dict[str, bytes] = {}
    lock: Lock | None = None
    lock_error: str | None = None  # dvc.lock unreadable: reported, and the lock checks skipped
    broken: str | None = None  # corrupt compressed data: reported with whatever was read
    current = "(archive header)"
    try:
        for name, member, handle in iter_members(path):
            current = name
            if handle is None:
                continue
            legacy = lock.needs_legacy if lock is not None else True
            if _kept(name) and member.size <= KEEP_LIMIT:
                data = handle.read()
                hasher = dvchash.Hasher(legacy)
                hasher.update(data)
                digests[name] = hasher.digest()
                contents[name] = data
                if name == LOCK_MEMBER:
                    lock, lock_error = _parse_lock(data)
            else:
                digests[name] = dvchash.hash_stream(handle, legacy)
    except UnsafeArchiveError:
        raise
    except BundleError as exc:
        broken = exc.message
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        broken = f"corrupt archive data while reading member {current!r} ({exc})"

    try:
        manifest = _parse_manifest(path, contents.get(MANIFEST))
    except BundleVerifyError as exc:
        raise BundleVerifyError(path, ([broken] if broken else []) + exc.problems) from None
    result = VerifyResult(path, manifest, contents=contents)
    if broken:
        result.problems.append(broken)
    result.problems += check_manifest(manifest, digests)
    result.files_checked = len(digests) - 1
    if LOCK_MEMBER not in contents:
        result.problems.append(f"{LOCK_MEMBER}: missing (a bundle always holds the run's dvc.lock)")
        return result
    if lock is None:
        lock, lock_error = _parse_lock(contents[LOCK_MEMBER])
    result.problems += trust.manifest_problems(manifest)
    result.problems += _pipeline_problems(contents)
    if lock is None:
        result.problems.append(f"{LOCK_MEMBER}: {lock_error}")
        return result
    result.problems += trust.lock_problems(lock)
    pipeline = {
        name[len(PIPELINE) + 1 :]: d
        for name, d in digests.items()
        if name.startswith(f"{PIPELINE}/")
    }
    problems, checked = check_lock(lock, pipeline, contents)
    result.problems += problems
    result.outs_checked = checked
    result.problems += check_artifacts(manifest, lock, pipeline)
    return result


def _parse_manifest(path: Path, data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise BundleVerifyError(
            path, [f"{MANIFEST}: missing (not a minispec bundle, or truncated)"]
        )
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleVerifyError(path, [f"{MANIFEST}: not JSON ({exc})"]) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise BundleVerifyError(path, [f"{MANIFEST}: not a {FORMAT} manifest"])
    if (
        not isinstance(manifest.get("format_version"), int)
        or manifest["format_version"] > FORMAT_VERSION
    ):
        raise BundleError(
            f"{path}: bundle format version {manifest.get('format_version')!r} is newer than this minispec reads ({FORMAT_VERSION})",
            hint="upgrade minispec",
        )
    return manifest


def _parse_lock(data: bytes) -> tuple[Lock | None, str | None]:
    """The lock, or None and why it cannot be read (broken YAML, a tag, not a dvc.lock)."""
    from ruamel.yaml.error import YAMLError

    try:
        return dvchash.read_lock(data.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError, YAMLError) as exc:
        detail = " ".join(str(exc).split())[:300]
        return None, f"unreadable, not a dvc.lock DVC wrote ({type(exc).__name__}: {detail})"


def _pipeline_problems(contents: dict[str, bytes]) -> list[str]:
    """The bundled dvc.yaml must be what minispec compiles from the bundled params.yaml."""
    missing = [name for name in (DVC_MEMBER, PARAMS_MEMBER) if name not in contents]
    if missing:
        return [
            f"{name}: missing (a bundle always holds the compiled pipeline)" for name in missing
        ]
    try:
        dvc_text = contents[DVC_MEMBER].decode("utf-8")
        params_text = contents[PARAMS_MEMBER].decode("utf-8")
    except UnicodeDecodeError:
        return [f"{DVC_MEMBER} or {PARAMS_MEMBER}: not UTF-8 text"]
    problems = trust.command_problems(dvc_text, params_text)
    if not problems:
        problems = trust.params_path_problems(parse_params(params_text))
    return problems


def check_manifest(manifest: dict[str, Any], digests: dict[str, FileDigest]) -> list[str]:
    problems = []
    listed = manifest["files"]
    for name in sorted(set(listed) | set(digests) - {MANIFEST}):
        entry, digest = listed.get(name), digests.get(name)
        if digest is None:
            problems.append(f"{name}: listed in the manifest but missing from the bundle")
        elif not isinstance(entry, dict):
            problems.append(f"{name}: in the bundle but not listed in the manifest")
        elif entry.get("sha256") != digest.sha256 or entry.get("size") != digest.size:
            # full hashes: a flipped character late in the manifest's copy must show
            problems.append(
                f"{name}: sha256 {digest.sha256} (size {digest.size}) does not match the manifest's {entry.get('sha256')} (size {entry.get('size')}): the file or its manifest entry was modified"
            )
    return problems


def check_lock(
    lock: Lock, pipeline: dict[str, FileDigest], contents: dict[str, bytes]
) -> tuple[list[str], int]:
    """Bundled outs and source deps against dvc.lock; changed files named where possible."""
    problems: list[str] = []
    checked = 0
    for entry in checkable_entries(lock):
        if entry.md5 is None:
            continue
        if not entry.is_dir:
            digest = pipeline.get(entry.path)
            if digest is None:
                continue
            checked += 1
            if digest.dvc_md5(entry.hash_name) != entry.md5:
                problems.append(
                    f"{PIPELINE}/{entry.path}: md5 {digest.dvc_md5(entry.hash_name)} differs from {entry.md5} recorded in dvc.lock (stage '{entry.stage}'): the artifact was modified"
                )
            continue
        inside = dvchash.dir_entry_md5s(entry, pipeline)
        if not inside:
            continue
        checked += 1
        if dvchash.dir_md5(inside) != entry.md5:
            problems += _name_dir_changes(entry, inside, contents)
    return problems, checked


def _name_dir_changes(
    entry: LockEntry, inside: dict[str, str], contents: dict[str, bytes]
) -> list[str]:
    where = f"{PIPELINE}/{entry.path}"
    listing_bytes = contents.get(f"{DIR_LISTINGS}/{entry.md5}")
    raw = entry.md5[: -len(dvchash.DIR_SUFFIX)]
    if (
        listing_bytes is None
        or hashlib.md5(listing_bytes, usedforsecurity=False).hexdigest() != raw
    ):
        return [
            f"{where}/: directory md5 {dvchash.dir_md5(inside)} differs from {entry.md5} recorded in dvc.lock (stage '{entry.stage}'): a file in it was modified, added or removed"
        ]
    recorded = dvchash.parse_listing(listing_bytes)
    problems = []
    for rel in sorted(set(recorded) | set(inside)):
        if rel not in inside:
            problems.append(
                f"{where}/{rel}: missing (recorded in dvc.lock for stage '{entry.stage}')"
            )
        elif rel not in recorded:
            problems.append(
                f"{where}/{rel}: not part of the out recorded in dvc.lock (stage '{entry.stage}'): added"
            )
        elif recorded[rel] != inside[rel]:
            problems.append(
                f"{where}/{rel}: md5 {inside[rel]} differs from {recorded[rel]} recorded in dvc.lock (stage '{entry.stage}'): the artifact was modified"
            )
    return problems


def check_artifacts(
    manifest: dict[str, Any], lock: Lock, pipeline: dict[str, FileDigest]
) -> list[str]:
    """The outs the manifest lists are there; with --with-artifacts, every out inside the pipeline."""
    problems = []
    wanted = list(manifest.get("outs") or [])
    if manifest.get("with_artifacts"):
        wanted += [
            e.path
            for e in lock.outs
            if not Path(e.path).is_absolute() and not e.path.startswith("../") and e.nfiles != 0
        ]
    for out in sorted(set(wanted)):
        if out not in pipeline and not any(rel.startswith(out + "/") for rel in pipeline):
            problems.append(f"{PIPELINE}/{out}: DVC output missing from the bundle")
    return problems
