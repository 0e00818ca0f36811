"""Lint rules of flavor ``bridge`` (Model-Optimizer's Megatron-Bridge scripts): what
``prune_minitron.py`` and ``distill.py`` cannot express, found before anything runs.

Each rule yields nothing for other flavors; :mod:`minispec.engines.nemo.lint` runs them with its
own rules. ``target_params`` (a parameter budget) is refused here for every engine and flavor
but this one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from minispec.errors import Problem
from minispec.spec.model import WidthPrune

# nvcr.io/nvidia/nemo:YY.MM[.xx]: NeMo 2's scripts/llm are gone from 25.11; Model-Optimizer's
# Megatron-Bridge examples are written for 26.x containers (its README: nemo:26.06)
_NEMO_TAG = re.compile(r"^nvcr\.io/nvidia/nemo:(\d{2})\.(\d{2})(?:\.\d+)?$")
LAST_NEMO2_CONTAINER = (25, 9)
FIRST_BRIDGE_CONTAINER = (26, 2)


def _bridge(loaded) -> bool:
    return loaded.spec.engine == "nemo" and loaded.spec.nemo_settings.flavor == "bridge"


def parameter_budget(loaded) -> Iterator[Problem]:
    """``target_params`` is ModelOpt's NAS; it replaces the explicit sizes."""
    for name, variant in loaded.spec.width_variants.items():
        if variant.target_params is None:
            continue
        path = ("prune", name, "target_params")
        if not _bridge(loaded):
            yield loaded.locate(
                path,
                "a parameter budget is searched by ModelOpt's Minitron NAS (prune_minitron.py --prune_target_params), "
                "which only engine nemo with flavor bridge runs",
                hint="set engine: nemo and nemo.flavor: bridge, or give target sizes (target_hidden_size, ...)",
            )
            continue
        sizes = [key for key in _SIZE_TARGETS if getattr(variant, key) is not None]
        if sizes:
            yield loaded.locate(
                ("prune", name, sizes[0]),
                "prune_minitron.py takes either explicit sizes (--prune_export_config) or a parameter budget "
                "(--prune_target_params), not both",
                hint="remove target_params or the target sizes",
            )
        yield loaded.locate(
            path,
            "the budget search scores its candidates on MMLU, which prune_minitron.py reads from the "
            "Hugging Face Hub (cais/mmlu); it also prunes depth (at most 20 % of the layers) and "
            "width (at most 40 % per dimension)",
            severity="warning",
        )


_SIZE_TARGETS = (
    "target_hidden_size",
    "target_ffn_hidden_size",
    "target_num_attention_heads",
    "target_num_query_groups",
)


def query_groups(loaded) -> Iterator[Problem]:
    """ModelOpt removed num_query_groups pruning after 0.40: a target must keep the teacher's."""
    if not _bridge(loaded):
        return
    from minispec.engines.nemo.shapes import lint_shapes

    shapes = lint_shapes(loaded)
    for name, variant in loaded.spec.width_variants.items():
        groups = variant.target_num_query_groups
        if groups is None:
            continue
        path = ("prune", name, "target_num_query_groups")
        if shapes is None:
            yield loaded.locate(
                path,
                "ModelOpt (since 0.41) does not prune query groups; this target must equal the teacher's, "
                "whose shapes are not known offline",
                hint="leave target_num_query_groups unset",
                severity="warning",
            )
        elif groups != shapes.num_query_groups:
            yield loaded.locate(
                path,
                f"ModelOpt (since 0.41) does not prune query groups: the teacher's {shapes.num_query_groups} stay, not {groups}",
                hint="leave target_num_query_groups unset, or use engine: torch (it prunes whole groups)",
            )


def width_targets(loaded) -> Iterator[Problem]:
    if not _bridge(loaded):
        return
    for name, variant in loaded.spec.width_variants.items():
        if variant.target_params is not None:
            continue
        if not any(
            getattr(variant, key) is not None
            for key in (
                "target_hidden_size",
                "target_ffn_hidden_size",
                "target_num_attention_heads",
            )
        ):
            yield loaded.locate(
                ("prune", name),
                "ModelOpt prunes hidden size, FFN size and attention heads; this variant sets none of them",
                hint="set target_hidden_size, target_ffn_hidden_size or target_num_attention_heads",
            )


def distillation_loss(loaded) -> Iterator[Problem]:
    """distill.py distills with ModelOpt's logits KL at T = 1 alone (skip_lm_loss) and has no
    options for another loss; its CE mixing rescales the KD term dynamically, which no
    ``alpha`` reproduces."""
    spec = loaded.spec
    if not _bridge(loaded) or spec.distill is None:
        return
    loss = spec.distill.loss
    reasons = {
        "kind": loss.kind != "logits_kl",
        "temperature": loss.temperature != 1.0,
        "alpha": loss.alpha != 1.0,
        "intermediate": bool(loss.intermediate),
    }
    for key, bad in reasons.items():
        if bad:
            yield loaded.locate(
                ("distill", "loss", key),
                "distill.py (flavor bridge) distills with logits KL at T = 1 alone; this setting has no option there",
                hint="remove it, or use nemo.flavor: nemo2 or engine: torch",
            )


def steps_run_by_minispec(loaded) -> Iterator[Problem]:
    """What the bridge flavor runs with the torch engine's code (ModelOpt has no script for it)."""
    spec = loaded.spec
    if not _bridge(loaded):
        return
    if spec.finetune is not None:
        if spec.resources.nodes > 1:
            yield loaded.locate(
                ("finetune",),
                "flavor bridge corrects the teacher with the torch engine's fine-tuning, which runs on one node",
                hint="use resources.nodes: 1, correct the teacher elsewhere, or nemo.flavor: nemo2",
            )
        yield loaded.locate(
            ("finetune",),
            "flavor bridge corrects the teacher with the torch engine's fine-tuning inside the container "
            "(Model-Optimizer's Megatron-Bridge examples have no fine-tuning script; distill.py needs a KD weight > 0)",
            severity="warning",
        )
    if spec.resources.precision == "fp32" and spec.distill is not None:
        yield loaded.locate(
            ("resources", "precision"),
            "distill.py trains in bf16; it has no option for fp32",
            severity="warning",
        )


def container_image(loaded) -> Iterator[Problem]:
    """An explicit NeMo image that does not have what the flavor runs."""
    spec = loaded.spec
    if spec.engine != "nemo" or not loaded.is_set(("nemo", "image")):
        return
    settings = spec.nemo_settings
    match = _NEMO_TAG.match(settings.image)
    if match is None:
        return
    version = (int(match.group(1)), int(match.group(2)))
    if settings.flavor == "bridge" and version < FIRST_BRIDGE_CONTAINER:
        yield loaded.locate(
            ("nemo", "image"),
            f"{settings.image} predates the Megatron-Bridge containers Model-Optimizer's scripts are written for",
            hint="use nvcr.io/nvidia/nemo:26.06 (leave nemo.image unset for the flavor's default)",
            severity="warning",
        )
    if settings.flavor == "nemo2" and version > LAST_NEMO2_CONTAINER:
        yield loaded.locate(
            ("nemo", "image"),
            f"{settings.image} no longer has NeMo 2's LLM collection (scripts/llm, deprecated from 25.11)",
            hint="use nvcr.io/nvidia/nemo:25.09 or older, or nemo.flavor: bridge",
            severity="warning",
        )


RULES = [
    parameter_budget,
    query_groups,
    width_targets,
    distillation_loss,
    steps_run_by_minispec,
    container_image,
]


def check_any_engine(loaded) -> list[Problem]:
    """The one rule that concerns every engine: ``target_params`` needs flavor bridge."""
    return list(parameter_budget(loaded))


__all__ = ["RULES", "WidthPrune", "check_any_engine"]
