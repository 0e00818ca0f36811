"""Free-form ``nemo`` settings that become words of a ``docker run`` or ``srun`` line.

Quoting keeps a value one argument, but an argument that starts with ``-`` is still an option
to docker or srun: ``nemo.image: --privileged`` would compile to ``docker run ... --privileged
python ...``. So each value must look like what it names; anything else is refused, by lint
(located) and again when commands are built (for specs that skipped lint, such as a bundle's
params.yaml).

Line breaks are refused in every spec string that reaches a nemo command: DVC splits a string
command into lines, each run as its own command.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from minispec.errors import CompileError

KeyPath = tuple[str | int, ...]

# a registry image reference (docker's grammar, loosely), pyxis' `registry#image`, or for
# slurm an absolute path to a squashfs image; never an option
IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@#+-]*|/[A-Za-z0-9._/+-]+")
SHM_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?[bkmgBKMG]?")
ROOT = re.compile(r"/[^\x00-\x1f\x7f]*")  # any absolute path (quoting keeps it one word)
SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,-]*")
SLURM_TIME = re.compile(r"[0-9]+(-[0-9]+)?(:[0-9]+){0,2}|infinite|UNLIMITED")

RULES: dict[KeyPath, tuple[re.Pattern[str], str]] = {
    ("nemo", "image"): (IMAGE, "a container image such as nvcr.io/nvidia/nemo:25.04"),
    ("nemo", "shm_size"): (SHM_SIZE, "a size such as 16g"),
    ("nemo", "root"): (ROOT, "an absolute path such as /opt/NeMo"),
    ("nemo", "slurm", "partition"): (SLURM_NAME, "a Slurm partition name"),
    ("nemo", "slurm", "account"): (SLURM_NAME, "a Slurm account name"),
    ("nemo", "slurm", "time"): (SLURM_TIME, "a Slurm time limit such as 04:00:00 or 1-12:00:00"),
}


def value_problems(spec) -> Iterator[tuple[KeyPath, str, str]]:
    """``(key path, message, hint)`` for every nemo setting or string that cannot go into a command."""
    settings = spec.nemo_settings.model_dump(mode="json")
    for path, (pattern, what) in RULES.items():
        value: Any = {"nemo": settings}
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and not pattern.fullmatch(value):
            why = "would be read as an option" if value.startswith("-") else "is not " + what
            yield path, f"{value!r} {why}", f"write {what}"
    yield from _line_breaks(spec.model_dump(mode="json"), ())


def _line_breaks(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _line_breaks(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _line_breaks(item, path + (index,))
    elif isinstance(value, str) and ("\n" in value or "\r" in value):
        yield (
            path,
            "a line break cannot go into a nemo stage command (DVC runs each line as a command)",
            "write the value on one line",
        )


def check_values(spec) -> None:
    """Refuse the first bad value when commands are built (lint reports them all, located)."""
    for path, message, hint in value_problems(spec):
        raise CompileError(f"{'.'.join(map(str, path))}: {message}", hint=hint)
