"""Stages of the torch engine's training recipe: ``finetune`` (teacher correction) and
``distill@<variant>``. The glue between the spec and :mod:`minispec.engines.torch.train`: which
model starts, which teacher (or cached teacher logits) it learns from, the run's fingerprint
(checkpoints resume only the same run), and the model and metrics the stage writes.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from minispec import layout
from minispec.engines.torch import distributed
from minispec.engines.torch.distributed import DistContext
from minispec.engines.torch.losses import resolve_vocab_size
from minispec.engines.torch.tracking import Recorder
from minispec.engines.torch.train import (
    RunState,
    TrainConfig,
    Trainer,
    _maybe_tokenizer,
    _stored_dtype,
    _write_error,
    config_from_spec,
    fit,
)
from minispec.engines.torch.windows import TokenWindows
from minispec.errors import StageError
from minispec.timing import StartupPhases

if TYPE_CHECKING:
    from minispec.spec.model import Spec


def run_finetune(spec: Spec, variant: str | None, root: Path) -> None:
    """Teacher correction: fine-tune the imported teacher on the data → ``models/teacher-corrected``."""
    if spec.finetune is None:
        raise StageError(
            "the spec has no finetune block",
            hint="add a finetune block, or recompile: without it the pipeline has no finetune stage",
        )
    run_training(
        spec,
        root,
        section="finetune",
        stage="finetune",
        init_dir=layout.TEACHER_DIR,
        teacher_dir=None,
        output_dir=layout.CORRECTED_TEACHER_DIR,
    )


def run_distill(spec: Spec, variant: str | None, root: Path) -> None:
    """Distill the working teacher into the pruned ``variant`` → ``models/students/<variant>``."""
    if spec.distill is None:
        raise StageError(
            "the spec has no distill block", hint="add a distill block, or recompile the pipeline"
        )
    if variant not in spec.students:
        raise StageError(
            f"'{variant}' is not a student of this spec",
            hint=f"students: {', '.join(spec.students) or 'none'}",
        )
    run_training(
        spec,
        root,
        section="distill",
        stage=f"distill@{variant}",
        init_dir=layout.pruned_dir(variant),
        # with cached teacher logits the teacher is not read (the cache is opened in _run_training)
        teacher_dir=None if spec.distill.teacher_logits else layout.working_teacher_dir(spec),
        output_dir=layout.student_dir(variant),
    )


def run_training(
    spec: Spec,
    root: Path,
    *,
    section: str,
    stage: str,
    init_dir: str,
    teacher_dir: str | None,
    output_dir: str,
) -> None:
    root = Path(root)
    ctx = distributed.setup(spec.resources.accelerator, spec.resources.devices)
    try:
        _run_training(
            spec,
            root,
            ctx,
            section=section,
            stage=stage,
            init_dir=root / init_dir,
            teacher_dir=root / teacher_dir if teacher_dir else None,
            output_dir=root / output_dir,
        )
    finally:
        ctx.shutdown()


def _run_training(
    spec: Spec,
    root: Path,
    ctx: DistContext,
    *,
    section: str,
    stage: str,
    init_dir: Path,
    teacher_dir: Path | None,
    output_dir: Path,
) -> None:
    from minispec.engines.torch.modeling import load_model

    startup = StartupPhases()
    startup.mark("python and imports")
    cfg = config_from_spec(spec, section, stage, ctx.device)
    if ctx.device.type == "cpu":
        return_freed_host_memory()
    trust = spec.teacher.trust_remote_code
    tokenizer, vocab_size = _check_vocabulary(init_dir, teacher_dir, trust)
    train_windows = TokenWindows(root / layout.tokens_prefix("train"), cfg.seq_length)
    val_windows = TokenWindows(root / layout.tokens_prefix("validation"), cfg.seq_length)
    train_windows.require(1, f"{stage} (train split)")
    val_windows.require(1, f"{stage} (validation split)")
    inputs = {"model": init_dir, "train": train_windows.prefix, "validation": val_windows.prefix}
    teacher_cache = None
    if section == "distill" and spec.distill.teacher_logits is not None:
        from minispec.engines.torch.teacher_logits import open_for_training

        teacher_cache = open_for_training(spec, root, cfg, train_windows, tokenizer, vocab_size)
        inputs["teacher_logits"] = teacher_cache.directory
    if teacher_dir is not None:
        inputs["teacher"] = teacher_dir
    fingerprint = run_fingerprint(cfg, inputs)
    startup.mark("tokenizer and data")

    # FSDP shards on the host first, so a rank never holds the whole model on its GPU
    load_device = "cpu" if ctx.enabled and cfg.strategy == "fsdp" else ctx.device
    model = load_model(init_dir, dtype=torch.float32, device=load_device, trust_remote_code=trust)
    save_dtype = _stored_dtype(model.config)
    teacher = None
    if teacher_dir is not None and (cfg.loss.alpha > 0 or cfg.loss.intermediate):
        # the teacher only runs forward: hold it in the compute dtype (bf16 on GPU)
        teacher_dtype = (
            torch.bfloat16 if cfg.bf16_autocast and ctx.device.type == "cuda" else torch.float32
        )
        teacher = load_model(
            teacher_dir, dtype=teacher_dtype, device=load_device, trust_remote_code=trust
        )

    startup.mark("models")
    trainer = Trainer(
        cfg, model, teacher, vocab_size=vocab_size, ctx=ctx, teacher_cache=teacher_cache
    )
    startup.mark("trainer")
    tracker = Recorder()
    if ctx.is_main:
        from minispec.engines.torch.tracking import StageTracker

        tracker = StageTracker(
            root / layout.log_dir(stage),
            root / layout.tensorboard_dir(stage),
            total_steps=cfg.steps,
            initial_step=0,
            description=stage,
        )
    try:
        run = fit(
            trainer,
            train_windows,
            val_windows,
            tracker=tracker,
            checkpoint_root=root / layout.checkpoint_dir(stage),
            fingerprint=fingerprint,
            startup=startup,
        )
    finally:
        tracker.close()

    trainer.optimizer.state.clear()  # the optimizer state is in the checkpoint; free it first
    final = trainer.trained_model(dtype=save_dtype)
    if ctx.is_main:
        from minispec.engines.torch.modeling import save_model
        from minispec.fsio import write_metrics

        try:
            save_model(final, tokenizer, output_dir)
        except OSError as exc:
            raise _write_error(f"model directory {output_dir}", output_dir.parent, exc) from None
        write_metrics(root, stage, training_metrics(cfg, run, ctx), settings=TRAINING_SETTINGS)
    ctx.barrier()


def return_freed_host_memory(threshold: int = 1 << 20) -> None:
    """Serve host allocations of ``threshold`` bytes and more from mmap (glibc only).

    glibc raises its mmap threshold dynamically after large blocks are freed and then keeps
    later ones in its heap, where fragmentation holds them: CPU training's resident memory
    creeps up to the sum of transient peaks (measured: 4.7 instead of 4.3 GB for the
    SmolLM2-135M quickstart step). A fixed threshold returns each freed tensor to the OS.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# entries of the record that repeat params or say how the run went, not what it measured: they
# go to the info file beside the metrics (``fsio.write_metrics``)
TRAINING_SETTINGS = frozenset(
    {
        "global_batch_size",
        "micro_batch_size",
        "seq_length",
        "world_size",
        "resumed_from_step",
        "val_windows",
        "val_tokens",
        "loss",
    }
)


def training_metrics(cfg: TrainConfig, run: RunState, ctx: DistContext) -> dict:
    """``metrics/<stage>.json`` (the fields ``layout.py`` promises, then details)."""
    val = run.history["val"]
    train = run.history["train"]
    last = train[-1] if train else {}
    metrics = {
        "steps": cfg.steps,
        "tokens": cfg.steps * cfg.global_batch_size * cfg.seq_length,
        "initial_val_loss": val[0]["loss"] if val else None,
        "final_val_loss": val[-1]["loss"] if val else None,
        "final_train_loss": last.get("loss"),
        "tokens_per_second": run.trained_tokens / run.train_seconds
        if run.train_seconds > 0
        else None,
        "initial_val_perplexity": math.exp(min(val[0]["loss"], 700)) if val else None,
        "final_val_perplexity": math.exp(min(val[-1]["loss"], 700)) if val else None,
        "final_ce_loss": last.get("ce_loss"),
        "val_windows": run.val_windows,
        "val_tokens": run.val_windows * cfg.seq_length,
        "global_batch_size": cfg.global_batch_size,
        "micro_batch_size": cfg.micro_batch_size,
        "seq_length": cfg.seq_length,
        "precision": cfg.precision,
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "resumed_from_step": run.resumed_from,
    }
    if "kd_loss" in last:
        metrics["final_kd_loss"] = last["kd_loss"]
    if "intermediate_loss" in last:
        metrics["final_intermediate_loss"] = last["intermediate_loss"]
    if cfg.loss is not None:
        metrics["loss"] = {
            "kind": cfg.loss.kind,
            "temperature": cfg.loss.temperature,
            "alpha": cfg.loss.alpha,
        }
    return metrics


def _check_vocabulary(init_dir: Path, teacher_dir: Path | None, trust_remote_code: bool):
    """The tokenizer to save with the result and the real vocabulary size (checked vs the teacher)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(init_dir, trust_remote_code=trust_remote_code)
    tokenizer = _maybe_tokenizer(init_dir, trust_remote_code)
    if teacher_dir is None:
        return tokenizer, len(tokenizer) if tokenizer is not None else int(config.vocab_size)
    teacher_config = AutoConfig.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code)
    teacher_tokenizer = _maybe_tokenizer(teacher_dir, trust_remote_code)
    vocab = resolve_vocab_size(
        teacher_config,
        config,
        teacher_tokenizer,
        tokenizer,
        teacher_name=f"teacher {teacher_dir}",
        student_name=f"student {init_dir}",
    )
    return tokenizer or teacher_tokenizer, vocab


def run_fingerprint(cfg: TrainConfig, inputs: dict[str, Path]) -> str:
    """Hash of the settings and the identity of every input file: checkpoints resume only a
    run with the same fingerprint. Files are identified by name, size and mtime, and by content
    when small (configs, indexes), so rerunning an upstream stage starts training afresh."""
    digest = hashlib.sha256(json.dumps(cfg.fingerprint_data(), sort_keys=True).encode())
    for label, path in sorted(inputs.items()):
        path = Path(path)
        files = (
            sorted(path.iterdir()) if path.is_dir() else sorted(path.parent.glob(path.name + ".*"))
        )
        for file in files:
            if not file.is_file():
                continue
            stat = file.stat()
            digest.update(f"{label}/{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            if stat.st_size <= 16 << 20:
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
