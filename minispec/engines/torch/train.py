"""Training recipe of the torch engine: teacher correction (``finetune``) and distillation
(``distill@<variant>``) with one trainer.

Read top to bottom: configuration → schedule → data order → the trainer (step, validation,
checkpoints) → the loop.

- **Loss.** Teacher correction: cross-entropy on the data. Distillation:
  ``alpha · KD + (1 − alpha) · CE (+ intermediate_weight · Σ cosine losses)``; KD is a divergence
  from :mod:`losses` (forward KL at temperature T × T² by default). Every loss is a mean over
  the tokens of the *global* batch: each micro batch's token sum is divided by the tokens a rank
  sees per step and DDP/FSDP average over ranks, so gradient accumulation and data parallelism
  give the gradient of one big batch.
- **Data order.** Global sample ``g`` of the run is window ``windows.sample_window(g, n, seed)``
  of the train split; step ``k`` reads samples ``k·GBS … k·GBS + GBS − 1`` and rank ``r`` of
  ``W`` reads the contiguous slice ``r·GBS/W …`` of them, in micro batches of
  ``micro_batch_size``. The order depends only on the seed, never on the number of processes or
  on restarts.
- **Validation** (the same windows for every stage, so curves compare across stages): the first
  ``min(n_val, val_batches × global_batch_size)`` windows of ``windows.permutation(n_val, seed)``
  over the validation split, scored as the mean token cross-entropy of the model being trained
  (the student in distillation), at step 0, every ``val_interval`` steps and after the last.
- **Schedule.** Linear warmup over ``warmup_steps`` updates to ``lr``, then cosine decay that
  reaches ``min_lr`` at the end of training (:func:`lr_at`).
- **Precision.** Master weights and optimizer state in fp32; bf16 autocast on GPU, fp32 on CPU
  (``resources.precision``). The teacher is held in the compute dtype, in eval mode, without
  gradients.
- **Checkpoints** (:mod:`checkpointing`): every ``checkpoint_interval`` steps and at the end;
  a rerun with the same configuration and inputs resumes from the newest one with the same data
  order and the same loss curve (bitwise on CPU) as an uninterrupted run. A different
  configuration or different inputs (the fingerprint) start afresh.
- **No per-step host synchronisation**: per-step losses stay on the device and are read every
  ``log_interval`` steps (1 on CPU, 10 on GPU) and at validation/checkpoint steps, where
  non-finite losses stop the run before anything is saved.

The stage functions that read the spec and write the stage's outputs (``finetune``,
``distill@<v>``) are in :mod:`minispec.engines.torch.train_stage`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from minispec.engines.torch import checkpointing, distributed, fp8
from minispec.engines.torch.distributed import DistContext
from minispec.engines.torch.losses import (
    IGNORE_INDEX,
    HiddenStateCosineLoss,
    intermediate_pairs_valid,
    logits_objective,
    make_divergence,
)
from minispec.engines.torch.tracking import Recorder
from minispec.engines.torch.windows import TokenWindows, permutation, sample_window
from minispec.errors import StageError
from minispec.spec.model import checkpointed_layers
from minispec.timing import StartupPhases

if TYPE_CHECKING:
    from minispec.engines.torch.windows import TokenWindows as _Windows  # noqa: F401
    from minispec.spec.model import Spec, TrainingSpec


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class LossConfig:
    kind: str = "logits_kl"
    temperature: float = 1.0
    alpha: float = 1.0
    intermediate: list[tuple[int, int]] = field(
        default_factory=list
    )  # (student, teacher), 1-indexed
    intermediate_weight: float = 1.0


@dataclass
class TrainConfig:
    """Everything the trainer needs, free of the spec classes (benchmarks build it directly)."""

    stage: str  # "finetune" or "distill@<variant>": names logs, checkpoints and errors
    section: str  # spec block the values come from ("finetune", "distill"), for error hints
    steps: int
    global_batch_size: int
    micro_batch_size: int
    seq_length: int
    lr: float
    min_lr: float
    warmup_steps: int
    val_interval: int
    val_batches: int
    checkpoint_interval: int
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1234
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp8" (bf16 autocast + FP8 GEMMs)
    loss: LossConfig | None = None  # None: plain cross-entropy (teacher correction)
    strategy: str = "fsdp"  # several processes: "fsdp" | "ddp"
    log_interval: int | None = None  # steps between host reads of the losses (None: by device)
    compile: bool = False  # torch.compile: the whole model on one device, each layer on several
    cuda_graphs: bool = False  # replay each micro step as a CUDA graph (one GPU, not compiled)
    # recompute the student's layer activations: True every layer, N the first N (0/False none)
    activation_checkpointing: bool | int = False
    # write checkpoints in a background thread (one process only); None: on GPU, where the
    # host copy is cheap, not on CPU, where it would double host memory
    background_checkpoints: bool | None = None

    @property
    def bf16_autocast(self) -> bool:
        """bf16 autocast: precision bf16, and fp8 (whose non-GEMM ops run as under bf16)."""
        return self.precision in ("bf16", "fp8")

    def fingerprint_data(self) -> dict:
        """What decides the result of a run (how fast it is computed does not)."""
        data = asdict(self)
        for key in (
            "log_interval",
            "compile",
            "cuda_graphs",
            "strategy",
            "activation_checkpointing",
            "background_checkpoints",
        ):
            data.pop(key)
        return data


def resolve_speed(resources, device_type: str) -> tuple[bool, bool]:
    """``(compile, cuda_graphs)`` from ``resources.compile``/``resources.cuda_graphs``.

    CUDA graphs need one GPU and plain (uncompiled) kernels: ``auto`` turns them on exactly
    there. ``compile: auto`` is off: compiling costs more than it saves in short runs.
    """
    one_gpu = device_type == "cuda" and resources.devices == 1
    compile_ = resources.compile == "on"
    graphs = resources.cuda_graphs == "on" or (resources.cuda_graphs == "auto" and one_gpu)
    return compile_, graphs and one_gpu and not compile_


def default_checkpoint_interval(steps: int, val_interval: int) -> int:
    """Checkpoints on their own cadence: the smallest multiple of ``val_interval`` that gives at
    most about four checkpoints before the final one (each costs a full weights + optimizer
    write), so long runs are not held up at every validation."""
    validations = max(1, math.ceil(steps / 4 / val_interval))
    return val_interval * validations


def config_from_spec(spec: Spec, section: str, stage: str, device: torch.device) -> TrainConfig:
    block: TrainingSpec = getattr(spec, section)
    if section == "distill" and "@" in stage:  # a student's own settings (prune.<v>.distill)
        block = spec.distill_for(stage.split("@", 1)[1])
    precision = spec.resources.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    loss = None
    if section == "distill":
        spec_loss = block.loss
        loss = LossConfig(
            kind=spec_loss.kind,
            temperature=spec_loss.temperature,
            alpha=spec_loss.alpha,
            intermediate=[
                (pair.student_layer, pair.teacher_layer) for pair in spec_loss.intermediate
            ],
            intermediate_weight=spec_loss.intermediate_weight,
        )
    compile_, cuda_graphs = resolve_speed(spec.resources, device.type)
    return TrainConfig(
        stage=stage,
        section=section,
        steps=block.steps,
        global_batch_size=block.global_batch_size,
        micro_batch_size=block.micro_batch_size,
        seq_length=spec.data.seq_length,
        lr=block.lr,
        min_lr=block.min_lr,
        warmup_steps=block.warmup_steps,
        val_interval=block.val_interval,
        val_batches=block.val_batches,
        checkpoint_interval=block.checkpoint_interval
        or default_checkpoint_interval(block.steps, block.val_interval),
        weight_decay=block.weight_decay,
        adam_beta1=block.adam_beta1,
        adam_beta2=block.adam_beta2,
        grad_clip=block.grad_clip,
        seed=spec.seed,
        precision=precision,
        loss=loss,
        strategy=spec.resources.strategy,
        compile=compile_,
        cuda_graphs=cuda_graphs,
        activation_checkpointing=spec.resources.activation_checkpointing,
    )


# --------------------------------------------------------------------------------------------
# schedule and data order


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update ``step`` (0-indexed).

    Warmup: ``lr · (step + 1) / warmup_steps`` for the first ``warmup_steps`` updates; then
    ``min_lr + (lr − min_lr) · ½ (1 + cos(π · (step − warmup) / (steps − warmup)))``, which is
    ``lr`` at the first update after warmup and reaches ``min_lr`` at the end of training.
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BatchPlan:
    """Which train windows this rank reads at each step (see the module docstring)."""

    def __init__(self, window_count: int, cfg: TrainConfig, ctx: DistContext):
        per_rank, remainder = divmod(cfg.global_batch_size, ctx.world_size)
        if remainder or per_rank % cfg.micro_batch_size:
            raise StageError(
                f"{cfg.section}.global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size {cfg.micro_batch_size} × {ctx.world_size} device(s)",
                hint=f"set {cfg.section}.global_batch_size to a multiple of {cfg.micro_batch_size * ctx.world_size}",
            )
        self.window_count = window_count
        self.global_batch_size = cfg.global_batch_size
        self.per_rank = per_rank
        self.rank = ctx.rank
        self.seed = cfg.seed
        self._orders: dict[int, np.ndarray] = {}

    def windows_for_step(self, step: int) -> list[int]:
        start = step * self.global_batch_size + self.rank * self.per_rank
        return [
            sample_window(g, self.window_count, self.seed, self._orders)
            for g in range(start, start + self.per_rank)
        ]


def validation_windows(window_count: int, cfg: TrainConfig) -> np.ndarray:
    """The fixed validation set: the first ``val_batches × global_batch_size`` windows of the
    seeded permutation of the validation split (all of them if the split is smaller), sorted."""
    count = min(window_count, cfg.val_batches * cfg.global_batch_size)
    return np.sort(permutation(window_count, cfg.seed)[:count])


# --------------------------------------------------------------------------------------------
# the trained module


class TrainedModule(nn.Module):
    """The model being trained plus the projections of the intermediate losses.

    One module so that DDP/FSDP, the optimizer and checkpoints see both; the projections are
    not part of the exported model. ``forward`` returns the logits ``[B, S, V]`` and the
    projected hidden states ``[B, S, H_teacher]`` of the chosen student layers.
    """

    def __init__(self, model: nn.Module, projections: nn.ModuleList, layers: list[int]):
        super().__init__()
        self.model = model
        self.projections = projections
        self._layers = layers  # 0-based decoder layer indices, one per projection
        self._captured: dict[int, torch.Tensor] = {}
        for index in set(layers):
            model.model.layers[index].register_forward_hook(self._capture(index))

    def _capture(self, index: int):
        def hook(module, args, output):
            self._captured[index] = output[0] if isinstance(output, tuple) else output

        return hook

    def forward(self, input_ids: torch.Tensor, with_projections: bool = True):
        self._captured.clear()
        logits = self.model(input_ids=input_ids, use_cache=False).logits
        projected = []
        if with_projections:
            projected = [
                proj.project(self._captured[index])
                for proj, index in zip(self.projections, self._layers, strict=True)
            ]
        self._captured.clear()
        return logits, projected


class _Capture:
    """Forward hooks that keep the outputs of some decoder layers of a frozen model."""

    def __init__(self, model: nn.Module, layers: list[int]):
        self.outputs: dict[int, torch.Tensor] = {}
        for index in set(layers):
            model.model.layers[index].register_forward_hook(self._hook(index))

    def _hook(self, index):
        def hook(module, args, output):
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return hook


def _decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (and embeddings), none on norms and biases."""
    decay, no_decay = [], []
    for _, parameter in module.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """One optimizer step, validation and checkpoint I/O for one rank."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        teacher: nn.Module | None,
        *,
        vocab_size: int,
        ctx: DistContext | None = None,
        teacher_cache=None,
    ):
        self.cfg = cfg
        self.ctx = ctx or DistContext(device=next(model.parameters()).device)
        self.device = self.ctx.device
        self.vocab_size = vocab_size
        self.autocast_dtype = torch.bfloat16 if cfg.bf16_autocast else None
        self.log_interval = cfg.log_interval or (10 if self.device.type == "cuda" else 1)
        loss = cfg.loss or LossConfig(alpha=0.0)
        # cached teacher logits (teacher_logits.TeacherLogits) stand in for the teacher's forward
        self.teacher_cache = teacher_cache
        has_teacher = teacher is not None or teacher_cache is not None
        self.alpha = loss.alpha if has_teacher else 0.0
        self.pairs = list(loss.intermediate) if teacher is not None else []
        self.intermediate_weight = loss.intermediate_weight
        self.computes_kd = has_teacher and self.alpha > 0
        self.divergence = (
            make_divergence(loss.kind, loss.temperature, vocab_size=vocab_size)
            if self.computes_kd
            else None
        )
        self.tokens_per_rank_step = cfg.global_batch_size // self.ctx.world_size * cfg.seq_length

        if self.pairs:
            intermediate_pairs_valid(self.pairs, len(model.model.layers), len(teacher.model.layers))
        torch.manual_seed(cfg.seed)  # identical projection init on every rank
        projections = nn.ModuleList(
            [
                HiddenStateCosineLoss(model.config.hidden_size, teacher.config.hidden_size)
                for _ in self.pairs
            ]
        )
        model.requires_grad_(True)
        checkpointed = checkpoint_layers(model, cfg.activation_checkpointing)
        module = TrainedModule(model, projections, [s - 1 for s, _ in self.pairs])
        module.train()
        # one micro step as a CUDA graph: built at the first step (None), False if impossible
        self.use_cuda_graphs = (
            cfg.cuda_graphs and self.device.type == "cuda" and not self.ctx.enabled
        )
        self._graph: MicroStepGraph | None = None
        background = cfg.background_checkpoints
        if background is None:
            background = self.device.type == "cuda"
        self.background_checkpoints = background and not self.ctx.enabled
        self._writer: BackgroundWrite | None = None
        if cfg.precision == "fp8":  # before compiling and sharding: they see the FP8 layers
            fp8.convert_linears(model, self.device)
        compile_model(model, cfg.compile, per_layer=self.ctx.enabled or checkpointed > 0)
        sharded = self.ctx.enabled and cfg.strategy == "fsdp"
        if not sharded:  # DDP needs its replica on the device; fully_shard moves shards itself
            module.to(self.device)
        self.module = distributed.wrap_trainable(module, model.model.layers, cfg.strategy, self.ctx)
        self._alias_names = _tied_aliases(distributed.unwrap(self.module))

        self.teacher = None
        self.teacher_capture = None
        if teacher is not None and (self.computes_kd or self.pairs):
            teacher.eval().requires_grad_(False)
            self.teacher_capture = _Capture(teacher, [t - 1 for _, t in self.pairs])
            if cfg.precision == "fp8":
                fp8.convert_linears(teacher, self.device)
            compile_model(teacher, cfg.compile, per_layer=self.ctx.enabled)
            if not sharded:
                teacher.to(self.device)
            self.teacher = distributed.shard_frozen(
                teacher, teacher.model.layers, cfg.strategy, self.ctx
            )

        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            _decay_groups(self.module, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=1e-8,
            fused=self.device.type == "cuda",
        )

    # ---- one step -------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # autocast's cache of cast weights must not outlive a CUDA graph capture
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, cache_enabled=not self.use_cuda_graphs
        )

    def _to_device(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tokens.pin_memory().to(self.device, non_blocking=True)
        return tokens.to(self.device)

    def train_step(self, samples: torch.Tensor, lr: float, cached=None) -> torch.Tensor:
        """One optimizer update on this rank's share ``[GBS / W, L + 1]`` of a global batch
        (``cached``: the cached teacher of those samples, a ``sparse_kd.SparseTeacher``).

        Returns, without synchronising, a device tensor ``[4]``: this rank's token means of
        (loss, kd_loss, ce_loss, intermediate_loss) over the step.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        parts = torch.zeros(4, device=self.device)
        micro_batches = samples.split(self.cfg.micro_batch_size)
        cached_micro = (
            cached.split(self.cfg.micro_batch_size)
            if cached is not None
            else [None] * len(micro_batches)
        )
        for index, micro in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with self._gradient_sync(last):
                teacher_part = cached_micro[index].to(self.device) if cached is not None else None
                parts += self._run_micro_step(self._to_device(micro), teacher_part)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.cfg.grad_clip)
        self.optimizer.step()
        # a captured graph accumulates into fixed gradient buffers: zero them, keep them
        self.optimizer.zero_grad(set_to_none=self._graph is None)
        return parts

    def _run_micro_step(self, tokens: torch.Tensor, cached=None) -> torch.Tensor:
        if self.use_cuda_graphs and self._graph is None:
            try:
                self._graph = MicroStepGraph(self._micro_step, tokens, self.parameters, cached)
            except Exception as exc:  # a model whose forward syncs with the host, ...
                print(
                    f"[{self.cfg.stage}] warning: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:300]}); "
                    "running without CUDA graphs (set resources.cuda_graphs: off to skip the attempt)",
                    flush=True,
                )
                self.use_cuda_graphs = False
                for parameter in self.parameters:
                    parameter.grad = None
                torch.cuda.synchronize(self.device)
        if self._graph is not None:
            return self._graph.replay(tokens, cached)
        return self._micro_step(tokens, cached)

    def _gradient_sync(self, last: bool):
        # DDP: all-reduce once per step. FSDP2 reduce-scatters every micro batch: keeping
        # unsharded gradients across micro batches would cost a full gradient copy per rank.
        if not last and hasattr(self.module, "no_sync"):
            return self.module.no_sync()
        return contextlib.nullcontext()

    def _micro_step(self, tokens: torch.Tensor, cached=None) -> torch.Tensor:
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        normalizer = self.tokens_per_rank_step
        with self._autocast():
            teacher_logits, teacher_hidden = None, []
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=inputs, use_cache=False).logits
                    teacher_hidden = [self.teacher_capture.outputs[t - 1] for _, t in self.pairs]
                    self.teacher_capture.outputs.clear()
            logits, projected = self.module(inputs)
            # compiled: the loss's chunks fused by torch.compile along with the model
            objective = functools.partial(logits_objective, compiled=self.cfg.compile)
            if cached is not None and self.computes_kd:  # the teacher from its cache
                from minispec.engines.torch.sparse_kd import sparse_logits_objective as objective

                teacher_logits = cached
            total, kd_sum, ce_sum = objective(
                logits,
                teacher_logits if self.computes_kd else None,
                labels,
                self.divergence,
                kd_weight=self.alpha,
                ce_weight=1.0 - self.alpha,
                normalizer=normalizer,
                vocab_size=self.vocab_size,
            )
            del logits, teacher_logits  # only the loss's stored gradient is needed for backward
            intermediate = total.new_zeros(())
            for student_states, teacher_states in zip(projected, teacher_hidden, strict=True):
                intermediate = intermediate + HiddenStateCosineLoss.token_sum(
                    student_states, teacher_states
                )
            intermediate = intermediate * (self.intermediate_weight / normalizer)
            loss = total + intermediate
        loss.backward()
        return torch.stack(
            [loss.detach(), kd_sum / normalizer, ce_sum / normalizer, intermediate.detach()]
        )

    # ---- validation -----------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, windows: TokenWindows, indices: np.ndarray) -> float:
        """Mean token cross-entropy of the trained model over ``indices`` (all ranks together)."""
        self.module.eval()
        world, rank = self.ctx.world_size, self.ctx.rank
        per_rank = -(-len(indices) // world)
        local = list(indices[rank::world])
        real = len(local)
        local += [int(indices[0])] * (per_rank - real)  # equal forward counts on every rank (FSDP)
        loss_sum = torch.zeros((), device=self.device)
        for start in range(0, per_rank, self.cfg.micro_batch_size):
            chunk = local[start : start + self.cfg.micro_batch_size]
            tokens = self._to_device(windows.batch(chunk))
            labels = tokens[:, 1:].clone()
            padding_rows = [i for i in range(len(chunk)) if start + i >= real]
            if padding_rows:
                labels[padding_rows] = IGNORE_INDEX
            with self._autocast():
                logits, _ = self.module(tokens[:, :-1], with_projections=False)
                _, _, ce_sum = logits_objective(
                    logits,
                    None,
                    labels,
                    None,
                    kd_weight=0.0,
                    ce_weight=1.0,
                    normalizer=1.0,
                    vocab_size=self.vocab_size,
                )
            loss_sum += ce_sum
        self.ctx.all_reduce_sum(loss_sum)
        self.module.train()
        return loss_sum.item() / (len(indices) * self.cfg.seq_length)

    # ---- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self, root: Path, step: int, state: dict) -> Path | None:
        """Write a checkpoint at ``step`` (collective); ``state`` is the JSON part (history...).

        On one GPU the state is copied to host memory here and written by a background thread
        while training goes on (returns None then; :meth:`wait_for_checkpoint` joins it). A
        kill during the write leaves an uncommitted directory that resuming skips, so resume
        stays exact. Several processes and CPU training write synchronously (on CPU the copy
        would double host memory).
        """
        self.wait_for_checkpoint()  # one write at a time; raises what a failed write raised
        model_state, optimizer_state = distributed.full_state(self.module, self.optimizer, self.ctx)
        if self.background_checkpoints:
            if self.device.type == "cpu":  # full_state does not copy host tensors: copy them
                model_state = {k: v.clone() for k, v in model_state.items()}
                optimizer_state = _cloned(optimizer_state)
            # every tensor is now a host copy: the step loop may change the originals
            snapshot = json.loads(json.dumps(state))
            rng = checkpointing.capture_rng(self.device)
            self._writer = BackgroundWrite(
                lambda: self._write_one_process(
                    root, step, snapshot, model_state, optimizer_state, rng
                )
            )
            return None
        partial, error = None, None
        if self.ctx.is_main:
            try:
                partial = checkpointing.begin(root, step)
            except OSError as exc:
                error = exc
        shared = self.ctx.broadcast_object(str(partial) if partial is not None else None)
        if shared is None:
            raise _write_error(f"{self.cfg.stage} checkpoint at step {step}", root, error)
        partial = Path(shared)
        try:
            rng_tensors, rng_meta = checkpointing.capture_rng(self.device)
            checkpointing.write_tensors(
                partial / checkpointing.rng_file(self.ctx.rank), rng_tensors
            )
            (partial / f"rng-rank{self.ctx.rank}.json").write_text(
                json.dumps(rng_meta), encoding="utf-8"
            )
            if self.ctx.is_main:
                model_state = {
                    name: tensor
                    for name, tensor in model_state.items()
                    if name not in self._alias_names
                }
                checkpointing.write_tensors(partial / checkpointing.MODEL_FILE, model_state)
                optimizer_tensors, optimizer_meta = checkpointing.flatten_optimizer(optimizer_state)
                checkpointing.write_tensors(
                    partial / checkpointing.OPTIMIZER_FILE, optimizer_tensors
                )
        except OSError as exc:
            error = exc
        final = None
        if not self._any_rank(error is not None) and self.ctx.is_main:
            try:
                final = checkpointing.commit(
                    partial,
                    root,
                    step,
                    {**state, "optimizer": optimizer_meta, "world_size": self.ctx.world_size},
                )
            except OSError as exc:
                error = exc
        if self._any_rank(error is not None):
            if self.ctx.is_main:
                checkpointing.abort(partial)
            raise _write_error(f"{self.cfg.stage} checkpoint at step {step}", root, error)
        return final

    def wait_for_checkpoint(self) -> None:
        """Wait for a background checkpoint write (if any) and raise its error."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()

    def _write_one_process(
        self, root: Path, step: int, state: dict, model_state, optimizer_state, rng
    ) -> Path:
        try:
            partial = checkpointing.begin(root, step)
        except OSError as exc:
            raise _write_error(f"{self.cfg.stage} checkpoint at step {step}", root, exc) from None
        try:
            rng_tensors, rng_meta = rng
            checkpointing.write_tensors(partial / checkpointing.rng_file(0), rng_tensors)
            (partial / "rng-rank0.json").write_text(json.dumps(rng_meta), encoding="utf-8")
            model_state = {
                name: tensor
                for name, tensor in model_state.items()
                if name not in self._alias_names
            }
            checkpointing.write_tensors(partial / checkpointing.MODEL_FILE, model_state)
            optimizer_tensors, optimizer_meta = checkpointing.flatten_optimizer(optimizer_state)
            checkpointing.write_tensors(partial / checkpointing.OPTIMIZER_FILE, optimizer_tensors)
            return checkpointing.commit(
                partial, root, step, {**state, "optimizer": optimizer_meta, "world_size": 1}
            )
        except OSError as exc:
            checkpointing.abort(partial)
            raise _write_error(f"{self.cfg.stage} checkpoint at step {step}", root, exc) from None

    def _any_rank(self, flag: bool) -> bool:
        if not self.ctx.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.ctx.all_reduce_sum(value).item() > 0)

    def load_checkpoint(self, checkpoint: checkpointing.Checkpoint) -> None:
        broadcast = self.ctx.enabled and self.cfg.strategy == "fsdp"
        model_state: dict = {}
        optimizer_state: dict = {}
        if self.ctx.is_main or not broadcast:
            model_state = checkpoint.tensors(checkpointing.MODEL_FILE)
            for alias, canonical in self._alias_names.items():
                model_state[alias] = model_state[canonical]
            optimizer_state = checkpointing.unflatten_optimizer(
                checkpoint.tensors(checkpointing.OPTIMIZER_FILE), checkpoint.state["optimizer"]
            )
        distributed.load_full_state(
            self.module, self.optimizer, model_state, optimizer_state, broadcast=broadcast
        )
        rank = (
            self.ctx.rank
            if (checkpoint.path / checkpointing.rng_file(self.ctx.rank)).exists()
            else 0
        )
        rng_meta = json.loads(
            (checkpoint.path / f"rng-rank{rank}.json").read_text(encoding="utf-8")
        )
        checkpointing.restore_rng(
            checkpoint.tensors(checkpointing.rng_file(rank)), rng_meta, self.device
        )

    # ---- export ---------------------------------------------------------------------------

    def trained_model(self, dtype: torch.dtype | None = None) -> nn.Module | None:
        """The trained HF model (unsharded, on rank 0; None elsewhere), cast to ``dtype``.

        Call once, at the end: on one process this is the training model itself, cast in place.
        """
        module = distributed.unwrap(self.module)
        if not self.ctx.enabled or self.cfg.strategy == "ddp":
            if not self.ctx.is_main:
                return None
            model = module.model
            fp8.restore_linears(model)  # export plain nn.Linear layers, not torchao's
        else:
            state, _ = distributed.full_state(self.module, None, self.ctx)
            if not self.ctx.is_main:
                return None
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(
                module.model.config, attn_implementation="sdpa", dtype=torch.float32
            )
            prefix = "model."
            weights = {
                name[len(prefix) :]: tensor
                for name, tensor in state.items()
                if name.startswith(prefix)
            }
            missing, unexpected = model.load_state_dict(weights, strict=False)
            tied = {
                name
                for name in missing
                if name == "lm_head.weight" and model.config.tie_word_embeddings
            }
            if set(missing) - tied or unexpected:
                raise StageError(
                    f"gathered state does not match the model: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}"
                )
            model.tie_weights()
            model.generation_config = module.model.generation_config
        if dtype is not None:
            model.to(dtype=dtype)
        return model.to("cpu").eval()


class BackgroundWrite:
    """Runs ``write()`` in a thread; ``join()`` waits and re-raises its exception.

    Not a daemon: a process that ends (even by an exception) first finishes the write.
    """

    def __init__(self, write):
        import threading

        self._error: BaseException | None = None

        def target():
            try:
                write()
            except BaseException as exc:  # re-raised in the training thread by join()
                self._error = exc

        self._thread = threading.Thread(target=target, name="checkpoint-writer")
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _cloned(tree):
    """A copy of a nested dict/list of tensors whose tensors are cloned."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {key: _cloned(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cloned(value) for value in tree)
    return tree


def checkpoint_layers(model: nn.Module, setting: bool | int) -> int:
    """Activation checkpointing of an HF causal LM's first ``setting`` decoder layers (``True``:
    all of them; ``False``/0: none). Returns how many are checkpointed.

    The later layers keep their activations: each one left out saves its share of the
    recompute (a whole layer's forward) for about one layer's activations of memory, so a
    student that nearly fits checkpoints only what it must (Megatron's ``recompute_num_layers``).
    """
    layers = model.model.layers
    count = checkpointed_layers(setting, len(layers))
    if count == 0:
        return 0
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in layers[count:]:
        layer.gradient_checkpointing = False  # read by transformers' checkpointing layer call
    return count


def compile_model(model: nn.Module, enabled: bool, *, per_layer: bool) -> None:
    """torch.compile an HF causal LM in place (``resources.compile: on``).

    Whole model by default (embedding, layers, norm and LM head in one graph, no per-layer
    graph breaks). ``per_layer``: each decoder layer its own graph — under FSDP2, whose
    per-layer all-gathers stay outside the graphs, and under activation checkpointing, whose
    recompute then replays the layer's compiled graph (measured on one H200 at the seed's
    shapes: the whole-model graph with checkpointing did not finish compiling in 220 s, the
    per-layer graphs compiled and ran in 48 s).
    """
    if not enabled:
        return
    if per_layer:
        for layer in model.model.layers:
            layer.compile()
        return
    model.compile(dynamic=False)


class MicroStepGraph:
    """One training micro step (teacher forward or cached teacher, student forward + backward)
    as a CUDA graph.

    Small models on a GPU are launch-bound: a step is thousands of short kernels, each costing
    more to launch from Python than to run. Replaying a captured graph launches them all at
    once. The graph reads fixed input buffers (the tokens ``[micro, L + 1]`` and, when the
    teacher comes from its cache, that micro batch's ``SparseTeacher``: ids and
    log-probabilities ``[micro, L, K]``, tail ``[micro, L]``), copied into before each replay,
    and accumulates into fixed ``.grad`` buffers (gradient accumulation adds in place, so the
    optimizer sees the same sums as without graphs); the optimizer step and clipping stay
    outside, as plain fused kernels. Capture follows PyTorch's recipe: warm up on a side
    stream, zero what the warm-up accumulated, capture, replay. Nothing is computed
    differently, only launched differently.
    """

    WARMUP = 2

    def __init__(
        self, micro_step, example: torch.Tensor, parameters: list[nn.Parameter], cached=None
    ):
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        self.tokens = example.clone()  # [micro, L + 1], the graph's token buffer
        self.cached = _cloned_teacher(cached)  # the graph's cached-teacher buffers, or None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                micro_step(self.tokens, self.cached)
        torch.cuda.current_stream().wait_stream(side)
        for parameter in parameters:
            parameter.grad.zero_()  # the warm-up's gradients are not part of training
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.parts = micro_step(self.tokens, self.cached)  # [4] loss parts, on every replay

    def replay(self, tokens: torch.Tensor, cached=None) -> torch.Tensor:
        if (cached is None) != (self.cached is None):
            raise RuntimeError("a captured micro step replays with the inputs it was captured with")
        self.tokens.copy_(tokens, non_blocking=True)
        if cached is not None:
            for buffer, value in zip(
                _teacher_fields(self.cached), _teacher_fields(cached), strict=True
            ):
                buffer.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.parts.clone()


def _teacher_fields(cached) -> tuple[torch.Tensor, ...]:
    return (cached.indices, cached.logprobs, cached.tail)


def _cloned_teacher(cached):
    """Fixed-address copies of a cached teacher's tensors (a graph's input buffers)."""
    if cached is None:
        return None
    return type(cached)(*(field.clone() for field in _teacher_fields(cached)))


def _tied_aliases(module: nn.Module) -> dict[str, str]:
    """Second names of shared parameters (tied embeddings) → their first name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            aliases[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return aliases


def _write_error(what: str, where: Path, error: BaseException | None) -> StageError:
    import errno

    reason = getattr(error, "strerror", None) or str(error)
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    hint = (
        f"free disk space under {where} and rerun"
        if full
        else f"check that {where} is writable and rerun"
    )
    return StageError(
        f"could not write the {what} ({reason}); nothing incomplete was kept",
        hint=hint + " (training resumes from the last complete checkpoint)",
    )


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class RunState:
    """What a checkpoint carries besides tensors: the curves so far and time accounting."""

    step: int = 0
    history: dict = field(default_factory=lambda: {"train": [], "val": []})
    train_seconds: float = 0.0
    trained_tokens: int = 0
    resumed_from: int | None = None
    val_windows: int = 0


def fit(
    trainer: Trainer,
    train_windows: TokenWindows,
    val_windows: TokenWindows,
    *,
    tracker: Recorder | None = None,
    checkpoint_root: Path | None = None,
    fingerprint: str = "",
    startup: StartupPhases | None = None,
) -> RunState:
    """Train ``cfg.steps`` updates (resuming from ``checkpoint_root`` when possible).

    Out of memory becomes a :class:`StageError` naming the settings that decide memory.
    """
    try:
        return _fit(
            trainer,
            train_windows,
            val_windows,
            tracker or Recorder(),
            checkpoint_root,
            fingerprint,
            startup,
        )
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if _is_out_of_memory(exc):
            raise out_of_memory_error(trainer.cfg, trainer.device) from None
        raise


def _fit(
    trainer: Trainer,
    train_windows: TokenWindows,
    val_windows: TokenWindows,
    tracker: Recorder,
    checkpoint_root: Path | None,
    fingerprint: str,
    startup: StartupPhases | None = None,
) -> RunState:
    cfg, ctx = trainer.cfg, trainer.ctx
    startup = startup or StartupPhases()
    run = RunState()
    if checkpoint_root is not None:
        run = _resume(trainer, checkpoint_root, fingerprint)
    tracker.replay(run.history)
    startup.mark("logging and resume")

    plan = BatchPlan(len(train_windows), cfg, ctx)
    val_indices = validation_windows(len(val_windows), cfg)
    run.val_windows = len(val_indices)
    tokens_per_step = cfg.global_batch_size * cfg.seq_length

    def validate(step: int) -> None:
        loss = trainer.validate(val_windows, val_indices)
        if not math.isfinite(loss):
            raise _diverged(cfg, "validation loss", loss, step, checkpoint_root)
        record = {"step": step, "loss": loss, "time": time.time()}
        run.history["val"].append(record)
        tracker.log_val(record)
        tracker.flush()

    if run.step == 0:
        validate(0)
        startup.mark("validation")
    first_step = run.step + 1
    pending: list[tuple[int, float, torch.Tensor]] = []
    mark = time.perf_counter()

    def flush() -> None:
        nonlocal mark
        if not pending:
            return
        stacked = torch.stack([parts for _, _, parts in pending])
        ctx.all_reduce_sum(stacked)
        values = (stacked / ctx.world_size).tolist()  # the one host synchronisation
        elapsed = time.perf_counter() - mark
        now = time.time()
        run.train_seconds += elapsed
        run.trained_tokens += len(pending) * tokens_per_step
        for (step, lr, _), (loss, kd, ce, intermediate) in zip(pending, values, strict=True):
            for name, value in (
                ("loss", loss),
                ("kd_loss", kd),
                ("ce_loss", ce),
                ("intermediate_loss", intermediate),
            ):
                if not math.isfinite(value):
                    raise _diverged(
                        cfg, f"training {name.replace('_', ' ')}", value, step, checkpoint_root
                    )
            record = {"step": step, "loss": loss, "ce_loss": ce, "lr": lr}
            if trainer.computes_kd:
                record["kd_loss"] = kd
            if trainer.pairs:
                record["intermediate_loss"] = intermediate
            if step == pending[-1][0]:
                record["tokens_per_second"] = len(pending) * tokens_per_step / max(elapsed, 1e-9)
            record["time"] = now
            run.history["train"].append(record)
            tracker.log_train(record)
        tracker.status(f"loss {values[-1][0]:.4f} lr {pending[-1][1]:.2e}")
        tracker.flush()
        pending.clear()
        mark = time.perf_counter()

    while run.step < cfg.steps:
        step = run.step
        lr = lr_at(step, cfg)
        window_ids = plan.windows_for_step(step)
        samples = train_windows.batch(window_ids)
        cached = (
            trainer.teacher_cache.batch(window_ids) if trainer.teacher_cache is not None else None
        )
        parts = trainer.train_step(samples, lr, cached)
        run.step = step = step + 1
        pending.append((step, lr, parts))
        tracker.advance()
        at_val = step % cfg.val_interval == 0 or step == cfg.steps
        at_checkpoint = checkpoint_root is not None and (
            step % cfg.checkpoint_interval == 0 or step == cfg.steps
        )
        if len(pending) >= trainer.log_interval or at_val or at_checkpoint:
            flush()
        if at_val:
            validate(step)
        if at_checkpoint:
            trainer.save_checkpoint(checkpoint_root, step, _checkpoint_state(run, fingerprint))
        if at_val or at_checkpoint:
            mark = time.perf_counter()  # validation and saving are not training time
        if step == first_step and ctx.is_main:
            _report_startup(cfg.stage, startup)
    flush()
    trainer.wait_for_checkpoint()
    return run


def _report_startup(stage: str, startup: StartupPhases) -> None:
    """One log line: when the first step finished, and where the time before it went. The
    first step's own time includes CUDA graph capture or compilation where they are on."""
    startup.mark("first step")
    if startup.phases:
        print(
            f"[{stage}] first step done {startup.elapsed:.1f} s after the process started "
            f"({startup.summary()})",
            flush=True,
        )


def _checkpoint_state(run: RunState, fingerprint: str) -> dict:
    return {
        "fingerprint": fingerprint,
        "scheduler": {"kind": "warmup_cosine", "step": run.step},
        "history": run.history,
        "train_seconds": run.train_seconds,
        "trained_tokens": run.trained_tokens,
    }


def _resume(trainer: Trainer, root: Path, fingerprint: str) -> RunState:
    """Load the newest intact checkpoint of this configuration, or clear stale ones."""
    ctx = trainer.ctx
    decision = None
    if ctx.is_main:
        checkpoint, notes = checkpointing.latest(root)
        for note in notes:
            print(f"[{trainer.cfg.stage}] skipping damaged checkpoint {note}", flush=True)
        if checkpoint is not None and checkpoint.state.get("fingerprint") == fingerprint:
            decision = str(checkpoint.path)
        else:
            if checkpoint is not None:
                print(
                    f"[{trainer.cfg.stage}] {checkpoint.path} was made with other settings or inputs; starting afresh",
                    flush=True,
                )
            checkpointing.clear(root)
    decision = ctx.broadcast_object(decision)
    if decision is None:
        return RunState()
    checkpoint, reason = checkpointing.read_valid(Path(decision))
    if checkpoint is None:
        raise StageError(f"checkpoint {decision} became unreadable while resuming: {reason}")
    trainer.load_checkpoint(checkpoint)
    state = checkpoint.state
    if ctx.is_main:
        print(
            f"[{trainer.cfg.stage}] resuming from {checkpoint.path} (step {checkpoint.step})",
            flush=True,
        )
    return RunState(
        step=checkpoint.step,
        history=state["history"],
        train_seconds=float(state.get("train_seconds", 0.0)),
        trained_tokens=int(state.get("trained_tokens", 0)),
        resumed_from=checkpoint.step,
    )


def _diverged(
    cfg: TrainConfig, what: str, value: float, step: int, root: Path | None
) -> StageError:
    last = None
    if root is not None:
        checkpoint, _ = checkpointing.latest(root)
        last = checkpoint
    kept = (
        f"the last good checkpoint ({last.path}, step {last.step}) is kept"
        if last is not None
        else "no checkpoint was written yet"
    )
    return StageError(
        f"{cfg.stage}: the {what} became {value} at step {step}; stopped before saving anything from this step ({kept})",
        hint=f"lower {cfg.section}.lr (now {cfg.lr}) or raise {cfg.section}.warmup_steps, and check the data; with unchanged settings a rerun resumes from that checkpoint and would diverge again",
    )


def out_of_memory_error(cfg: TrainConfig, device: torch.device) -> StageError:
    return StageError(
        f"{cfg.stage} ran out of memory on {device} with {cfg.section}.micro_batch_size={cfg.micro_batch_size} and data.seq_length={cfg.seq_length}",
        hint=f"lower {cfg.section}.micro_batch_size (gradient accumulation keeps global_batch_size={cfg.global_batch_size}) or data.seq_length, or use more devices (resources.devices with resources.strategy: fsdp)",
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


# --------------------------------------------------------------------------------------------
# helpers of the recipe and its stages


def _maybe_tokenizer(path: Path, trust_remote_code: bool):
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from minispec.engines.torch.modeling import load_tokenizer

    return load_tokenizer(path, trust_remote_code=trust_remote_code)


def _stored_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
