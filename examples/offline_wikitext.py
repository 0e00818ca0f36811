"""Lay out the WikiText-103 files available offline as a local data source for minispec.

Machines without Hugging Face Hub access have only WikiText-103's validation and test splits
(`../shared/data/wikitext-103-v1`). This script writes OUT_DIR/{train,validation,test}.jsonl:

- train:       WikiText-103 *test* (4,358 rows) — text to train on for short runs;
- validation:  the first half of WikiText-103 *validation*'s articles;
- test:        the second half of its articles (held out from everything else).

Rows are copied byte for byte; articles are split at their ` = Title = ` heading rows, so no
article straddles two splits. Usage:

    python examples/offline_wikitext.py ../shared/data/wikitext-103-v1 .data/wikitext-offline
    minispec run specs/quickstart.yaml --set data.source=.data/wikitext-offline
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def is_article_heading(line: bytes) -> bool:
    text = json.loads(line)["text"]
    return (
        text.startswith(" = ")
        and not text.startswith(" = = ")
        and text.rstrip("\n").endswith(" = ")
    )


def split_articles(lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    starts = [i for i, line in enumerate(lines) if is_article_heading(line)]
    if len(starts) < 2:
        raise SystemExit("error: fewer than two articles in the validation file")
    # an article's rows begin with the empty row before its heading, as WikiText writes them
    middle = starts[len(starts) // 2] - 1
    return lines[:middle], lines[middle:]


def main(source: str, out: str) -> None:
    source_dir, out_dir = Path(source), Path(out)
    validation = (source_dir / "validation.jsonl").read_bytes().splitlines(keepends=True)
    first, second = split_articles(validation)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.jsonl").write_bytes((source_dir / "test.jsonl").read_bytes())
    (out_dir / "validation.jsonl").write_bytes(b"".join(first))
    (out_dir / "test.jsonl").write_bytes(b"".join(second))
    for split in ("train", "validation", "test"):
        rows = sum(1 for _ in open(out_dir / f"{split}.jsonl", "rb"))
        print(f"{out_dir / f'{split}.jsonl'}: {rows} rows")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
