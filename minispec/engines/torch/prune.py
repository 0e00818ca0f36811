"""The ``prune@<variant>`` stage: depth or width pruning of the working teacher.

Read top to bottom: check every input against the teacher's config (cheap, before any model
or data is loaded), load, score (depth importance, or width scores from the importance
stage's file / weight norms / a seeded draw), prune, save a standard Hugging Face directory at
``layout.pruned_dir(variant)``, and write ``layout.metrics_path("prune@<variant>")`` with the
sizes before and after, parameter counts, what was kept or dropped, and the validation loss of
the teacher and the pruned model on the first few validation windows
(``calibration.PRUNE_VALIDATION_WINDOWS``) when a tokenized validation split exists.

Depth variants with ``target_num_layers`` also write their per-layer and per-block scores to
``layout.depth_scores_path(variant)``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from minispec import layout
from minispec.engines.torch import modeling
from minispec.engines.torch.calibration import (
    calibration_set,
    iter_batches,
    validation_windows,
    windows_loss,
)
from minispec.engines.torch.depth import (
    check_drop_layers,
    choose_layers,
    drop_layers,
    score_layers,
    scores_report,
)
from minispec.engines.torch.importance import load_importance
from minispec.engines.torch.modeling import load_teacher, read_teacher_config
from minispec.engines.torch.surgery import model_dims
from minispec.engines.torch.width import (
    activation_scores,
    check_pruned_config,
    magnitude_scores,
    prune_width,
    random_scores,
    resolve_targets,
)
from minispec.errors import StageError
from minispec.fsio import write_json_atomic, write_metrics
from minispec.shapes import ModelShapes
from minispec.spec.model import DepthPrune, SearchPrune, WidthPrune

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def run(spec, variant: str | None, root: Path) -> None:
    if variant not in spec.prune:
        raise StageError(
            f"prune variant '{variant}' is not in the spec",
            hint=f"variants: {', '.join(spec.prune) or 'none'}",
        )
    config = read_teacher_config(spec, root)
    settings = spec.prune[variant]
    if isinstance(settings, DepthPrune):
        run_depth(spec, variant, settings, config, root)
    elif isinstance(settings, WidthPrune):
        run_width(spec, variant, settings, config, root)
    elif isinstance(settings, SearchPrune):  # the search's ranking stage (minispec.search)
        from minispec.search.stages import run_rank

        run_rank(spec, variant, root)
    else:  # pragma: no cover - the spec model admits only these kinds
        raise StageError(f"prune.{variant}: unknown kind")


# --------------------------------------------------------------------------------------------
# depth


def run_depth(spec, variant: str, settings: DepthPrune, config, root: Path) -> None:
    where = f"prune.{variant}"
    n_layers = config.num_hidden_layers
    calibration = None
    scores_json = None
    if settings.drop_layers is not None:
        dropped = check_drop_layers(list(settings.drop_layers), n_layers, f"{where}.drop_layers")
    elif settings.target_num_layers is not None:
        target = settings.target_num_layers
        if target >= n_layers:
            raise StageError(
                f"{where}.target_num_layers is {target}, but the model has {n_layers} layers: a target must be smaller",
                hint=f"set target_num_layers below {n_layers}",
            )
        calibration = calibration_set(
            root,
            spec.data.seq_length,
            settings.calibration_samples,
            spec.seed,
            f"{where}.calibration_samples",
        )
    else:
        raise StageError(f"{where}: set drop_layers or target_num_layers")
    validation = validation_windows(root, spec.data.seq_length)

    model, tokenizer, device = load_teacher(spec, root)
    started = time.perf_counter()
    extra: dict = {}
    if calibration is not None:
        windows, indices = calibration
        block_length = n_layers - settings.target_num_layers
        scores = score_layers(
            model,
            iter_batches(windows, indices, device),
            block_length,
            block_losses=settings.importance == "lm_loss",
        )
        dropped = choose_layers(scores, settings.importance)
        scores_json = scores_report(scores, settings.importance, dropped, len(indices))
        extra = {
            "importance": settings.importance,
            "calibration_samples": len(indices),
            "calibration_full_model_loss": scores.full_loss,
        }
        if scores.block_loss is not None:
            extra["calibration_block_loss"] = min(scores.block_loss)
    pruned = drop_layers(model, dropped)
    seconds = time.perf_counter() - started
    kept = [i + 1 for i in range(n_layers) if i not in set(dropped)]
    print(
        f"prune@{variant}: dropped layers {[i + 1 for i in dropped]} (1-indexed), {len(kept)} of {n_layers} kept"
    )
    finish(
        spec,
        variant,
        root,
        model,
        pruned,
        tokenizer,
        device,
        validation,
        {"kind": "depth", "drop_layers": [i + 1 for i in dropped], "kept_layers": kept, **extra},
        seconds,
    )
    if scores_json is not None:  # inside the pruned model's directory: after save_model made it
        write_json_atomic(root / layout.depth_scores_path(variant), scores_json)


# --------------------------------------------------------------------------------------------
# width


def run_width(spec, variant: str, settings: WidthPrune, config, root: Path) -> None:
    where = f"prune.{variant}"
    dims = model_dims(config)
    targets = resolve_targets(settings, dims, where)
    check_pruned_config(config, targets, where)
    tensors = None
    if settings.importance == "activation":
        tensors = load_importance(
            root / layout.width_importance_path(),
            dims,
            calibration_samples=settings.calibration_samples,
            seq_length=spec.data.seq_length,
        )
    validation = validation_windows(root, spec.data.seq_length)

    model, tokenizer, device = load_teacher(spec, root)
    started = time.perf_counter()
    if settings.importance == "activation":
        scores = activation_scores(tensors, dims)
    elif settings.importance == "magnitude":
        scores = magnitude_scores(model)
    else:
        scores = random_scores(dims, spec.seed)
    pruned, _plan = prune_width(model, scores, targets)
    seconds = time.perf_counter() - started
    print(
        f"prune@{variant}: hidden {dims.hidden_size}->{targets.hidden_size}, ffn {dims.ffn_hidden_size}->{targets.ffn_hidden_size}, "
        f"heads {dims.num_attention_heads}->{targets.num_attention_heads}, query groups {dims.num_query_groups}->{targets.num_query_groups} "
        f"({settings.importance} importance)"
    )
    finish(
        spec,
        variant,
        root,
        model,
        pruned,
        tokenizer,
        device,
        validation,
        {"kind": "width", "importance": settings.importance},
        seconds,
    )


# --------------------------------------------------------------------------------------------
# save and report


# what the spec (or the teacher) already says, and how the pass ran: the info file, not metrics
PRUNE_SETTINGS = frozenset(
    {
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "head_dim",
        "calibration_samples",
        "calibration_tokens",
        "val_windows",
        "val_tokens",
    }
)


def sizes(model: PreTrainedModel) -> dict:
    dims: ModelShapes = model_dims(model.config)
    params = modeling.count_parameters(model)
    return {
        "num_layers": dims.num_layers,
        "hidden_size": dims.hidden_size,
        "ffn_hidden_size": dims.ffn_hidden_size,
        "num_attention_heads": dims.num_attention_heads,
        "num_query_groups": dims.num_query_groups,
        "head_dim": dims.head_dim,
        "params_total": params["total"],
        "params_non_embedding": params["non_embedding"],
    }


def finish(
    spec,
    variant,
    root,
    teacher,
    pruned,
    tokenizer,
    device,
    validation,
    details: dict,
    seconds: float,
) -> None:
    """Save the pruned model, then its metrics (with the quick validation loss)."""
    modeling.save_model(pruned, tokenizer, root / layout.pruned_dir(variant))
    metrics = {
        **details,
        "source": sizes(teacher),
        "pruned": sizes(pruned),
        "prune_seconds": round(seconds, 3),
    }
    metrics["params_kept_fraction"] = (
        metrics["pruned"]["params_total"] / metrics["source"]["params_total"]
    )
    if validation is not None:
        windows, indices = validation
        metrics["val_windows"] = len(indices)
        metrics["val_tokens"] = len(indices) * windows.seq_length
        metrics["teacher_val_loss"] = windows_loss(teacher, windows, indices, device)
        metrics["val_loss"] = windows_loss(pruned, windows, indices, device)
        print(
            f"prune@{variant}: validation loss {metrics['val_loss']:.4f} (teacher {metrics['teacher_val_loss']:.4f}) on {len(indices)} windows"
        )
    # numbers to the metrics file; settings, shapes that repeat the spec and provenance beside it
    write_metrics(root, f"prune@{variant}", metrics, settings=PRUNE_SETTINGS)
