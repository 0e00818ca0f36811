"""How long a stage takes to start: wall time from process start, split into named phases.

A stage's start-up (Python, imports, reading params, loading models, the first step) is paid by
every stage of every run, so each stage reports it. The clock starts when the process started
(read from ``/proc``: DVC starts ``minispec`` through a shell that ``exec``s Python, so this
includes the interpreter's own start-up), not when this module was imported.
"""

from __future__ import annotations

import os
import time

_inherited_start: float | None = None  # set in a stage forked by the warm stage server


def process_start_boottime() -> float | None:
    """When this process started, in seconds of ``CLOCK_BOOTTIME``; None where the system cannot
    tell (not Linux)."""
    try:
        with open("/proc/self/stat") as stat:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'; field 22
            # of the line (starttime, clock ticks after boot) is then at index 19
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def set_process_start(boottime: float | None) -> None:
    """Measure from ``boottime`` instead of this process's start: a stage forked by the warm
    stage server (:mod:`minispec.engines.torch.warm`) counts from when DVC started its caller."""
    global _inherited_start
    _inherited_start = boottime


def seconds_since_process_start() -> float | None:
    """Wall time since this process (or the stage it serves) started; None where unknown."""
    started = _inherited_start if _inherited_start is not None else process_start_boottime()
    if started is None:
        return None
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


class StartupPhases:
    """Consecutive phases of a start-up, each measured from the end of the one before.

    The first :meth:`mark` closes the phase that began at process start (interpreter and
    imports). Without a process start time (not Linux) nothing is recorded.
    """

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self.elapsed = 0.0  # seconds since process start at the last mark

    def mark(self, name: str) -> None:
        now = seconds_since_process_start()
        if now is None:
            return
        self.phases.append((name, now - self.elapsed))
        self.elapsed = now

    def summary(self) -> str:
        """``'imports 4.1, models 1.2, first step 3.0'`` (seconds)."""
        return ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phases)

    def as_dict(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.phases}
