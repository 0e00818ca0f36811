"""One ``minispec run`` per pipeline directory at a time.

Two runs in one directory corrupt each other: the second rewrites ``params.yaml``/``dvc.yaml``
while the first one's stage is running, and DVC then records the second's params for the
first's result, so ``status`` calls a model "up to date" for settings it was never trained
with. DVC's own lock is taken too late (after minispec has compiled). So ``run`` takes this
lock before it writes anything, and a second run refuses at once, naming the first.

The lock is an advisory ``flock`` on ``<out>/.minispec-run.lock``: the kernel drops it when the
holder exits, even after ``kill -9``, so a stale file never blocks a later run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

from minispec.errors import PipelineError

LOCK_NAME = ".minispec-run.lock"


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[Path]:
    """Hold the run lock of ``out_dir`` (created if needed) or raise PipelineError at once."""
    import fcntl

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PipelineError(
            f"cannot lock {out_dir} for this run: {exc.strerror or exc}",
            hint="choose a writable directory with --out",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"another `minispec run` is running in {out_dir} ({_holder(fd)}); nothing was changed",
                hint="wait for it to finish (or stop it), or run this one with another --out",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield out_dir / LOCK_NAME
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"


def holding_run_lock(func):
    """Decorator of ``run(loaded, out_dir, ..., dry=...)``: the lock around everything but a dry run."""

    @functools.wraps(func)
    def wrapper(loaded, out_dir, *args, **kwargs):
        if kwargs.get("dry"):
            return func(loaded, out_dir, *args, **kwargs)
        with run_lock(Path(out_dir).absolute()):
            return func(loaded, out_dir, *args, **kwargs)

    return wrapper
