"""The stages of a ``kind: search`` prune variant ``<v>`` on the torch engine.

    search@<v>              enumerate the candidates (:mod:`minispec.search.space`), prune each
                            from the cached activation importance and the teacher's per-layer
                            block influence, score it by validation loss, keep the top_k
    search-prune@<v>-<i>    prune the candidate in slot i again (deterministic) and save it
    search-distill@<v>-<i>  distil it briefly (``short_distill.tokens``), then score it on the
                            same validation windows as right after pruning
    prune@<v>               rank the slots by that loss; the winner's short-distilled model
                            becomes ``models/pruned/<v>``, a normal variant from here on

Both scores are the mean next-token loss on the same first validation windows
(``calibration.PRUNE_VALIDATION_WINDOWS``), so the two rankings compare like with like.
Layer choice for shallower candidates: the layers with the lowest block influence
(1 - cos(input, output), ShortGPT / ModelOpt's depth score) on the calibration windows.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from minispec import layout
from minispec.errors import StageError
from minispec.fsio import read_metrics_record, write_json_atomic, write_metrics
from minispec.search.space import Arch, budget, enumerate_candidates, teacher_record
from minispec.shapes import ModelShapes

CANDIDATE_FILE = "candidate.json"  # inside each slot's pruned model directory
CANDIDATE_KEYS = (
    "id",
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "params_total",
    "params_non_embedding",
    "dropped_layers",
)

# --------------------------------------------------------------------------------------------
# shared pieces


def search_settings(spec, variant: str):
    from minispec.spec.model import SearchPrune

    settings = spec.prune.get(variant)
    if not isinstance(settings, SearchPrune):
        raise StageError(
            f"'{variant}' is not a search variant of this spec",
            hint=f"search variants: {', '.join(spec.search_variants) or 'none'}",
        )
    return settings


def read_json(path: Path, what: str):
    if not path.exists():
        raise StageError(f"{path} not found ({what})", hint="run the stages before this one")
    return json.loads(path.read_text(encoding="utf-8"))


def width_scores(spec, settings, config, root: Path):
    from minispec.engines.torch.importance import load_importance
    from minispec.engines.torch.surgery import model_dims
    from minispec.engines.torch.width import activation_scores

    dims = model_dims(config)
    tensors = load_importance(
        root / layout.width_importance_path(),
        dims,
        calibration_samples=settings.calibration_samples,
        seq_length=spec.data.seq_length,
    )
    return activation_scores(tensors, dims)


def prune_candidate(model, scores, block_influence: list[float], arch: Arch, where: str):
    """Width first (importance is indexed by the teacher's layers), then the lowest-influence layers."""
    from minispec.engines.torch.depth import drop_layers
    from minispec.engines.torch.surgery import model_dims
    from minispec.engines.torch.width import WidthTargets, check_pruned_config, prune_width

    dims = model_dims(model.config)
    targets = WidthTargets(
        arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads, arch.num_query_groups
    )
    pruned = model
    if (targets.hidden_size, targets.ffn_hidden_size, targets.num_attention_heads) != (
        dims.hidden_size,
        dims.ffn_hidden_size,
        dims.num_attention_heads,
    ):
        check_pruned_config(model.config, targets, where)
        pruned, _ = prune_width(model, scores, targets)
    dropped = layers_to_drop(block_influence, arch.num_layers)
    if dropped:
        pruned = drop_layers(pruned, dropped)
    return pruned, dropped


def layers_to_drop(block_influence: list[float], keep: int) -> list[int]:
    """0-indexed layers with the lowest block influence, so that ``keep`` remain."""
    order = sorted(range(len(block_influence)), key=lambda i: block_influence[i])
    return sorted(order[: len(block_influence) - keep])


def arch_of(record: dict) -> Arch:
    return Arch(
        record["num_layers"],
        record["hidden_size"],
        record["ffn_hidden_size"],
        record["num_attention_heads"],
        record["num_query_groups"],
    )


def slot_record(root: Path, key: str) -> tuple[dict, dict]:
    """(candidates.json, the candidate in slot ``key``)."""
    variant, slot = layout.parse_search_slot(key)
    data = read_json(root / layout.search_candidates_path(variant), f"search@{variant}'s output")
    if slot > len(data["slots"]):
        raise StageError(f"search@{variant} kept {len(data['slots'])} candidates, not {slot}")
    by_id = {c["id"]: c for c in data["candidates"]}
    return data, by_id[data["slots"][slot - 1]]


# --------------------------------------------------------------------------------------------
# search@<v>


def run_search(spec, variant: str | None, root: Path) -> None:
    from minispec.engines.torch.calibration import (
        calibration_set,
        iter_batches,
        validation_windows,
        windows_loss,
    )
    from minispec.engines.torch.depth import score_layers
    from minispec.engines.torch.modeling import count_parameters, load_teacher, read_teacher_config

    settings = search_settings(spec, variant)
    where = f"prune.{variant}"
    config = read_teacher_config(spec, root)
    dims = ModelShapes.from_hf_object(config)
    candidates = enumerate_candidates(dims, settings)
    if len(candidates) < settings.top_k:
        raise StageError(
            f"{where}: {len(candidates)} architectures fit the budget, fewer than top_k {settings.top_k}",
            hint="raise budget_tolerance, max_width_pruning or max_depth_pruning, or lower top_k",
        )
    validation = validation_windows(root, spec.data.seq_length)
    if validation is None:
        raise StageError(f"{where}: scoring candidates needs a tokenized validation split")
    scores = width_scores(spec, settings, config, root)
    model, _tokenizer, device = load_teacher(spec, root)
    windows, indices = calibration_set(
        root,
        spec.data.seq_length,
        settings.calibration_samples,
        spec.seed,
        f"{where}.calibration_samples",
    )
    depth = score_layers(model, iter_batches(windows, indices, device), 1, block_losses=False)
    val_windows, val_indices = validation
    teacher_loss = windows_loss(model, val_windows, val_indices, device)
    records = []
    for candidate in candidates:
        pruned, dropped = prune_candidate(
            model, scores, depth.block_influence, candidate.arch, f"{where} ({candidate.id})"
        )
        loss = windows_loss(pruned, val_windows, val_indices, device)
        counted = count_parameters(pruned)
        records.append(
            {
                **candidate.as_dict(),
                "params_total": counted["total"],
                "params_non_embedding": counted["non_embedding"],
                "dropped_layers": [i + 1 for i in dropped],
                "val_loss_pruned": loss,
            }
        )
        print(
            f"search@{variant}: {candidate.id} {candidate.arch.label()} loss after pruning {loss:.4f}"
        )
        del pruned
    ranked = sorted(records, key=lambda r: (r["val_loss_pruned"], r["id"]))
    for rank, record in enumerate(ranked, start=1):
        record["rank_pruned"] = rank
    data = {
        "variant": variant,
        "budget": {
            "kind": "params_total"
            if settings.target_params is not None
            else "params_non_embedding",
            "target": budget(settings),
            "tolerance": settings.budget_tolerance,
        },
        "teacher": {**teacher_record(dims), "val_loss": teacher_loss},
        "val_windows": len(val_indices),
        "block_influence": list(depth.block_influence),
        "candidates": records,
        "slots": [r["id"] for r in ranked[: settings.top_k]],
    }
    write_json_atomic(root / layout.search_candidates_path(variant), data)
    write_metrics(
        root,
        f"search@{variant}",
        {
            "candidates": len(records),
            "kept": data["slots"],
            "best_val_loss_pruned": ranked[0]["val_loss_pruned"],
            "teacher_val_loss": teacher_loss,
        },
    )


# --------------------------------------------------------------------------------------------
# search-prune@<v>-<i>


def run_search_prune(spec, key: str | None, root: Path) -> None:
    from minispec.engines.torch import modeling
    from minispec.engines.torch.calibration import validation_windows, windows_loss
    from minispec.engines.torch.modeling import load_teacher, read_teacher_config

    variant, slot = layout.parse_search_slot(key)
    settings = search_settings(spec, variant)
    data, record = slot_record(root, key)
    config = read_teacher_config(spec, root)
    scores = width_scores(spec, settings, config, root)
    model, tokenizer, device = load_teacher(spec, root)
    pruned, dropped = prune_candidate(
        model, scores, data["block_influence"], arch_of(record), f"prune.{variant} ({record['id']})"
    )
    # which candidate this is travels with the model, so the short distillation (which depends
    # on the model, not on the candidates file) knows it
    candidate = {k: record[k] for k in CANDIDATE_KEYS}
    modeling.save_model(
        pruned,
        tokenizer,
        root / layout.search_pruned_dir(key),
        extra_files={CANDIDATE_FILE: json.dumps(candidate, indent=1, sort_keys=True) + "\n"},
    )
    windows, indices = validation_windows(root, spec.data.seq_length)
    loss = windows_loss(pruned, windows, indices, device)
    print(f"search-prune@{key}: {record['id']} loss after pruning {loss:.4f}")
    write_metrics(
        root,
        f"search-prune@{key}",
        {
            "candidate": record["id"],
            "slot": slot,
            "val_loss": loss,
            "dropped_layers": [i + 1 for i in dropped],
        },
    )


# --------------------------------------------------------------------------------------------
# search-distill@<v>-<i>


def short_distill_spec(spec, settings):
    """The spec's distill block with the short run's steps; intermediate-layer losses are left
    out (their layer pairs name one student's layers, and candidates differ in depth)."""
    if spec.distill is None:
        raise StageError(
            "a search variant needs a distill block (the short distillation uses its settings)"
        )
    tokens_per_step = spec.distill.global_batch_size * spec.data.seq_length
    steps = max(1, math.ceil(settings.short_distill.tokens / tokens_per_step))
    distill = spec.distill.model_copy(
        update={
            "steps": steps,
            "val_interval": steps,
            "warmup_steps": min(spec.distill.warmup_steps, steps - 1),
            "checkpoint_interval": None,
            "loss": spec.distill.loss.model_copy(update={"intermediate": []}),
        }
    )
    return spec.model_copy(update={"distill": distill})


def run_search_distill(spec, key: str | None, root: Path) -> None:
    from minispec.engines.torch import modeling
    from minispec.engines.torch.calibration import validation_windows, windows_loss
    from minispec.engines.torch.train_stage import run_training

    variant, slot = layout.parse_search_slot(key)
    settings = search_settings(spec, variant)
    short = short_distill_spec(spec, settings)
    stage = f"search-distill@{key}"
    run_training(
        short,
        root,
        section="distill",
        stage=stage,
        init_dir=layout.search_pruned_dir(key),
        teacher_dir=layout.working_teacher_dir(spec),
        output_dir=layout.search_student_dir(key),
    )
    record = read_json(
        root / layout.search_pruned_dir(key) / CANDIDATE_FILE, "the pruned candidate"
    )
    device = modeling.resolve_device(spec.resources.accelerator)
    model = modeling.load_model(
        root / layout.search_student_dir(key),
        dtype=modeling.resolve_dtype(spec.teacher.dtype, device),
        device=device,
        trust_remote_code=spec.teacher.trust_remote_code,
    )
    windows, indices = validation_windows(root, spec.data.seq_length)
    loss = windows_loss(model, windows, indices, device)
    from minispec.engines.torch.train_stage import TRAINING_SETTINGS

    if not (root / layout.metrics_path(stage)).is_file():
        raise StageError(
            f"{stage}: the short distillation wrote no metrics ({layout.metrics_path(stage)})"
        )
    metrics = read_metrics_record(root, stage)  # numbers and settings, as the trainer wrote them
    metrics.update({"candidate": record["id"], "slot": slot, "search_val_loss": loss})
    write_metrics(root, stage, metrics, settings=TRAINING_SETTINGS)
    print(f"{stage}: {record['id']} loss after short distillation {loss:.4f}")


# --------------------------------------------------------------------------------------------
# prune@<v>: the ranking


def run_rank(spec, variant: str, root: Path) -> None:
    """Pick the slot with the lowest loss after the short distillation; its model becomes the variant."""
    from minispec.fsio import atomic_dir

    settings = search_settings(spec, variant)
    data = read_json(root / layout.search_candidates_path(variant), f"search@{variant}'s output")
    by_id = {c["id"]: dict(c) for c in data["candidates"]}
    distilled = []
    for slot in range(1, len(data["slots"]) + 1):
        key = layout.search_slot(variant, slot)
        metrics = read_metrics_record(root, f"search-distill@{key}")
        if "candidate" not in metrics:
            raise StageError(
                f"prune@{variant}: search-distill@{key} recorded no candidate",
                hint=f"re-run search-distill@{key}",
            )
        record = by_id[metrics["candidate"]]
        record["val_loss_short_distill"] = metrics["search_val_loss"]
        record["short_distill_tokens"] = metrics.get("tokens")
        record["slot"] = slot
        distilled.append(record)
    ranked = sorted(distilled, key=lambda r: (r["val_loss_short_distill"], r["id"]))
    for rank, record in enumerate(ranked, start=1):
        record["rank_short_distill"] = rank
    winner = ranked[0]
    key = layout.search_slot(variant, winner["slot"])
    with atomic_dir(root / layout.pruned_dir(variant)) as tmp:
        for file in sorted((root / layout.search_student_dir(key)).iterdir()):
            if file.is_file():
                shutil.copy2(file, tmp / file.name)
    best_after_pruning = min(distilled, key=lambda r: r["rank_pruned"])
    teacher = data["teacher"]
    sizes = {
        k: winner[k]
        for k in (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_query_groups",
        )
    }
    metrics = {
        "kind": "search",
        "winner": winner["id"],
        "winner_slot": winner["slot"],
        "drop_layers": winner["dropped_layers"],
        "ranking_changed": best_after_pruning["id"] != winner["id"],
        "order_changed": [r["id"] for r in ranked]
        != [r["id"] for r in sorted(distilled, key=lambda r: r["rank_pruned"])],
        "source": {
            "num_layers": teacher["num_layers"],
            "hidden_size": teacher["hidden_size"],
            "ffn_hidden_size": teacher["ffn_hidden_size"],
            "num_attention_heads": teacher["num_attention_heads"],
            "num_query_groups": teacher["num_query_groups"],
            "head_dim": teacher["head_dim"],
        },
        "pruned": {
            **sizes,
            "head_dim": teacher["head_dim"],
            "params_total": winner["params_total"],
            "params_non_embedding": winner["params_non_embedding"],
        },
        "teacher_val_loss": teacher["val_loss"],
        "val_loss": winner["val_loss_short_distill"],
        "val_windows": data["val_windows"],
        "search": {
            "budget": data["budget"],
            "top_k": settings.top_k,
            "short_distill_tokens": settings.short_distill.tokens,
            "candidates": sorted(by_id.values(), key=lambda r: r["rank_pruned"]),
        },
    }
    # the distilled slots carry their short-KD loss; merge them into the full list
    for record in metrics["search"]["candidates"]:
        for done in distilled:
            if done["id"] == record["id"]:
                record.update(done)
    write_metrics(root, f"prune@{variant}", metrics)
    print(
        f"prune@{variant}: {winner['id']} ({arch_of(winner).label()}) wins with loss "
        f"{winner['val_loss_short_distill']:.4f} after the short distillation"
        + (
            f"; right after pruning {best_after_pruning['id']} led"
            if metrics["ranking_changed"]
            else ""
        )
    )
