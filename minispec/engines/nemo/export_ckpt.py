"""Launcher: a NeMo 2 checkpoint → a Hugging Face directory with ``llm.export_ckpt``.

Runs inside the NeMo container (``python -m minispec.engines.nemo.export_ckpt``); NeMo is
imported only in :func:`export`. The directory is written beside the target and renamed into
place when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def export(checkpoint: str | Path, output: str | Path) -> Path:
    from nemo.collections import llm

    output = Path(output)
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    llm.export_ckpt(path=Path(checkpoint), target="hf", output_path=partial, overwrite=True)
    shutil.rmtree(output, ignore_errors=True)
    os.replace(partial, output)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="NeMo 2 checkpoint directory")
    parser.add_argument("--output", required=True, help="Hugging Face directory to create")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    export(args.checkpoint, args.output)


if __name__ == "__main__":
    main()
