"""Issue 3 speed targets: `minispec compile` on the shipped specs < 1 s; an up-to-date
`minispec run` < 3 s. Both timed as a user sees them: a fresh `minispec` process each time.

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/compile_speed.py [--repeat 5]

The up-to-date state is a real DVC repository in which every stage of the quickstart pipeline
is recorded as run (the outputs written and `dvc commit`ted, as in tests/compile), so `dvc
repro` has the whole pipeline to check and nothing to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "compile"))

from pipeline_harness import QUICKSTART, Runner, compile_into, dvc, env  # noqa: E402

SPECS = sorted((REPO / "specs").glob("*.yaml"))
COMPILE_TARGET_S = 1.0
RUN_TARGET_S = 3.0


def timed(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "minispec", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - start, result


def bench_compile(repeat: int) -> bool:
    ok = True
    for spec in SPECS:
        with tempfile.TemporaryDirectory() as out:
            times, result = [], None
            for _ in range(repeat):
                seconds, result = timed(["compile", str(spec), "--out", out], REPO)
                times.append(seconds)
            median = statistics.median(times)
            if result.returncode != 0:
                reason = result.stderr.strip().splitlines()[0]
                print(
                    f"compile {spec.name:<28} not compilable here ({reason}); fails in {median:.2f} s"
                )
                continue
            verdict = "ok" if median < COMPILE_TARGET_S else "TOO SLOW"
            print(
                f"compile {spec.name:<28} median {median:.2f} s  min {min(times):.2f} s  max {max(times):.2f} s  (target < {COMPILE_TARGET_S} s: {verdict})"
            )
            ok = ok and median < COMPILE_TARGET_S
    return ok


def bench_up_to_date_run(repeat: int) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pipeline"
        data = REPO.parent / "shared" / "data" / "wikitext-103-v1"
        override = f"data.source={data}"
        compiled = compile_into(QUICKSTART, root, [override])
        dvc("init", "--no-scm", "-q", cwd=root)
        Runner(root).run_all(compiled.stages)
        times = []
        for _ in range(repeat):
            seconds, result = timed(
                ["run", str(QUICKSTART), "--out", str(root), "--set", override], root
            )
            if result.returncode != 0 or "0 stages ran, 13 cached" not in result.stdout:
                print(result.stdout, result.stderr)
                raise SystemExit("the pipeline was not up to date")
            times.append(seconds)
    median = statistics.median(times)
    verdict = "ok" if median < RUN_TARGET_S else "TOO SLOW"
    print(
        f"run (13 stages up to date)          median {median:.2f} s  min {min(times):.2f} s  max {max(times):.2f} s  (target < {RUN_TARGET_S} s: {verdict})"
    )
    return median < RUN_TARGET_S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    ok = bench_compile(args.repeat)
    ok = bench_up_to_date_run(args.repeat) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
