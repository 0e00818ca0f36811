"""What ``minispec run`` shows on the console while DVC runs the stages.

One summary line per stage (``[ 4/13] finetune  done in 6m26s``). A stage's own output goes to
``logs/<stage>.log`` only, unless ``--verbose`` asks for it on the console too. On a terminal
a live line under the summary shows the running stage, its elapsed time and the last thing it
printed (a tqdm bar through a pipe arrives as ``\\r``-separated updates: the last one is kept),
redrawn in place with ``\\r`` and cleared before the next summary line. Through a pipe or in a
file (CI, tests) there is no live line, so the output is exactly the summary lines.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class StageOutput:
    """Where a running stage's output lines go besides its log: nowhere, the console in full
    (``verbose``), or a live status line (``live``, on a terminal)."""

    verbose: bool = False
    live: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    stage: str | None = None
    started: float = 0.0
    last: str = ""
    shown: bool = False  # a live line is on screen and must be cleared before other output

    @classmethod
    def for_console(cls, verbose: bool) -> StageOutput:
        return cls(verbose=verbose, live=not verbose and sys.stdout.isatty())

    def begin(self, stage: str) -> None:
        self.stage, self.started, self.last = stage, time.monotonic(), ""
        self.draw()

    def line(self, text: str, echo) -> None:
        """One line the stage printed (already written to its log)."""
        if self.verbose:
            echo(text)
            return
        update = text.split("\r")[-1].strip()
        if update:
            self.last = update
        self.draw()

    def draw(self) -> None:
        if not self.live or self.stage is None:
            return
        elapsed = time.monotonic() - self.started
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = f"  {self.stage} {elapsed:5.0f}s  {self.last}"
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        """Remove the live line (before a summary line is printed)."""
        if self.shown:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + " " * width + "\r")
            self.stream.flush()
            self.shown = False

    def end(self) -> None:
        self.clear()
        self.stage = None
