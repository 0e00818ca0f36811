"""Build the distillation corpus of the GPU study (issue 15) from Debian documentation packages.

    python benchmarks/study_corpus.py --work /tmp/study-corpus --out .study/corpus \
        [--tokenizer models/teacher/tokenizer.json | --gguf PATH.gguf] [--part-mib 7]

What it does, repeatably and offline once the .deb files are in ``WORK/debs``:

1. ``apt-get download`` each package of :data:`PACKAGES` into ``WORK/debs`` (skipped when a
   ``NAME_*.deb`` is already there: put the files there by hand on a machine without apt);
2. unpacks each with ``dpkg-deb -x`` into ``WORK/root/NAME`` (dpkg-deb writes only inside it);
3. turns every documentation file into one document, ``{"text": ..., "source": "PKG:PATH"}``,
   one JSON line each, in a fixed order (package, then path) -> ``WORK/train.jsonl``;
   the data stage reads it as the train split (a JSON Lines file: no new source kind needed);
4. copies WikiText-103 validation and test (``--wikitext``) beside it: they stay the
   validation and test splits;
5. compresses the three files with xz into ``OUT`` and splits the train archive into parts of
   at most ``--part-mib`` MiB (``train.jsonl.xz.part-00``, ...) so that each part can travel
   in its own call to the GPU machine; ``OUT/MANIFEST.json`` records the packages, their
   sha256, the documents, characters, tokens (with ``--tokenizer``/``--gguf``) and parts.

The GPU side joins and decompresses the parts (benchmarks/study_gpu.sh) into a directory that
holds train.jsonl, validation.jsonl and test.jsonl, which is what ``data.source`` points at.

Why these packages: linux-doc alone (the kernel's .rst/.txt prose, ~10.4M SmolLM2 tokens, plus
~2.7M in the devicetree .yaml bindings) is short of the 20M tokens the study needs, so other
Debian documentation packages of the same kind of technical English prose are added: perl-doc
(the .pod manual), git-doc (the asciidoc .txt manual), postgresql-doc-15 and python-django-doc
(HTML manuals, turned into text), debian-handbook (its English HTML edition),
debian-reference-en, developers-reference and the GNU Guile manual (guile-3.0-doc, Info):
19.25M tokens without the last four, which take it past 20M. Python's own documentation is never used: it is kept for
independent evaluation.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import html.parser
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

# package -> (glob patterns of its documentation files, relative to the unpacked root, kind)
PACKAGES: dict[str, tuple[list[str], str]] = {
    "linux-doc-6.1": (
        [
            "usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
            "usr/share/doc/linux-doc-6.1/Documentation/**/*.txt.gz",
            # the devicetree bindings: schemas, but with human-written descriptions; kept
            # because they are the kernel's documentation and the corpus needs the tokens
            "usr/share/doc/linux-doc-6.1/Documentation/**/*.yaml.gz",
        ],
        "text",
    ),
    "perl-doc": (["usr/share/perl/*/pod/*.pod"], "text"),
    "git-doc": (["usr/share/doc/git-doc/**/*.txt", "usr/share/doc/git-doc/**/*.txt.gz"], "text"),
    "postgresql-doc-15": (["usr/share/doc/postgresql-doc-15/html/*.html"], "html"),
    "python-django-doc": (["usr/share/doc/python-django-doc/html/**/*.html"], "html"),
    # the English edition only (the package holds a dozen translations)
    "debian-handbook": (["usr/share/doc/debian-handbook/html/en-US/*.html"], "html"),
    "debian-reference-en": (["usr/share/debian-reference/*.en.html"], "html"),
    "developers-reference": (["usr/share/developers-reference/_sources/*.rst.txt"], "text"),
    # the GNU Guile manual in Info format: text, with control characters between nodes
    "guile-3.0-doc": (["usr/share/info/guile-3.0/*.info*.gz"], "info"),
}
# navigation pages of the HTML manuals: lists of links, no prose
HTML_SKIP = re.compile(r"(^|/)(genindex|search|py-modindex|bookindex|index)\.html$")
WIKITEXT = Path(os.environ.get("MINISPEC_SHARED", "../shared")) / "data" / "wikitext-103-v1"


def download(package: str, debs: Path) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if len(found) != 1:
        sys.exit(f"error: expected one {package}_*.deb in {debs}, found {len(found)}")
    return found[0]


def unpack(deb: Path, target: Path) -> None:
    if target.is_dir():
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
    partial.rename(target)


class _HtmlText(html.parser.HTMLParser):
    """The visible text of an HTML page: no script/style, a line break per block element."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "nav"):
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "nav"):
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    text = "".join(parser.parts)
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def read_text(path: Path) -> str:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def documents(package: str, root: Path):
    patterns, kind = PACKAGES[package]
    files = sorted(
        {Path(p) for pattern in patterns for p in glob.glob(str(root / pattern), recursive=True)}
    )
    for file in files:
        relative = file.relative_to(root).as_posix()
        if kind == "html" and HTML_SKIP.search(relative):
            continue
        text = read_text(file)
        if kind == "html":
            text = html_to_text(text)
        if kind == "info":
            text = text.replace("\x1f", "").replace("\x7f", "").replace("\x00", "")
        if text.strip():
            yield relative, text


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(args):
    if args.tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer)
        return lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts)]
    if args.gguf:
        from transformers import AutoTokenizer

        path = Path(args.gguf)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return lambda texts: [len(ids) for ids in tokenizer(texts)["input_ids"]]
    return None


def build_train(args, work: Path, count) -> tuple[Path, dict]:
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    train = work / "train.jsonl"
    stats = {}
    with open(train, "w", encoding="utf-8") as out:
        for package in PACKAGES:
            deb = download(package, debs)
            root = work / "root" / package
            unpack(deb, root)
            docs = chars = tokens = 0
            batch: list[str] = []
            for relative, text in documents(package, root):
                out.write(json.dumps({"text": text, "source": f"{package}:{relative}"}) + "\n")
                docs += 1
                chars += len(text)
                batch.append(text)
                if count and len(batch) >= 256:
                    tokens += sum(count(batch))
                    batch = []
            if count and batch:
                tokens += sum(count(batch))
            stats[package] = {
                "deb": deb.name,
                "sha256": sha256(deb),
                "documents": docs,
                "characters": chars,
                "tokens": tokens if count else None,
            }
            print(f"{package}: {docs} documents, {chars} characters, {tokens} tokens", flush=True)
    return train, stats


def compress(source: Path, target: Path) -> None:
    with open(source, "rb") as src, lzma.open(target, "wb", preset=9 | lzma.PRESET_EXTREME) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def split_parts(archive: Path, part_bytes: int) -> list[Path]:
    parts = []
    with open(archive, "rb") as handle:
        for index, block in enumerate(iter(lambda: handle.read(part_bytes), b"")):
            part = archive.with_name(f"{archive.name}.part-{index:02d}")
            part.write_bytes(block)
            parts.append(part)
    archive.unlink()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/study-corpus"))
    parser.add_argument("--out", type=Path, default=Path(".study/corpus"))
    parser.add_argument("--wikitext", type=Path, default=WIKITEXT)
    parser.add_argument("--tokenizer", help="a tokenizer.json to count tokens with")
    parser.add_argument("--gguf", help="or the teacher's GGUF file (its tokenizer)")
    parser.add_argument("--part-mib", type=float, default=7.0)
    args = parser.parse_args()
    count = load_tokenizer(args)
    args.work.mkdir(parents=True, exist_ok=True)
    train, stats = build_train(args, args.work, count)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    compress(train, args.out / "train.jsonl.xz")
    parts = split_parts(args.out / "train.jsonl.xz", int(args.part_mib * (1 << 20)))
    for split in ("validation", "test"):
        compress(args.wikitext / f"{split}.jsonl", args.out / f"{split}.jsonl.xz")
    manifest = {
        "packages": stats,
        "train": {
            "documents": sum(s["documents"] for s in stats.values()),
            "characters": sum(s["characters"] for s in stats.values()),
            "tokens": sum(s["tokens"] for s in stats.values()) if count else None,
            "bytes": train.stat().st_size,
            "sha256": sha256(train),
            "parts": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in parts},
        },
        "validation": "WikiText-103-v1 validation (from MINISPEC_SHARED/data)",
        "test": "WikiText-103-v1 test (from MINISPEC_SHARED/data)",
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest["train"], indent=1))


if __name__ == "__main__":
    main()
