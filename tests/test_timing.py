"""Stage start-up clock: measured from the process start, not from the import of the module."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from minispec.timing import StartupPhases, seconds_since_process_start


def test_clock_starts_with_the_process_not_the_import():
    code = (
        "import time; time.sleep(0.5)\n"
        "from minispec.timing import seconds_since_process_start\n"
        "print(seconds_since_process_start())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0.5 <= float(done.stdout) < 30


def test_phases_add_up_to_the_elapsed_time():
    phases = StartupPhases()
    phases.mark("before")
    time.sleep(0.2)
    phases.mark("sleep")
    names = [name for name, _ in phases.phases]
    assert names == ["before", "sleep"]
    assert phases.as_dict()["sleep"] >= 0.19
    assert sum(s for _, s in phases.phases) == pytest.approx(phases.elapsed, abs=1e-9)
    assert phases.elapsed <= seconds_since_process_start()
    assert phases.summary().startswith("before ") and ", sleep 0.2" in phases.summary()
