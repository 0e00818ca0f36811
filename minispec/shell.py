"""Commands as argument lists, joined into one shell line only at the very end.

Stage commands are written into ``dvc.yaml``, which DVC runs through a shell. Every spec value
(paths, hub ids, sizes) is one argument quoted with :func:`shlex.quote`, so a path with spaces or
shell characters reaches the program as one literal argument and can never run as shell code.
The only words the shell may expand are :class:`ShellWord` constants defined in engine code
(e.g. the ``"$PWD"`` a ``docker run`` mounts), never built from spec values.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ShellWord:
    """A word the shell must expand. Only engine constants are ShellWords; never spec values."""

    text: str

    def __str__(self) -> str:  # what a reader of the dry run sees
        return self.text


Arg = str | ShellWord
Command = list[Arg]


def join(command: Sequence[Arg]) -> str:
    """One shell line: every argument quoted, :class:`ShellWord` constants left to the shell."""
    return " ".join(
        word.text if isinstance(word, ShellWord) else shlex.quote(str(word)) for word in command
    )


def is_command(command: object) -> bool:
    return (
        isinstance(command, list)
        and bool(command)
        and all(isinstance(word, (str, ShellWord)) for word in command)
    )
