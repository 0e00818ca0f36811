"""``minispec bundle create``: pack a finished run so it can be verified and rerun elsewhere.

Archive layout (``BUNDLE_LAYOUT``)::

    pipeline/dvc.lock            first, so a reader knows the recorded hashes before the files
    environment.json             machine, packages, git state (environment.py)
    spec/<spec file>             the spec as written (when known)
    spec/resolved.json           the resolved spec: params.yaml validated, every default filled
    pipeline/dvc.yaml, params.yaml, .dvcignore
    pipeline/<source deps>       inputs no stage produces (scripts, local data inside the pipeline dir)
    pipeline/metrics/ logs/ reports/
    pipeline/<every DVC out>     only with --with-artifacts (models, data, importance, ...)
    dvc-dirs/<md5>.dir           DVC's listing of each bundled directory out (names a changed file)
    manifest.json                last: sha256 and size of every other member

Every bundled file that is a DVC out (or a source dep) must still match ``dvc.lock``; otherwise
the bundle would disagree with itself and creation fails, naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minispec import layout
from minispec.bundle import dvchash
from minispec.bundle.archive import ArchiveWriter, BundleError
from minispec.bundle.dvchash import FileDigest, Hasher, HashingReader, Lock, LockEntry
from minispec.params import read_params, validate_params

FORMAT = "minispec-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENVIRONMENT = "environment.json"
PIPELINE = "pipeline"
SPEC_DIR = "spec"
RESOLVED_SPEC = f"{SPEC_DIR}/resolved.json"
DIR_LISTINGS = "dvc-dirs"
ALWAYS_DIRS = (layout.METRICS_DIR, layout.LOGS_DIR, layout.REPORT_DIR)
PIPELINE_FILES = (layout.DVC_FILE, layout.PARAMS_FILE, ".dvcignore")
LOCK_FILE = "dvc.lock"


@dataclass
class BundleSummary:
    path: Path
    files: int
    bytes: int
    outs: list[str] = field(default_factory=list)  # DVC outs packed (every file of each)
    spec_file: str | None = None


def create_bundle(
    root: Path,
    output: Path,
    *,
    with_artifacts: bool = False,
    spec_file: Path | None = None,
    force: bool = False,
) -> BundleSummary:
    """Write the bundle of the pipeline directory ``root`` to ``output`` (atomically).

    An existing ``output`` is replaced only with ``force``; a file of the pipeline itself (its
    spec, dvc.yaml, params.yaml, dvc.lock, any dep or out, DVC's or git's files) never is.
    """
    root = Path(root).resolve()
    output = Path(output).resolve()
    for name in (layout.DVC_FILE, layout.PARAMS_FILE, LOCK_FILE):
        if not (root / name).is_file():
            hint = (
                "run the pipeline first (`minispec run` / `dvc repro`)"
                if name == LOCK_FILE
                else "run in the directory of the compiled dvc.yaml"
            )
            raise BundleError(f"{root / name} not found: nothing to bundle", hint=hint)
    if not output.parent.is_dir():
        raise BundleError(
            f"{output.parent}: no such directory for the bundle", hint="create it first"
        )
    if any(output.is_relative_to(root / top) for top in ALWAYS_DIRS):
        raise BundleError(
            f"{output}: a bundle inside {', '.join(ALWAYS_DIRS)}/ would end up in the next bundle",
            hint="write it elsewhere (e.g. -o run.tar.gz)",
        )
    lock_text = (root / LOCK_FILE).read_text(encoding="utf-8")
    try:
        lock = dvchash.read_lock(lock_text)
    except ValueError as exc:
        raise BundleError(f"{root / LOCK_FILE}: {exc}") from None
    params = read_params(root / layout.PARAMS_FILE)
    spec_file = spec_file or find_spec_file(root)
    refuse_output(root, output, lock, spec_file, force=force)

    files = select_files(root, lock, with_artifacts)
    outs = sorted({lock.out_for(rel).path for rel in files if lock.out_for(rel)})
    tmp = output.with_name(f".{output.name}.partial")
    tmp.unlink(missing_ok=True)
    # weights barely compress (ratio ~0.93 for float tensors) and gzip is the slow part: with
    # artifacts favour speed; logs, metrics and reports compress well at the default level
    writer = ArchiveWriter(tmp, compresslevel=1 if with_artifacts else 6)
    manifest: dict[str, dict[str, Any]] = {}
    digests: dict[str, FileDigest] = {}
    try:
        _add_bytes(writer, manifest, f"{PIPELINE}/{LOCK_FILE}", lock_text.encode("utf-8"))
        from minispec.bundle.environment import capture

        environment = capture(root, params)
        _add_bytes(writer, manifest, ENVIRONMENT, _json_bytes(environment))
        if spec_file is not None:
            _add_bytes(
                writer, manifest, f"{SPEC_DIR}/{Path(spec_file).name}", Path(spec_file).read_bytes()
            )
        _add_bytes(
            writer,
            manifest,
            RESOLVED_SPEC,
            _json_bytes(validate_params(params).model_dump(mode="json")),
        )
        for rel in files:
            hasher = Hasher(legacy=lock.needs_legacy)
            writer.add_file(
                f"{PIPELINE}/{rel}", root / rel, lambda handle, h=hasher: HashingReader(handle, h)
            )
            digests[rel] = digest = hasher.digest()
            manifest[f"{PIPELINE}/{rel}"] = {"sha256": digest.sha256, "size": digest.size}
        problems, listings = check_against_lock(lock, digests)
        if problems:
            raise BundleError(
                f"the workspace does not match {LOCK_FILE}:\n  " + "\n  ".join(problems),
                hint="the files changed after the pipeline ran: run `dvc status`, then rerun the pipeline (or `dvc checkout`) before bundling",
            )
        for md5, listing in sorted(listings.items()):
            _add_bytes(writer, manifest, f"{DIR_LISTINGS}/{md5}", listing)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "minispec_version": environment["minispec"]["version"],
            "name": params.get("name"),
            "engine": params.get("engine", "torch"),
            "with_artifacts": with_artifacts,
            "spec_file": f"{SPEC_DIR}/{Path(spec_file).name}" if spec_file else None,
            "resolved_spec": RESOLVED_SPEC,
            "pipeline_dir": PIPELINE,
            "outs": outs,
            "files": dict(sorted(manifest.items())),
        }
        writer.add_bytes(MANIFEST, _json_bytes(document))
        writer.close()
        os.replace(tmp, output)
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    return BundleSummary(output, len(manifest), output.stat().st_size, outs, document["spec_file"])


def refuse_output(
    root: Path, output: Path, lock: Lock, spec_file: Path | None, *, force: bool
) -> None:
    """``-o`` must not name a file of the pipeline, and replaces another file only with --force."""
    protected = [root / name for name in (*PIPELINE_FILES, LOCK_FILE)]
    protected += [root / ".dvc", root / ".git"]
    protected += [root / entry.path for entry in lock.outs + lock.deps]
    if spec_file is not None:
        protected.append(Path(spec_file))
    target = output.resolve()
    for path in protected:
        path = path.resolve()
        if target == path or path in target.parents:
            raise BundleError(
                f"{output}: is {'inside ' if target != path else ''}{path}, a file of the pipeline; refusing to overwrite it",
                hint="write the bundle elsewhere (e.g. -o ../run.tar.gz)",
            )
    if output.exists() and not force:
        raise BundleError(
            f"{output} already exists; refusing to overwrite it",
            hint="choose another -o, or pass --force to replace it",
        )
    if output.is_dir():
        raise BundleError(f"{output} is a directory", hint="name a file with -o")


def _add_bytes(writer: ArchiveWriter, manifest: dict, name: str, data: bytes) -> None:
    hasher = Hasher()
    hasher.update(data)
    writer.add_bytes(name, data)
    manifest[name] = {"sha256": hasher.digest().sha256, "size": len(data)}


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# ---- what goes in ---------------------------------------------------------------------------


def select_files(root: Path, lock: Lock, with_artifacts: bool) -> list[str]:
    """Relative paths of the pipeline files to bundle, sorted."""
    chosen: set[str] = {name for name in PIPELINE_FILES if (root / name).is_file()}
    for entry in lock.source_deps():
        if _inside(root, entry.path):
            chosen.update(_files_of(root, entry))
    # inside an out, only the files DVC counted (its .dir listing): others are .dvcignore'd
    out_files = {e.path: set(_files_of(root, e)) for e in lock.outs if _inside(root, e.path)}
    for top in ALWAYS_DIRS:
        if (root / top).is_dir():
            for rel in (f"{top}/{r}" for r in dvchash.walk_dir(root / top)):
                out = lock.out_for(rel)
                if out is None or rel in out_files.get(out.path, ()):
                    chosen.add(rel)
    if with_artifacts:
        for entry in lock.outs:
            if not _inside(root, entry.path):
                continue
            if not (root / entry.path).exists():
                raise BundleError(
                    f"artifact {entry.path} (out of stage '{entry.stage}') is missing from the workspace",
                    hint="run `dvc checkout` (or rerun the pipeline) to restore it, or bundle without --with-artifacts",
                )
            chosen.update(_files_of(root, entry))
    return sorted(chosen)


def _inside(root: Path, rel: str) -> bool:
    path = Path(rel)
    if path.is_absolute():
        return False
    return (root / path).resolve().is_relative_to(root)


def _files_of(root: Path, entry: LockEntry) -> list[str]:
    """The files DVC hashed for ``entry``: its cached ``.dir`` listing when available, else a walk."""
    path = root / entry.path
    if path.is_file():
        return [entry.path]
    if not path.is_dir():
        return []
    listing = cached_listing(root, entry)
    rels = list(listing) if listing is not None else dvchash.walk_dir(path)
    return [f"{entry.path}/{rel}" for rel in rels if (path / rel).is_file()]


def cached_listing(root: Path, entry: LockEntry) -> dict[str, str] | None:
    """DVC's ``.dir`` object of a directory out from the project's default cache, if present."""
    if not entry.is_dir:
        return None
    value = entry.md5
    for cache in (root / ".dvc" / "cache" / "files" / "md5", root / ".dvc" / "cache"):
        candidate = cache / value[:2] / value[2:]
        if candidate.is_file():
            try:
                return dvchash.parse_listing(candidate.read_bytes())
            except (ValueError, KeyError):
                return None
    return None


def check_against_lock(
    lock: Lock, digests: dict[str, FileDigest]
) -> tuple[list[str], dict[str, bytes]]:
    """Problems of bundled files against ``dvc.lock``, and the ``.dir`` listings of bundled dir outs.

    Shared by create (the workspace) and verify (the archive): ``digests`` maps pipeline-relative
    paths to their hashes.
    """
    problems: list[str] = []
    listings: dict[str, bytes] = {}
    for entry in checkable_entries(lock):
        if entry.md5 is None:
            continue
        if not entry.is_dir:
            digest = digests.get(entry.path)
            if digest is not None and digest.dvc_md5(entry.hash_name) != entry.md5:
                problems.append(
                    f"{entry.path}: md5 {digest.dvc_md5(entry.hash_name)} != {entry.md5} in dvc.lock (stage '{entry.stage}')"
                )
            continue
        inside = dvchash.dir_entry_md5s(entry, digests)
        if not inside:
            continue
        actual = dvchash.dir_md5(inside)
        if actual == entry.md5:
            listings[entry.md5] = dvchash.dir_listing(inside)
        else:
            problems.append(
                f"{entry.path}/: directory md5 {actual} != {entry.md5} in dvc.lock (stage '{entry.stage}')"
            )
    return problems, listings


def checkable_entries(lock: Lock) -> list[LockEntry]:
    """Every out, and every source dep (deps produced by a stage are that stage's outs)."""
    return lock.outs + [d for d in lock.source_deps() if not Path(d.path).is_absolute()]


def find_spec_file(root: Path) -> Path | None:
    """The spec the pipeline was compiled from, when it sits in the pipeline directory.

    A candidate is a YAML/JSON file (not dvc.yaml/params.yaml) with ``version`` and ``teacher``
    at the top; with several candidates pass ``--spec``.
    """
    from minispec.spec.load import read_document

    found = []
    for path in sorted(root.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json") or path.name in (
            layout.DVC_FILE,
            layout.PARAMS_FILE,
            LOCK_FILE,
        ):
            continue
        try:
            raw, _ = read_document(path)
        except Exception:  # not a spec: any YAML/JSON file may sit here
            continue
        if isinstance(raw, dict) and "version" in raw and "teacher" in raw:
            found.append(path)
    if len(found) > 1:
        raise BundleError(
            f"several spec files in {root}: {', '.join(p.name for p in found)}",
            hint="name the one this pipeline was compiled from with --spec",
        )
    return found[0] if found else spec_named_by_header(root)


def spec_named_by_header(root: Path) -> Path | None:
    """The spec that dvc.yaml's header says it was compiled from (``minispec compile --out``),
    when that file still exists; the path in the header is relative to the pipeline directory."""
    from minispec.compile.dvc import split_header

    try:
        header, _ = split_header((root / layout.DVC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    if header is None:
        return None
    spec = root / header.source.split(" --set ", 1)[0]
    return spec if spec.is_file() else None
