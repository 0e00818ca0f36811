"""Start-up of the light commands: ``minispec lint specs/quickstart.yaml`` and ``minispec schema``.

Each command runs in a fresh process several times; the median wall time is compared with the
0.5 s budget (issue 2). A second check runs each command inside one process and lists which
heavy libraries it imported: torch and transformers must not be among them.

    python benchmarks/startup.py [--repeats 15]

Exit status 1 when a budget or an import check fails. Run from the repository root (the
worktree's code is put first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 0.5
COMMANDS = {
    "lint specs/quickstart.yaml": ["lint", "specs/quickstart.yaml"],
    "schema": ["schema"],
}
FORBIDDEN = ("torch", "transformers")
WATCHED = ("torch", "transformers", "dvc", "datasets", "numpy", "gguf", "safetensors", "pandas", "jsonschema")

PROBE = """
import sys
from minispec.cli import cli
try:
    cli(sys.argv[1:], prog_name="minispec", standalone_mode=False)
except SystemExit:
    pass
import json
watched = {watched!r}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set(watched))), file=sys.stderr)
"""


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def launcher() -> list[str]:
    """The console script next to this interpreter (what users run), else ``python -m minispec``."""
    script = Path(sys.executable).with_name("minispec")
    if script.exists():
        return [str(script)]
    found = shutil.which("minispec")
    return [found] if found else [sys.executable, "-m", "minispec"]


def wall_times(argv: list[str], repeats: int) -> list[float]:
    times = []
    env = environment()
    for _ in range(repeats):
        start = time.perf_counter()
        process = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if process.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed ({process.returncode}):\n{process.stderr.decode()}")
    return times


def imported_heavy_modules(args: list[str]) -> list[str]:
    probe = PROBE.format(watched=WATCHED)
    process = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=REPO, env=environment(), capture_output=True, text=True, check=False
    )
    return json.loads(process.stderr.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    baseline = statistics.median(wall_times([sys.executable, "-c", "pass"], args.repeats))
    print(f"{'python -c pass (interpreter alone)':<40} median {baseline:.3f} s")
    failed = False
    for name, command in COMMANDS.items():
        times = wall_times(launcher() + command, args.repeats)
        median = statistics.median(times)
        heavy = imported_heavy_modules(command)
        over = median > BUDGET_S
        forbidden = [m for m in heavy if m in FORBIDDEN]
        failed |= over or bool(forbidden)
        print(
            f"minispec {name:<31} median {median:.3f} s  min {min(times):.3f}  max {max(times):.3f}  "
            f"({args.repeats} runs; budget {BUDGET_S} s: {'OVER' if over else 'ok'})"
        )
        print(f"{'':<40} heavy modules imported: {', '.join(heavy) or 'none'}{'  <- FORBIDDEN' if forbidden else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
