"""Loss curve of the same distillation on 1 device and on N devices (same global batch).

A tiny-but-real run of minispec's trainer: random-initialised Llama-shaped teacher and student
(saved as HF directories, loaded by every rank), synthetic token data written in the Megatron
``.bin/.idx`` format (documents from a seeded sparse Markov chain, so there is something to
learn), KD + CE mixing (alpha 0.5) with an intermediate cosine loss through a learned
projection. The script launches itself under ``torchrun`` twice — ``--nproc-per-node 1`` and
``--nproc-per-node N`` — and prints both curves and their largest difference.

Only torch and transformers are needed (no dvc, dvclive, tensorboard or datasets)::

    PYTHONPATH=. python benchmarks/multi_gpu_curve.py --nproc 2                  # FSDP2
    PYTHONPATH=. python benchmarks/multi_gpu_curve.py --nproc 4 --strategy ddp
    PYTHONPATH=. python benchmarks/multi_gpu_curve.py --nproc 2 --cpu --tiny     # gloo on CPU

Exit status 0 when the largest train and validation loss differences are within
``--tolerance`` (default 1e-2 in bf16 on GPU, 1e-4 in fp32 on CPU), else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # hidden, layers (teacher, student), heads, kv heads, head_dim, ffn, vocab, seq, GBS, MBS
    "small": dict(
        hidden=512,
        teacher_layers=8,
        student_layers=4,
        student_hidden=384,
        heads=8,
        kv_heads=4,
        head_dim=64,
        ffn=1536,
        vocab=8192,
        seq=512,
        gbs=32,
        mbs=4,
    ),
    "tiny": dict(
        hidden=64,
        teacher_layers=4,
        student_layers=2,
        student_hidden=48,
        heads=4,
        kv_heads=2,
        head_dim=16,
        ffn=128,
        vocab=512,
        seq=64,
        gbs=8,
        mbs=2,
    ),
}


def llama(shape: dict, hidden: int, layers: int, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    heads = shape["heads"] * hidden // shape["hidden"]
    kv_heads = max(1, shape["kv_heads"] * hidden // shape["hidden"])
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=hidden,
        intermediate_size=shape["ffn"] * hidden // shape["hidden"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads if heads % kv_heads == 0 else 1,
        head_dim=shape["head_dim"],
        max_position_embeddings=shape["seq"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def markov_documents(vocab: int, count: int, length: int, seed: int):
    """Documents from a sparse random Markov chain: every token has 4 likely successors."""
    import numpy as np

    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, size=(vocab, 4))
    tokens = np.empty((count, length), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, vocab, size=count)
    for position in range(1, length):
        choice = rng.integers(0, 4, size=count)
        noise = rng.random(count) < 0.1
        tokens[:, position] = np.where(
            noise, rng.integers(0, vocab, size=count), successors[tokens[:, position - 1], choice]
        )
    return tokens


def prepare(directory: Path, shape: dict) -> None:
    import numpy as np

    from minispec.engines.torch.indexed import IndexedDatasetWriter, token_dtype_for

    for split, count, seed in (
        ("train", 4 * shape["gbs"] * 40, 1),
        ("validation", 4 * shape["gbs"], 2),
    ):
        with IndexedDatasetWriter(
            directory / f"{split}_text_document", token_dtype_for(shape["vocab"])
        ) as writer:
            for document in markov_documents(shape["vocab"], count, shape["seq"] // 2, seed):
                writer.add_document(document.astype(np.int64))
    llama(shape, shape["hidden"], shape["teacher_layers"], seed=3).save_pretrained(
        directory / "teacher"
    )
    llama(shape, shape["student_hidden"], shape["student_layers"], seed=4).save_pretrained(
        directory / "student"
    )


def worker(directory: Path, shape: dict, args) -> None:
    """One rank of a torchrun job: train and (rank 0) write the curves."""
    import torch

    from minispec.engines.torch import distributed
    from minispec.engines.torch.modeling import load_model
    from minispec.engines.torch.train import LossConfig, TrainConfig, Trainer, fit
    from minispec.engines.torch.windows import TokenWindows

    ctx = distributed.setup("cpu" if args.cpu else "auto")
    precision = "bf16" if ctx.device.type == "cuda" else "fp32"
    cfg = TrainConfig(
        stage="multi-gpu-curve",
        section="distill",
        steps=args.steps,
        global_batch_size=shape["gbs"],
        micro_batch_size=shape["mbs"],
        seq_length=shape["seq"],
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=3,
        val_interval=max(1, args.steps // 4),
        val_batches=1,
        checkpoint_interval=10**9,
        seed=1234,
        precision=precision,
        strategy=args.strategy,
        loss=LossConfig(
            kind="logits_kl",
            temperature=1.0,
            alpha=0.5,
            intermediate=[(shape["student_layers"], shape["teacher_layers"])],
            intermediate_weight=0.5,
        ),
    )
    load_device = "cpu" if ctx.enabled and args.strategy == "fsdp" else ctx.device
    student = load_model(directory / "student", dtype=torch.float32, device=load_device)
    teacher_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    teacher = load_model(directory / "teacher", dtype=teacher_dtype, device=load_device)
    trainer = Trainer(cfg, student, teacher, vocab_size=shape["vocab"], ctx=ctx)
    train = TokenWindows(directory / "train_text_document", shape["seq"])
    val = TokenWindows(directory / "validation_text_document", shape["seq"])
    run = fit(trainer, train, val)
    if ctx.is_main:
        tokens_per_second = run.trained_tokens / run.train_seconds
        result = {
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "precision": precision,
            "strategy": args.strategy,
            "tokens_per_second": tokens_per_second,
            "history": run.history,
        }
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    ctx.barrier()
    ctx.shutdown()


def launch(directory: Path, nproc: int, args, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        str(Path(__file__).resolve()),
        "--worker",
        str(directory),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--strategy",
        args.strategy,
        "--shape",
        args.shape,
    ]
    if args.cpu:
        command.append("--cpu")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if args.cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


def compare(one: dict, many: dict) -> dict:
    def series(result, kind):
        return {r["step"]: r["loss"] for r in result["history"][kind]}

    report = {}
    for kind in ("train", "val"):
        a, b = series(one, kind), series(many, kind)
        if a.keys() != b.keys():
            raise SystemExit(f"{kind} steps differ: {sorted(a)} vs {sorted(b)}")
        report[kind] = {
            "steps": sorted(a),
            "one": [a[s] for s in sorted(a)],
            "many": [b[s] for s in sorted(a)],
            "max_abs_diff": max(abs(a[s] - b[s]) for s in a),
        }
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="devices of the multi-device run")
    parser.add_argument("--strategy", choices=["fsdp", "ddp"], default="fsdp")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    parser.add_argument(
        "--tiny", action="store_const", const="tiny", dest="shape", help="same as --shape tiny"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="run on CPU with gloo (a check of the script)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=None, help="largest allowed loss difference"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep the data, models and curves in this directory"
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    if args.worker is not None:
        worker(args.worker, shape, args)
        return 0

    import torch

    if not args.cpu and torch.cuda.device_count() < args.nproc:
        raise SystemExit(
            f"--nproc {args.nproc} needs {args.nproc} GPUs, {torch.cuda.device_count()} visible (use --cpu to test on CPU)"
        )
    tolerance = args.tolerance if args.tolerance is not None else (1e-4 if args.cpu else 1e-2)
    with tempfile.TemporaryDirectory(prefix="minispec-curve-") as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        prepare(directory, shape)
        one = launch(directory, 1, args, directory / "curve-1.json")
        many = launch(directory, args.nproc, args, directory / f"curve-{args.nproc}.json")
    report = compare(one, many)
    ok = all(report[kind]["max_abs_diff"] <= tolerance for kind in ("train", "val"))
    summary = {
        "benchmark": "multi_gpu_curve",
        "device": torch.cuda.get_device_name(0) if not args.cpu else "cpu",
        "nproc": args.nproc,
        "strategy": args.strategy,
        "shape": args.shape,
        "precision": one["precision"],
        "tokens_per_second": {
            "1": one["tokens_per_second"],
            str(args.nproc): many["tokens_per_second"],
        },
        "max_abs_diff": {kind: report[kind]["max_abs_diff"] for kind in ("train", "val")},
        "tolerance": tolerance,
        "ok": ok,
        "curves": report,
    }
    print(json.dumps(summary))
    print(f"\n{'step':>5s} {'train 1 dev':>12s} {f'train {args.nproc} dev':>12s} {'|diff|':>10s}")
    for step, a, b in zip(
        report["train"]["steps"], report["train"]["one"], report["train"]["many"], strict=True
    ):
        print(f"{step:5d} {a:12.6f} {b:12.6f} {abs(a - b):10.2e}")
    print(f"\n{'step':>5s} {'val 1 dev':>12s} {f'val {args.nproc} dev':>12s} {'|diff|':>10s}")
    for step, a, b in zip(
        report["val"]["steps"], report["val"]["one"], report["val"]["many"], strict=True
    ):
        print(f"{step:5d} {a:12.6f} {b:12.6f} {abs(a - b):10.2e}")
    print(
        f"\nmax |diff|: train {report['train']['max_abs_diff']:.2e}, val {report['val']['max_abs_diff']:.2e} (tolerance {tolerance:g}) -> {'OK' if ok else 'MISMATCH'}"
    )
    print(
        f"tokens/s: 1 device {one['tokens_per_second']:.0f}, {args.nproc} devices {many['tokens_per_second']:.0f}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
