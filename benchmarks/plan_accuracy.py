"""How close `minispec plan`'s estimates are to measured runs (peak memory within ±25 %, time
within ±50 %). The measured figures are those recorded in benchmarks/RESULTS.md (CPU
quickstart; H200 KD throughput) and issue 11 (Llama-3.1-8B → Minitron-4B on one H200, a plain
HF loop with gradient checkpointing and full fp32 logits). No model runs here.

    PYTHONPATH=$PWD python benchmarks/plan_accuracy.py
"""

from __future__ import annotations

from dataclasses import replace

from minispec.plan import (
    FORWARD_SPEEDUP,
    PLAIN_LOOP_LOGIT_BYTES,
    GiB,
    Shape,
    device_from,
    forward_flops_per_token,
    forward_memory,
    training_flops_per_token,
    training_memory,
)

SMOLLM2 = Shape(30, 576, 1536, 9, 3, 64, 49152, True)
DEPTH20 = replace(SMOLLM2, layers=20)
WIDTH = replace(SMOLLM2, hidden=384, ffn=1024, heads=6)
LLAMA_1B = Shape(16, 2048, 8192, 32, 8, 64, 128256, True)
LLAMA_8B = Shape(32, 4096, 14336, 32, 8, 128, 128256, False)
MINITRON_4B = replace(LLAMA_8B, hidden=3072, ffn=9216)


def train_seconds(student, teacher, steps, gbs, seq, val_batches, val_interval, device):
    tokens = steps * gbs * seq
    val = (steps // val_interval + 1) * val_batches * gbs * seq
    flops = tokens * training_flops_per_token(student, teacher, seq)
    flops += val * forward_flops_per_token(student, seq)
    return flops / device.effective_flops


def rows():
    cpu = device_from("cpu")
    h200 = device_from("h200")
    out = []
    # -- CPU memory (RESULTS.md "Peak memory of the CPU stages", /usr/bin/time -v, GB = 1e9)
    for mb, measured in ((2, 3.65e9), (4, 4.62e9)):
        est = sum(training_memory(SMOLLM2, None, micro_batch=mb, seq=256, device=cpu).values())
        out.append(
            (f"CPU finetune SmolLM2-135M, micro batch {mb}", "peak memory", est, measured, 0.25)
        )
    for mb, measured in ((2, 3.54e9), (4, 4.43e9)):
        est = sum(training_memory(DEPTH20, SMOLLM2, micro_batch=mb, seq=256, device=cpu).values())
        out.append(
            (
                f"CPU distill@depth (99M student), micro batch {mb}",
                "peak memory",
                est,
                measured,
                0.25,
            )
        )
    est = sum(forward_memory([SMOLLM2], 256, 4, cpu).values())
    out.append(("CPU evaluate (one model at a time)", "peak memory", est, 1.41e9, 0.25))
    # -- CPU time (RESULTS.md "The CPU quickstart end to end"); finetune calibrated the rate
    out.append(
        (
            "CPU finetune, 20 steps (calibrates the rate)",
            "time s",
            train_seconds(SMOLLM2, None, 20, 8, 256, 4, 10, cpu),
            386.0,
            0.5,
        )
    )
    out.append(
        (
            "CPU distill@depth, 30 steps",
            "time s",
            train_seconds(DEPTH20, SMOLLM2, 30, 8, 256, 4, 10, cpu),
            457.0,
            0.5,
        )
    )
    out.append(
        (
            "CPU distill@width, 30 steps",
            "time s",
            train_seconds(WIDTH, SMOLLM2, 30, 8, 256, 4, 10, cpu),
            321.0,
            0.5,
        )
    )
    fwd = cpu.effective_flops * FORWARD_SPEEDUP
    out.append(
        (
            "CPU importance, 64 × 256 tokens",
            "time s",
            64 * 256 * forward_flops_per_token(SMOLLM2, 256) / fwd,
            24.3,
            0.5,
        )
    )
    ev = (
        2
        * 64
        * 256
        * sum(forward_flops_per_token(m, 256) for m in (SMOLLM2, SMOLLM2, DEPTH20, WIDTH))
    )
    out.append(("CPU evaluate, 4 models × 2 splits × 64 windows", "time s", ev / fwd, 200.0, 0.5))
    # -- H200, minispec trainer (RESULTS.md "KD step throughput on one GPU"), seq 2048 × mb 4
    student = replace(LLAMA_1B, layers=8)
    est = sum(training_memory(student, LLAMA_1B, micro_batch=4, seq=2048, device=h200).values())
    out.append(
        (
            "H200 KD 1.24B → 0.75B, seq 2048 × 4, minispec trainer",
            "peak memory",
            est,
            29.5 * GiB,
            0.25,
        )
    )
    tps = h200.effective_flops / training_flops_per_token(student, LLAMA_1B, 2048)
    out.append(("H200 KD 1.24B → 0.75B, minispec trainer", "tokens/s", tps, 44940.0, 0.5))
    # -- H200, issue 11's plain loop: 8B teacher → Minitron-4B, seq 8192, checkpointing, fp32 logits
    est = sum(
        training_memory(
            MINITRON_4B,
            LLAMA_8B,
            micro_batch=1,
            seq=8192,
            device=h200,
            checkpointing=True,
            logit_bytes=PLAIN_LOOP_LOGIT_BYTES,
        ).values()
    )
    out.append(
        (
            "H200 KD 8B → 4B, seq 8192, plain HF loop (issue 11)",
            "peak memory",
            est,
            92.9 * GiB,
            0.25,
        )
    )
    tps = h200.effective_flops / training_flops_per_token(MINITRON_4B, LLAMA_8B, 8192)
    out.append(
        ("H200 KD 8B → 4B, plain HF loop (recompute not counted)", "tokens/s", tps, 7400.0, 0.5)
    )
    return out


def fmt(kind, value):
    if kind == "peak memory":
        return f"{value / GiB:.2f} GiB"
    if kind == "time s":
        return f"{value:.0f} s"
    return f"{value:,.0f}"


def main():
    print("| run | quantity | estimate | measured | error | within |")
    print("| --- | --- | ---: | ---: | ---: | :---: |")
    for name, kind, est, measured, tolerance in rows():
        error = est / measured - 1
        ok = "yes" if abs(error) <= tolerance else "**no**"
        print(
            f"| {name} | {kind} | {fmt(kind, est)} | {fmt(kind, measured)} | {error:+.0%} | {ok} (±{tolerance:.0%}) |"
        )


if __name__ == "__main__":
    main()
