"""``minispec plan SPEC``: what each stage will cost before anything runs.

For every stage: peak memory (weights, gradients, optimizer state, activations at the micro
batch, logits, runtime), FLOPs, time on a device and disk for its outputs, from the spec and
the teacher's shapes (the same reading lint does: config.json or GGUF metadata, never weights).
Nothing here imports torch unless a matmul rate is measured (:func:`measure_matmul_tflops`).

The model of a training step (the torch engine's trainer; ``benchmarks/plan_accuracy.py``
compares it with measured runs, ``benchmarks/RESULTS.md``):

- trained model: fp32 master weights, fp32 gradients, AdamW's two fp32 moments = 16 B/param,
  sharded over ``devices`` with FSDP (the stage default), replicated with DDP;
- teacher (distill): forward only, in bf16 on GPU (fp32 on CPU);
- activations kept for backward, per token per decoder layer, SwiGLU Llama layout:
  ``8·h + 2·kv + 4·f`` elements in the compute dtype plus two fp32 norm inputs (``2·h``·4 B);
  with activation checkpointing only each checkpointed layer's input is kept (plus one layer's
  worth when any is);
- logits: per token ``V`` elements × bytes (the trainer's chunked KD loss: student logits and
  their gradient in the compute dtype, teacher logits, an fp32 chunk; a plain loop that
  materialises fp32 logits, softmaxes and gradients holds about 22 B per element);
- runtime: CUDA context and allocator slack (1.5 GiB) or the Python/torch process (0.5 GB).

FLOPs per trained token: 6·N_student + 2·N_teacher matmul parameters (the LM head included,
the embedding lookup not) plus causal attention ``2·s·d_attn`` per layer forward (×3 with
backward). Time = FLOPs / (matmul rate × efficiency), the efficiency measured once per device
class (GPU: 0.45, the trainer's MFU on an H200; CPU: see RESULTS.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from minispec.engines import get_engine
from minispec.spec.model import checkpointed_layers

GiB = 1024**3

# name: (memory in bytes, bf16/fp32 dense matmul rate in TFLOP/s as measured or spec'd, training
# efficiency, description). GPU rates are measured torch.matmul rates (bf16), not datasheet peaks.
DEVICES: dict[str, tuple[float, float, float, str]] = {
    "h200": (139 * GiB, 790.0, 0.45, "NVIDIA H200 (141 GB; bf16 matmul 790 TFLOP/s measured)"),
    "h100": (79 * GiB, 790.0, 0.45, "NVIDIA H100 SXM (80 GB; same GH100 compute as the H200)"),
    "a100": (79 * GiB, 280.0, 0.45, "NVIDIA A100 80GB (bf16 matmul ~280 TFLOP/s)"),
    # the CPU "rate" is the effective rate of the quickstart's finetune stage on the 2-core dev
    # VM (calibrated there, checked on the other stages: benchmarks/plan_accuracy.py)
    "cpu": (0.0, 0.118, 1.0, "CPU (fp32; 0.118 TFLOP/s effective: the 2-core dev VM)"),
}
# forward-only passes (no autograd, no optimizer) run this much faster than a training step's
# FLOPs suggest; read from the CPU quickstart (importance, prune, evaluate vs finetune)
FORWARD_SPEEDUP = 1.25
CPU_RAW_MATMUL_EFFICIENCY = 0.75
GPU_RUNTIME = 1.5 * GiB
# evaluate without max_windows scores whole splits, whose size is unknown before tokenizing
ASSUMED_EVAL_WINDOWS = 1024
CPU_RUNTIME = 0.5e9
PLAIN_LOOP_LOGIT_BYTES = 22.0


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def params(self) -> int:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.groups)
        per_layer = attention + 3 * self.hidden * self.ffn + 2 * self.hidden
        embedding = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + self.hidden + embedding

    @property
    def matmul_params(self) -> int:
        """Parameters that multiply each token: everything but the input embedding lookup."""
        return self.params - (0 if self.tied else self.vocab * self.hidden)

    def attention_flops(self, seq: int) -> float:
        """Forward FLOPs per token of causal attention scores and mixing over all layers."""
        return 2.0 * seq * self.heads * self.head_dim * self.layers


@dataclass
class Device:
    name: str
    memory: float  # bytes
    tflops: float  # matmul rate
    efficiency: float
    description: str
    gpu: bool

    @property
    def effective_flops(self) -> float:
        return self.tflops * 1e12 * self.efficiency


@dataclass
class StagePlan:
    name: str
    memory: dict[str, float] = field(default_factory=dict)  # part → bytes
    flops: float = 0.0
    seconds: float = 0.0
    disk: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return sum(self.memory.values())


# --------------------------------------------------------------------------------------------
# memory and FLOPs of one step


def activation_bytes(
    shape: Shape, tokens: int, compute_bytes: int, checkpointing: bool | int
) -> float:
    """``checkpointing``: True (every layer), or how many layers are checkpointed (0: none)."""
    per_layer_token = (
        8 * shape.hidden + 2 * shape.groups * shape.head_dim + 4 * shape.ffn
    ) * compute_bytes + 2 * shape.hidden * 4
    checkpointed = checkpointed_layers(checkpointing, shape.layers)
    # a checkpointed layer keeps its input, the others everything; one layer is recomputed at
    # a time when any is checkpointed
    stored = checkpointed * shape.hidden * compute_bytes + (shape.layers - checkpointed) * (
        per_layer_token
    )
    return tokens * (stored + (per_layer_token if checkpointed else 0))


def training_memory(
    student: Shape,
    teacher: Shape | None,
    *,
    micro_batch: int,
    seq: int,
    device: Device,
    devices: int = 1,
    strategy: str = "fsdp",
    precision: str = "auto",
    checkpointing: bool | int = False,
    logit_bytes: float | None = None,
) -> dict[str, float]:
    bf16 = device.gpu and precision != "fp32"
    compute = 2 if bf16 else 4
    shard = devices if strategy == "fsdp" else 1
    tokens = micro_batch * seq
    memory = {
        "weights": 4.0 * student.params / shard,
        "grads+optimizer": 12.0 * student.params / shard,
        "activations": activation_bytes(student, tokens, compute, checkpointing),
    }
    if teacher is not None:
        memory["teacher"] = (2.0 if bf16 else 4.0) * teacher.params
    if logit_bytes is None:
        # student logits + gradient (compute dtype), teacher logits, an fp32 chunk
        logit_bytes = (3 * compute + 2) if teacher is not None else (2 * compute + 4)
    memory["logits"] = logit_bytes * tokens * student.vocab
    memory["runtime"] = GPU_RUNTIME if device.gpu else CPU_RUNTIME
    return memory


def training_flops_per_token(student: Shape, teacher: Shape | None, seq: int) -> float:
    flops = 6.0 * student.matmul_params + 3.0 * student.attention_flops(seq)
    if teacher is not None:
        flops += 2.0 * teacher.matmul_params + teacher.attention_flops(seq)
    return flops


def forward_flops_per_token(shape: Shape, seq: int) -> float:
    return 2.0 * shape.matmul_params + shape.attention_flops(seq)


def forward_memory(shapes: list[Shape], seq: int, batch: int, device: Device) -> dict[str, float]:
    """Inference stages: the models held at once, one batch's largest layer and logits."""
    weight_bytes = 2.0 if device.gpu else 4.0
    largest = max(shapes, key=lambda s: s.params)
    compute = 2 if device.gpu else 4
    return {
        "weights": weight_bytes * sum(s.params for s in shapes),
        "activations": batch * seq * (4 * largest.hidden + 2 * largest.ffn) * compute,
        "logits": 4.0 * min(batch * seq, 2048) * largest.vocab,  # the chunked loss
        "runtime": GPU_RUNTIME if device.gpu else CPU_RUNTIME,
    }


# --------------------------------------------------------------------------------------------
# shapes from the spec


def teacher_shape(shapes) -> Shape:
    return Shape(
        layers=shapes.num_hidden_layers,
        hidden=shapes.hidden_size,
        ffn=shapes.intermediate_size,
        heads=shapes.num_attention_heads,
        groups=shapes.num_key_value_heads or shapes.num_attention_heads,
        head_dim=shapes.head_dim or shapes.hidden_size // shapes.num_attention_heads,
        vocab=shapes.vocab_size,
        tied=bool(shapes.tie_word_embeddings) if shapes.tie_word_embeddings is not None else True,
    )


def student_shape(teacher: Shape, variant, shapes) -> Shape:
    from dataclasses import replace

    from minispec.spec.model import DepthPrune, SearchPrune, WidthPrune

    if isinstance(variant, DepthPrune):
        layers = variant.target_num_layers or teacher.layers - len(set(variant.drop_layers or []))
        return replace(teacher, layers=layers)
    if isinstance(variant, WidthPrune):
        heads = variant.target_num_attention_heads or teacher.heads
        groups = variant.target_num_query_groups or teacher.groups
        return replace(
            teacher,
            hidden=variant.target_hidden_size or teacher.hidden,
            ffn=variant.target_ffn_hidden_size or teacher.ffn,
            heads=heads,
            groups=min(groups, heads),
        )
    if isinstance(variant, SearchPrune):  # the largest candidate: the worst case of the search
        from minispec.search.space import dims_from_shapes, enumerate_candidates

        dims = dims_from_shapes(shapes)
        candidates = enumerate_candidates(dims, variant) if dims is not None else []
        if candidates:
            a = candidates[0].arch
            return replace(
                teacher,
                layers=a.num_layers,
                hidden=a.hidden_size,
                ffn=a.ffn_hidden_size,
                heads=a.num_attention_heads,
                groups=a.num_query_groups,
            )
    return teacher


# --------------------------------------------------------------------------------------------
# the plan


def plan_spec(
    spec, shapes, device: Device, *, checkpointing: bool | int = False
) -> list[StagePlan]:
    from minispec.compile.graph import build_graph

    teacher = teacher_shape(shapes)
    seq = spec.data.seq_length
    resources = spec.resources
    devices = resources.devices if device.gpu else 1
    weight_bytes = 2.0 if device.gpu and spec.teacher.dtype != "float32" else 4.0
    if spec.teacher.dtype == "float32":
        weight_bytes = 4.0
    students = {name: student_shape(teacher, v, shapes) for name, v in spec.prune.items()}
    plans = []
    for stage in build_graph(spec):
        plan = StagePlan(stage.name)
        step, variant = stage.step, stage.variant
        if step in ("finetune", "distill", "search-distill"):
            block = spec.finetune if step == "finetune" else spec.distill
            if step == "distill":
                block = spec.distill_for(variant)  # a student's own steps count
            if step == "finetune":
                student, reference = teacher, None
            else:
                name = variant.rpartition("-")[0] if step == "search-distill" else variant
                student, reference = students[name], teacher
            plan.memory = training_memory(
                student,
                reference,
                micro_batch=block.micro_batch_size,
                seq=seq,
                device=device,
                devices=devices,
                strategy=resources.strategy,
                precision=resources.precision,
                checkpointing=checkpointing,
            )
            steps = block.steps
            if step == "search-distill":
                settings = spec.prune[name]
                steps = max(
                    1, math.ceil(settings.short_distill.tokens / (block.global_batch_size * seq))
                )
            tokens = steps * block.global_batch_size * seq
            # validation forwards: val_batches batches of global_batch_size every val_interval
            validations = steps // block.val_interval + 1
            val_tokens = validations * block.val_batches * block.global_batch_size * seq
            # validation scores the student alone (cross-entropy), at step 0 and every interval
            plan.flops = tokens * training_flops_per_token(student, reference, seq) + val_tokens * (
                forward_flops_per_token(student, seq)
            )
            plan.seconds = plan.flops / (device.effective_flops * devices)
            plan.disk = weight_bytes * student.params + 16.0 * student.params  # model + checkpoint
        elif step in ("importance", "prune", "search", "search-prune"):
            settings = spec.prune.get(variant) if variant else None
            samples = getattr(settings, "calibration_samples", None) or max(
                (getattr(v, "calibration_samples", 0) for v in spec.prune.values()), default=0
            )
            # the teacher, and the pruned model beside it in the prune stages
            held = [teacher] if step in ("importance", "search") else [teacher, teacher]
            plan.memory = forward_memory(held, seq, max(1, 4096 // seq), device)
            # calibration forwards: the importance pass, depth scoring (target_num_layers) and
            # the search's layer scores; the prune stages then score 16 validation windows
            calibrates = step in ("importance", "search") or getattr(
                settings, "target_num_layers", None
            )
            passes = samples * seq if calibrates else 0
            if step == "prune" or step == "search-prune":
                passes += 2 * 16 * seq  # teacher and pruned model on the validation windows
            if step == "search":
                passes += (
                    settings.max_candidates * 16 * seq
                )  # each candidate on the validation windows
            plan.flops = passes * forward_flops_per_token(teacher, seq)
            spread = devices if step == "importance" else 1  # torchrun over the devices
            plan.seconds = plan.flops / (device.effective_flops * FORWARD_SPEEDUP * spread)
            shape = students.get(
                variant.rpartition("-")[0] if step == "search-prune" else variant or "", teacher
            )
            plan.disk = weight_bytes * shape.params if step in ("prune", "search-prune") else 0.0
        elif step == "evaluate":
            models = [teacher] * (2 if spec.finetune else 1) + list(students.values())
            windows = spec.evaluate.max_windows or ASSUMED_EVAL_WINDOWS
            tokens = windows * seq * len(spec.evaluate.splits)
            # one model at a time
            largest = max(models, key=lambda m: m.params)
            plan.memory = forward_memory([largest], seq, spec.evaluate.batch_size, device)
            plan.flops = sum(tokens * forward_flops_per_token(m, seq) for m in models)
            plan.seconds = plan.flops / (device.effective_flops * FORWARD_SPEEDUP * devices)
        elif step == "export":
            plan.disk = weight_bytes * students.get(variant, teacher).params
        elif step == "import":
            plan.disk = weight_bytes * teacher.params
        plan.warnings = advice(plan, step, spec, device, devices)
        plans.append(plan)
    return plans


def advice(plan: StagePlan, step: str, spec, device: Device, devices: int) -> list[str]:
    """What to change so the stage fits: each tip names a setting and, where the estimate can
    say, a value that fits (activations and logits grow linearly with the micro batch and with
    the sequence length; weights, gradients and optimizer state shard over FSDP devices)."""
    if not device.memory or plan.peak <= device.memory:
        return []
    over = plan.peak / device.memory
    tips = []
    memory = plan.memory
    batch_part = memory.get("activations", 0) + memory.get("logits", 0)
    room = device.memory - (plan.peak - batch_part)  # what the batch-dependent part may use
    seq = spec.data.seq_length
    if step in ("finetune", "distill", "search-distill"):
        block = spec.finetune if step == "finetune" else spec.distill
        mb = block.micro_batch_size
        if mb > 1 and batch_part > 0:
            fits = int(room / (batch_part / mb)) if room > 0 else 0
            # lint wants global_batch_size to be a multiple of micro batch × data-parallel size
            valid = [
                m
                for m in range(min(fits, mb - 1), 0, -1)
                if block.global_batch_size % (m * devices) == 0
            ]
            hint = f"micro_batch_size: {valid[0]} fits" if valid else "even 1 does not fit"
            tips.append(
                f"{block_name(step)}.micro_batch_size (now {mb}; activations and logits, "
                f"{fmt_bytes(batch_part)}, scale with it; {hint})"
            )
        tips.append(
            "resources.activation_checkpointing: true (recomputes each layer's activations; "
            "`minispec plan --activation-checkpointing` shows what it saves)"
        )
        sharded = memory.get("weights", 0) + memory.get("grads+optimizer", 0)
        if device.gpu and sharded > 0.25 * device.memory:
            tips.append(
                f"resources.devices with strategy: fsdp (now {devices}; {fmt_bytes(sharded)} of "
                "weights, gradients and optimizer state shard over them)"
            )
        if not device.gpu or spec.resources.precision == "fp32":
            tips.append(
                "resources.precision: bf16 on a GPU (half the activations and teacher weights)"
            )
    if batch_part > 0:
        fits = int(seq * room / batch_part) // 8 * 8 if room > 0 else 0
        hint = f"; about {fits} fits" if 8 <= fits < seq else ""
        tips.append(f"a shorter data.seq_length (now {seq}{hint})")
    return [
        f"needs {fmt_bytes(plan.peak)}, {over:.1f}× the device's {fmt_bytes(device.memory)}: "
        + "; ".join(tips)
    ]


def block_name(step: str) -> str:
    return "finetune" if step == "finetune" else "distill"


# --------------------------------------------------------------------------------------------
# devices and output


def device_from(name: str, tflops: float | None = None, memory_gib: float | None = None) -> Device:
    memory, rate, efficiency, description = DEVICES[name]
    gpu = name != "cpu"
    if not gpu:
        memory = host_memory()
    if tflops is not None:
        rate = tflops
        description += f"; matmul rate {tflops:g} TFLOP/s given"
        if not gpu:
            # the CPU preset's rate is already an effective training rate; a raw matmul rate
            # needs the step's overheads taken off (assumed, not measured: RESULTS.md)
            efficiency = CPU_RAW_MATMUL_EFFICIENCY
    if memory_gib is not None:
        memory = memory_gib * GiB
    return Device(name, memory, rate, efficiency, description, gpu)


def host_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def measure_matmul_tflops(gpu: bool, size: int | None = None, repeats: int = 5) -> float:
    """The dense matmul rate of this machine (imports torch): bf16 on CUDA, fp32 on CPU."""
    import time

    import torch

    cuda = gpu and torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = size or (8192 if cuda else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e12


def fmt_bytes(value: float) -> str:
    if value <= 0:
        return "–"
    if value >= GiB:
        return f"{value / GiB:.1f} GiB"
    return f"{value / 1024**2:.0f} MiB"


def fmt_seconds(value: float) -> str:
    if value <= 0:
        return "–"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def fmt_flops(value: float) -> str:
    if value <= 0:
        return "–"
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} FLOP"


def assumptions(spec, device: Device) -> list[str]:
    """What the estimate assumes that the spec does not say."""
    notes = []
    if device.gpu and spec.resources.devices > 1:
        notes.append(
            f"memory is per device; training shards weights, gradients and optimizer state over "
            f"{spec.resources.devices} devices with FSDP (strategy: {spec.resources.strategy})"
        )
    if spec.evaluate.max_windows is None:
        notes.append(
            f"evaluate.max_windows is unset: assumed {ASSUMED_EVAL_WINDOWS} windows per split"
        )
    if get_engine(spec.engine).MODEL_PARALLEL:
        notes.append(
            f"the estimate models the torch engine's trainer; the {spec.engine} engine's tensor "
            "and pipeline parallelism split memory differently"
        )
    if spec.search_variants:
        notes.append("a search variant is planned at its largest candidate")
    return notes


def render(plans: list[StagePlan], device: Device, notes: list[str] = ()) -> list[str]:
    header = (
        "stage",
        "peak memory",
        "weights",
        "grads+optim",
        "activations",
        "logits",
        "FLOPs",
        "time",
        "disk",
    )
    rows = []
    for p in plans:
        m = p.memory
        rows.append(
            (
                p.name,
                fmt_bytes(p.peak),
                fmt_bytes(m.get("weights", 0) + m.get("teacher", 0)),
                fmt_bytes(m.get("grads+optimizer", 0)),
                fmt_bytes(m.get("activations", 0)),
                fmt_bytes(m.get("logits", 0)),
                fmt_flops(p.flops),
                fmt_seconds(p.seconds),
                fmt_bytes(p.disk),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"device: {device.description}, {fmt_bytes(device.memory)} memory, "
        f"{device.tflops:g} TFLOP/s × efficiency {device.efficiency:g}"
    ]
    for r in [header, *rows]:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    total = sum(p.seconds for p in plans)
    lines.append(
        f"total: {fmt_seconds(total)} of compute, {fmt_bytes(sum(p.disk for p in plans))} of outputs (data, start-up and generation not counted)"
    )
    lines += [f"note: {note}" for note in notes]
    for p in plans:
        for warning in p.warnings:
            lines.append(f"warning: {p.name}: {warning}")
    return lines
