"""The stages of ``kind: search`` prune variants in the stage graph (see :mod:`minispec.compile.graph`).

DVC's ``foreach`` needs the stages at compile time, while which candidates survive the score
right after pruning is known only when ``search@<v>`` has run. So the graph has ``top_k``
candidate *slots* per search variant, ``<v>-1 .. <v>-<top_k>``: ``search@<v>`` writes which
candidate fills each slot (``layout.search_candidates_path``), and each slot is a
``search-prune`` → ``search-distill`` pair cached like any variant. A change to the search
settings re-runs ``search@<v>``; a slot whose candidate stayed the same then finds its inputs
unchanged: the candidates file changed, so DVC re-runs the slot's prune, but the pruned model
(which names its candidate in ``candidate.json``) hashes the same and the short distillation is
not run again.
"""

from __future__ import annotations

from minispec import layout
from minispec.steps import (
    MODEL_LOADING,
    TRAINING_RESOURCES,
    Out,
    Stage,
    with_training_logs,
)


def slots(spec, variant: str) -> list[str]:
    return [layout.search_slot(variant, i) for i in range(1, spec.prune[variant].top_k + 1)]


def search_stages(spec) -> list[Stage]:
    variants = list(spec.search_variants)
    stages = [score_stage(spec, v) for v in variants]
    stages += [slot_prune_stage(spec, v, key) for v in variants for key in slots(spec, v)]
    stages += [slot_distill_stage(spec, v, key) for v in variants for key in slots(spec, v)]
    return stages


def score_stage(spec, variant: str) -> Stage:
    name = f"search@{variant}"
    return Stage(
        name,
        "search",
        variant,
        f"Enumerate the architectures of search {variant} within its budget, score each right after pruning, keep the top_k",
        deps=[layout.working_teacher_dir(spec), layout.TOKENS_DIR, layout.IMPORTANCE_DIR],
        params=[*scoring_params(spec, variant), "data.seq_length", "seed", *MODEL_LOADING],
        outs=[
            Out(layout.search_dir(variant)),
            Out(layout.info_path(name), cache=False),
            Out(layout.metrics_path(name), cache=False),  # not a DVC metric: minispec.summary
        ],
    )


def scoring_params(spec, variant: str) -> list[str]:
    """Every setting of the search but the short distillation's, which only its slots read
    (a new token count must not re-score the candidates)."""
    fields = type(spec.prune[variant]).model_fields
    return [f"prune.{variant}.{key}" for key in fields if key != "short_distill"]


def slot_prune_stage(spec, variant: str, key: str) -> Stage:
    name = f"search-prune@{key}"
    # the slot's candidate comes from the candidates file; the settings that shaped it are
    # search@'s, so this stage reads no prune.<v> key itself
    return Stage(
        name,
        "search-prune",
        key,
        f"Prune the search candidate in slot {key}",
        deps=[
            layout.working_teacher_dir(spec),
            layout.TOKENS_DIR,
            layout.IMPORTANCE_DIR,
            layout.search_dir(variant),
        ],
        params=[f"prune.{variant}.calibration_samples", "data.seq_length", "seed", *MODEL_LOADING],
        outs=[
            Out(layout.search_pruned_dir(key)),
            Out(layout.info_path(name), cache=False),
            Out(layout.metrics_path(name), cache=False),
        ],
    )


def slot_distill_stage(spec, variant: str, key: str) -> Stage:
    name = f"search-distill@{key}"
    # the short run sets its own steps, validation and checkpoint interval: changing the full
    # distillation's must not re-run every candidate
    own = {"students", "steps", "val_interval", "checkpoint_interval"}
    settings = [f"distill.{k}" for k in type(spec.distill).model_fields if k not in own]
    stage = Stage(
        name,
        "search-distill",
        key,
        f"Distil the search candidate in slot {key} briefly, to rank it",
        deps=[
            layout.search_pruned_dir(key),
            layout.working_teacher_dir(spec),
            layout.TOKENS_DIR,
        ],
        params=[
            *settings,
            f"prune.{variant}.short_distill",
            "data.seq_length",
            "seed",
            *TRAINING_RESOURCES,
        ],
        outs=[Out(layout.search_student_dir(key))],
    )
    return with_training_logs(stage)


def rank_stage(spec, variant: str) -> Stage:
    name = f"prune@{variant}"
    deps = [layout.search_dir(variant)]
    for key in slots(spec, variant):
        deps += [
            layout.search_student_dir(key),
            layout.metrics_path(f"search-distill@{key}"),
            layout.info_path(f"search-distill@{key}"),  # the candidate the slot held
        ]
    return Stage(
        name,
        "prune",
        variant,
        f"Rank the candidates of search {variant} after their short distillation; the winner becomes the variant",
        deps=deps,
        params=[f"prune.{variant}.top_k", f"prune.{variant}.short_distill"],
        # the same outputs as a plain prune variant's (one foreach group holds both)
        outs=[
            Out(layout.pruned_dir(variant)),
            Out(layout.info_path(name), cache=False),
            Out(layout.metrics_path(name), cache=False),
        ],
    )
