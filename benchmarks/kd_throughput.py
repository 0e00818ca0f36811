"""Throughput of one knowledge-distillation step: minispec's trainer vs a plain HF baseline.

Random-initialised Llama-shaped models: the teacher shaped like Llama-3.2-1B (hidden 2048, 16
layers, 32 heads, 8 KV heads, head_dim 64, FFN 8192, vocab 128256, tied embeddings), the student
the same with 8 layers; sequence 2048, micro batch 4, bf16 autocast (fp32 master weights, fused
AdamW), forward KL(teacher ‖ student) at T = 1 on the logits.

- ``ours``: :class:`minispec.engines.torch.train.Trainer` — its ``train_step`` exactly as the
  distill stage runs it (teacher in bf16 under no_grad, chunked fp32 KL that stores the logits'
  gradient in bf16, gradient clipping at 1.0 as the stage default, no host synchronisation).
- ``baseline``: the plain step: ``student(x).logits``, ``teacher(x).logits`` under no_grad,
  ``F.kl_div(log_softmax(s.float()), log_softmax(t.float()), log_target=True)`` on full logits,
  ``backward``, fused AdamW ``step``.

Both run in the same process, one after the other. FLOPs per token: ``2·N_teacher + 6·N_student``
(N = parameters of every matmul, LM head included, embedding lookup excluded) plus attention
``4·S·d_attn`` per teacher layer and ``12·S·d_attn`` per student layer (causal attention counted
in full, as PaLM's MFU does). MFU = achieved FLOP/s / the bf16 matmul rate of this card measured
at the start of the run with a large ``torch.matmul``.

Needs only torch and transformers (no dvc, dvclive, tensorboard or datasets)::

    PYTHONPATH=. python benchmarks/kd_throughput.py            # GPU, full size
    PYTHONPATH=. python benchmarks/kd_throughput.py --compile  # both with torch.compile
    PYTHONPATH=. python benchmarks/kd_throughput.py --ours-fp8 --ours-compile on  # FP8 GEMMs (torchao)
    PYTHONPATH=. python benchmarks/kd_throughput.py --tiny     # CPU smoke test

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minispec.engines.torch.train import LossConfig, TrainConfig, Trainer  # noqa: E402

FULL = dict(
    hidden=2048,
    teacher_layers=16,
    student_layers=8,
    heads=32,
    kv_heads=8,
    head_dim=64,
    ffn=8192,
    vocab=128256,
    seq=2048,
    micro_batch=4,
)
# SmolLM2-135M (the quickstart's teacher) → its 20-layer depth student, the quickstart's windows
QUICKSTART = dict(
    hidden=576,
    teacher_layers=30,
    student_layers=20,
    heads=9,
    kv_heads=3,
    head_dim=64,
    ffn=1536,
    vocab=49152,
    seq=256,
    micro_batch=8,
)
# the seed's job: Llama-3.1-8B → Minitron-4B-width (hidden 3072, MLP 9216, 32 layers), seq 8192
SEED = dict(
    hidden=4096,
    teacher_layers=32,
    student_layers=32,
    student_hidden=3072,
    student_ffn=9216,
    heads=32,
    kv_heads=8,
    head_dim=128,
    ffn=14336,
    vocab=128256,
    seq=8192,
    micro_batch=1,
    tie=False,
)
# issue 15's study students at its batch (64 × 256): w50 is narrow (3 heads, 1 KV group, MLP
# 856: the first study run's 853 sent its MLP matmuls to cuBLAS's unaligned kernels), d15
# keeps the teacher's layer shape with half the layers
STUDY_W50 = dict(
    QUICKSTART,
    student_layers=30,
    student_heads=3,
    student_kv_heads=1,
    student_ffn=856,
    micro_batch=64,
)
STUDY_D15 = dict(QUICKSTART, student_layers=15, micro_batch=64)
SHAPES = {
    "kd": FULL,
    "quickstart": QUICKSTART,
    "seed": SEED,
    "study_w50": STUDY_W50,
    "study_d15": STUDY_D15,
}
TINY = dict(
    hidden=64,
    teacher_layers=4,
    student_layers=2,
    heads=4,
    kv_heads=2,
    head_dim=16,
    ffn=128,
    vocab=512,
    seq=64,
    micro_batch=2,
)


def model_shape(shape: dict, role: str) -> dict:
    """The teacher's or the student's own dimensions (a width-pruned student is narrower)."""
    if role == "teacher":
        return {**shape, "layers": shape["teacher_layers"]}
    return {
        **shape,
        "layers": shape["student_layers"],
        "hidden": shape.get("student_hidden", shape["hidden"]),
        "ffn": shape.get("student_ffn", shape["ffn"]),
        "heads": shape.get("student_heads", shape["heads"]),
        "kv_heads": shape.get("student_kv_heads", shape["kv_heads"]),
    }


def llama_config(shape: dict, layers: int, role: str = "teacher"):
    from transformers import LlamaConfig

    shape = model_shape(shape, role)
    return LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["head_dim"],
        max_position_embeddings=max(shape["seq"], 2048),
        tie_word_embeddings=shape.get("tie", True),
        rope_theta=500000.0,
        use_cache=False,
    )


def build_model(shape: dict, role: str, dtype: torch.dtype, device: torch.device, seed: int):
    """A random-initialised Llama of the shape's teacher or student dimensions."""
    from transformers import AutoModelForCausalLM

    layers = shape[f"{role}_layers"]
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            llama_config(shape, layers, role), attn_implementation="sdpa", dtype=dtype
        )
    return model.to(device)


def matmul_parameters(model) -> int:
    """Parameters that take part in matmuls: every Linear (q/k/v/o, MLP, LM head)."""
    return sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear)
    )


def flops_per_token(shape: dict) -> dict:
    teacher = matmul_parameters_from_shape(shape, shape["teacher_layers"], "teacher")
    student = matmul_parameters_from_shape(shape, shape["student_layers"], "student")
    student_shape = model_shape(shape, "student")
    attention = (
        4 * shape["seq"] * shape["heads"] * shape["head_dim"] * shape["teacher_layers"]
        + 12 * shape["seq"] * student_shape["heads"] * shape["head_dim"] * shape["student_layers"]
    )
    return {
        "teacher_matmul_params": teacher,
        "student_matmul_params": student,
        "flops_per_token": 2 * teacher + 6 * student + attention,
    }


def matmul_parameters_from_shape(shape: dict, layers: int, role: str = "teacher") -> int:
    shape = model_shape(shape, role)
    h, f, hd = shape["hidden"], shape["ffn"], shape["head_dim"]
    attention = h * shape["heads"] * hd * 2 + h * shape["kv_heads"] * hd * 2  # q, o; k, v
    mlp = 3 * h * f
    return layers * (attention + mlp) + h * shape["vocab"]  # + LM head


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    synchronize(device)
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def time_steps(step, device: torch.device, warmup: int, steps: int) -> dict:
    """Seconds per timed step, and every step's loss (read after the clock stops: no host sync
    inside the timed loop). Both loops start from the same weights and see the same batch, so
    their loss sequences compare the arithmetic (bf16 vs FP8, chunked vs full logits)."""
    losses = [step() for _ in range(warmup)]
    synchronize(device)
    start = time.perf_counter()
    losses += [step() for _ in range(steps)]
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {"seconds_per_step": seconds, "losses": [float(loss) for loss in losses]}


def run_ours(shape, args, device, precision, data) -> dict:
    cfg = TrainConfig(
        stage="benchmark",
        section="distill",
        steps=10**6,
        global_batch_size=shape["micro_batch"],
        micro_batch_size=shape["micro_batch"],
        seq_length=shape["seq"],
        lr=1e-5,
        min_lr=1e-6,
        warmup_steps=0,
        val_interval=10**6,
        val_batches=1,
        checkpoint_interval=10**6,
        grad_clip=args.grad_clip,
        precision="fp8" if args.ours_fp8 else precision,
        loss=LossConfig(kind="logits_kl", temperature=1.0, alpha=1.0),
        compile=args.ours_compile == "on",
        cuda_graphs=args.ours_compile == "cuda_graphs",
        activation_checkpointing=args.checkpointing,
    )
    teacher_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    student = build_model(shape, "student", torch.float32, device, seed=1)
    teacher = build_model(shape, "teacher", teacher_dtype, device, seed=2)
    expected = (
        matmul_parameters_from_shape(shape, shape["student_layers"], "student"),
        matmul_parameters_from_shape(shape, shape["teacher_layers"], "teacher"),
    )
    assert (matmul_parameters(student), matmul_parameters(teacher)) == expected, (
        "FLOP count does not match the models"
    )
    trainer = Trainer(cfg, student, teacher, vocab_size=shape["vocab"])
    samples = data.cpu()
    # train_step returns (loss, kd, ce, intermediate) token means: keep the loss
    result = time_steps(
        lambda: trainer.train_step(samples, 1e-5)[0].clone(), device, args.warmup, args.steps
    )
    if args.profile:
        result["profile"] = profile_steps(
            lambda: trainer.train_step(samples, 1e-5), device, args.profile
        )
    return result


def profile_steps(step, device: torch.device, steps: int) -> dict:
    """Where a step's time goes: the kernels' device time against the wall time (a device busy
    far less than the wall clock is launch- or host-bound), and the top kernels by device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    device_time = lambda e: getattr(e, "self_device_time_total", 0) or 0  # noqa: E731 (µs)
    kernels = sorted(events, key=device_time, reverse=True)
    busy = sum(device_time(e) for e in events) / 1e6 / steps
    top = [
        {"name": e.key[:90], "ms_per_step": device_time(e) / 1e3 / steps, "calls": e.count // steps}
        for e in kernels[:25]
        if device_time(e) > 0
    ]
    print(f"profile: wall {wall * 1e3:.1f} ms/step, device busy {busy * 1e3:.1f} ms/step")
    for row in top:
        print(f"  {row['ms_per_step']:8.2f} ms  {row['calls']:5d}×  {row['name']}")
    return {"wall_ms_per_step": wall * 1e3, "device_busy_ms_per_step": busy * 1e3, "top": top}


def run_baseline(shape, args, device, precision, data) -> dict:
    student = build_model(shape, "student", torch.float32, device, seed=1).train()
    teacher = build_model(
        shape,
        "teacher",
        torch.bfloat16 if precision == "bf16" else torch.float32,
        device,
        seed=2,
    ).eval()
    teacher.requires_grad_(False)
    if args.baseline_checkpointing:
        student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if args.compile:
        student.compile()
        teacher.compile()
    optimizer = torch.optim.AdamW(
        student.parameters(),
        lr=1e-5,
        betas=(0.9, 0.95),
        weight_decay=0.01,
        fused=device.type == "cuda",
    )
    inputs = data[:, :-1].to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=inputs).logits
            student_logits = student(input_ids=inputs).logits
            vocab = student_logits.shape[-1]
            loss = F.kl_div(
                F.log_softmax(student_logits.float().view(-1, vocab), dim=-1),
                F.log_softmax(teacher_logits.float().view(-1, vocab), dim=-1),
                log_target=True,
                reduction="batchmean",
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    result = time_steps(step, device, args.warmup, args.steps)
    if args.profile:
        result["profile"] = profile_steps(step, device, args.profile)
    return result


def measure(name, runner, shape, args, device, precision, data, flops, peak) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = runner(shape, args, device, precision, data)
    tokens = shape["micro_batch"] * shape["seq"]
    result["tokens_per_second"] = tokens / result["seconds_per_step"]
    result["tflops"] = result["tokens_per_second"] * flops / 1e12
    result["mfu"] = result["tokens_per_second"] * flops / peak
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes on CPU (a smoke test of the script)"
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="kd",
        help="kd: 1.2B→0.75B at seq 2048 (default); quickstart: SmolLM2-135M → 20 layers at seq 256; seed: Llama-3.1-8B → Minitron-4B at seq 8192; study_w50/study_d15: issue 15's students at micro batch 64",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the baseline's models (ours: see --ours-compile)",
    )
    parser.add_argument(
        "--ours-compile",
        choices=["off", "on", "cuda_graphs"],
        default=None,
        help="our trainer: plain kernels (off), torch.compile (on) or CUDA graphs of plain kernels (cuda_graphs); default: on with --compile, else off",
    )
    parser.add_argument(
        "--checkpointing",
        nargs="?",
        type=int,
        const=True,
        default=False,
        metavar="LAYERS",
        help="activation checkpointing in our trainer (resources.activation_checkpointing): every layer, or the first LAYERS",
    )
    parser.add_argument(
        "--ours-fp8",
        action="store_true",
        help="our trainer with resources.precision fp8 (torchao FP8 GEMMs in the decoder layers of both models; the baseline stays bf16)",
    )
    parser.add_argument(
        "--baseline-checkpointing",
        action="store_true",
        help="gradient checkpointing in the baseline (as a plain loop needs for the seed shape)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 10 on GPU, 3 with --tiny)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 3, 1 with --tiny)"
    )
    parser.add_argument("--only", choices=["ours", "baseline", "both"], default="both")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="after timing, profile this many steps of each loop and print the top kernels",
    )
    parser.add_argument("--seq", type=int, default=None, help="override the sequence length")
    parser.add_argument(
        "--micro-batch", type=int, default=None, help="override the micro batch size"
    )
    parser.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        help="our trainer's gradient clipping (stage default 1.0; 0 disables)",
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    shape = dict(TINY if args.tiny else SHAPES[args.shape])
    if args.ours_compile is None:
        args.ours_compile = "on" if args.compile else "off"
    if args.seq:
        shape["seq"] = args.seq
    if args.micro_batch:
        shape["micro_batch"] = args.micro_batch
    args.steps = args.steps or (3 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    precision = "bf16" if device.type == "cuda" else "fp32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (none in bf16 matmuls)
    peak_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    peak = peak_matmul_flops(device, peak_dtype, 8192 if device.type == "cuda" else 512)
    counts = flops_per_token(shape)
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(
        0, shape["vocab"], (shape["micro_batch"], shape["seq"] + 1), generator=generator
    )

    results = {}
    runners = {"ours": run_ours, "baseline": run_baseline}
    for name in ("ours", "baseline"):
        if args.only in (name, "both"):
            results[name] = measure(
                name,
                runners[name],
                shape,
                args,
                device,
                precision,
                data,
                counts["flops_per_token"],
                peak,
            )

    report = {
        "benchmark": "kd_throughput",
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "precision": precision,
        "compile": args.compile,
        "ours_compile": args.ours_compile,
        "ours_fp8": args.ours_fp8,
        "checkpointing": {"ours": args.checkpointing, "baseline": args.baseline_checkpointing},
        "shape_name": "tiny" if args.tiny else args.shape,
        "shape": shape,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_matmul_tflops": peak / 1e12,
        **counts,
        "results": results,
    }
    if "ours" in results and "baseline" in results:
        report["speedup"] = (
            results["ours"]["tokens_per_second"] / results["baseline"]["tokens_per_second"]
        )
    print(json.dumps(report))
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    print(
        f"\nKD step on {report['device']} ({report['precision']}, compile={report['compile']}), seq {report['shape']['seq']} × micro batch {report['shape']['micro_batch']}"
    )
    print(
        f"measured bf16/fp32 matmul peak: {report['peak_matmul_tflops']:.1f} TFLOP/s; {report['flops_per_token'] / 1e9:.3f} GFLOP per token"
    )
    print(f"{'':10s} {'tokens/s':>12s} {'TFLOP/s':>9s} {'MFU':>7s} {'s/step':>9s} {'peak GiB':>9s}")
    for name, r in report["results"].items():
        memory = f"{r['peak_memory_gib']:9.1f}" if "peak_memory_gib" in r else f"{'-':>9s}"
        print(
            f"{name:10s} {r['tokens_per_second']:12.0f} {r['tflops']:9.1f} {100 * r['mfu']:6.1f}% {r['seconds_per_step']:9.4f} {memory}"
        )
    if "speedup" in report:
        print(f"ours / baseline: {report['speedup']:.3f}×")
    for name, r in report["results"].items():
        print(f"{name} loss per step: " + " ".join(f"{loss:.4f}" for loss in r["losses"]))


if __name__ == "__main__":
    raise SystemExit(main())
