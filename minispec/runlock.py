"""One ``minispec run`` per pipeline directory at a time.

Two runs in one directory corrupt each other: the second rewrites ``params.yaml``/``dvc.yaml``
while the first one's stage is running, and DVC then records the second's params for the
first's result, so ``status`` calls a model "up to date" for settings it was never trained
with. DVC's own lock is taken too late (after minispec has compiled). So ``run`` takes this
lock before it writes anything, and a second run refuses at once.

The lock is an advisory ``flock`` on the pipeline directory: the kernel drops it when the
holder exits, even after ``kill -9``, so nothing stale ever blocks a later run.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from minispec.errors import PipelineError


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[Path]:
    """Hold the run lock of ``out_dir`` or raise PipelineError at once.

    The lock is a ``flock`` on the directory itself, so no file is written for it; a directory
    created here is removed again if the run ends with an error before writing anything.
    """
    import fcntl

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise PipelineError(
            f"cannot lock {out_dir} for this run: {exc.strerror or exc}",
            hint="choose a writable directory with --out",
        ) from None
    ok = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"another `minispec run` is running in {out_dir}; nothing was changed",
                hint="wait for it to finish (or stop it), or run this one with another --out",
            ) from None
        yield out_dir
        ok = True
    finally:
        os.close(fd)  # releases the flock
        if created and not ok:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when still empty


def holding_run_lock(func):
    """Decorator of ``run(loaded, out_dir, ..., dry=...)``: the lock around everything but a dry run."""

    @functools.wraps(func)
    def wrapper(loaded, out_dir, *args, **kwargs):
        if kwargs.get("dry"):
            return func(loaded, out_dir, *args, **kwargs)
        with run_lock(Path(out_dir).absolute()):
            return func(loaded, out_dir, *args, **kwargs)

    return wrapper
