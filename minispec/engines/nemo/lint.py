"""Lint rules of ``engine: nemo``: what NeMo would reject, or silently do differently, found
before anything runs. Each problem is located at the spec key that causes it.

``check(loaded)`` returns nothing for other engines, so the linter may call it for every spec.
"""

from __future__ import annotations

from collections.abc import Iterator

from minispec.engines import reads
from minispec.engines.nemo import bridge_lint, kd
from minispec.engines.nemo.shapes import lint_shapes
from minispec.errors import Problem
from minispec.shapes import ModelShapes
from minispec.sources import parse_source
from minispec.spec.model import DepthPrune, WidthPrune

# Megatron-Core's OptimizerConfig defaults, which gpt_train.py uses (it has no flags for them)
NEMO_OPTIMIZER_DEFAULTS = {
    "weight_decay": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "grad_clip": 1.0,
}


def check(loaded) -> list[Problem]:
    if loaded.spec.engine != "nemo":
        return []
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(rule(loaded))
    return problems


def _shapes(loaded) -> ModelShapes | None:
    return lint_shapes(loaded)


def teacher_source(loaded) -> Iterator[Problem]:
    text = loaded.spec.teacher.source
    try:
        source = parse_source(text)
    except Exception as exc:  # MinispecError: reported with its message
        yield loaded.locate(("teacher", "source"), str(exc))
        return
    if source.kind == "package" or source.is_gguf:
        yield loaded.locate(
            ("teacher", "source"),
            "the nemo engine imports Hugging Face checkpoints; a GGUF or package file is not one",
            hint="use hf://ORG/NAME or a local Hugging Face directory, or engine: torch",
        )


def launcher(loaded) -> Iterator[Problem]:
    spec = loaded.spec
    settings = spec.nemo_settings
    if spec.resources.nodes > 1 and settings.launcher != "slurm":
        yield loaded.locate(
            ("resources", "nodes"),
            f"{spec.resources.nodes} nodes need a cluster launcher; nemo.launcher '{settings.launcher}' runs on one machine",
            hint="set nemo.launcher: slurm",
        )


def parallelism(loaded) -> Iterator[Problem]:
    """Megatron's constraints: TP × PP divides the GPUs; TP divides heads, query groups, FFN."""
    spec = loaded.spec
    resources = spec.resources
    tp = resources.tensor_parallel
    world = resources.devices * resources.nodes
    # TP × PP dividing the GPUs is a rule of every engine (spec/rules.py: parallelism)
    shapes = _shapes(loaded)
    if shapes is None:
        if tp > 1:
            yield loaded.locate(
                ("resources", "tensor_parallel"),
                f"the shapes of teacher '{spec.teacher.source}' are not known offline, so tensor_parallel {tp} "
                "could not be checked against its heads and query groups",
                hint="use a local Hugging Face directory as teacher.source to have it checked",
                severity="warning",
            )
    else:
        yield from _tp_divides(loaded, ("resources", "tensor_parallel"), tp, "the teacher", shapes.num_attention_heads,
                               shapes.num_query_groups, shapes.ffn_hidden_size)  # fmt: skip
    for name, variant in spec.width_variants.items():
        if name not in spec.students:
            continue
        heads = variant.target_num_attention_heads or (
            shapes.num_attention_heads if shapes else None
        )
        groups = variant.target_num_query_groups or (shapes.num_query_groups if shapes else None)
        yield from _tp_divides(
            loaded,
            ("prune", name),
            tp,
            f"student '{name}'",
            heads,
            groups,
            variant.target_ffn_hidden_size,
        )
    if shapes is not None and spec.prune:
        needs_calibration = [
            n for n, v in spec.prune.items() if not (isinstance(v, DepthPrune) and v.drop_layers)
        ]
        if needs_calibration and world > shapes.num_layers:
            yield loaded.locate(
                ("prune", needs_calibration[0]),
                f"gpt_prune.py prunes by importance with tensor parallel 1 and pipeline parallel over all {world} GPUs, "
                f"more stages than the teacher's {shapes.num_layers} layers",
                hint="use fewer devices for this pipeline",
            )


def _tp_divides(
    loaded, path, tp: int, what: str, heads: int | None, groups: int | None, ffn: int | None
) -> Iterator[Problem]:
    if tp <= 1:
        return
    for size, label in (
        (heads, "attention heads"),
        (groups, "query groups"),
        (ffn, "FFN hidden size"),
    ):
        if size is not None and size % tp:
            yield loaded.locate(
                path,
                f"tensor_parallel {tp} does not divide the {size} {label} of {what}; Megatron shards them evenly",
                hint=f"choose a tensor_parallel that divides {size}",
            )


def pruning(loaded) -> Iterator[Problem]:
    spec = loaded.spec
    legacy = spec.nemo_settings.flavor == "legacy"
    for name, variant in spec.prune.items():
        base = ("prune", name)
        if isinstance(variant, DepthPrune):
            if variant.target_num_layers is not None and variant.importance != "block_influence":
                yield loaded.locate(
                    base + ("importance",),
                    f"NeMo chooses layers to drop by Block Influence (cosine similarity), not by '{variant.importance}'",
                    hint="set importance: block_influence, or list drop_layers",
                )
            if legacy and variant.drop_layers and spec.resources.nodes > 1:
                yield loaded.locate(
                    base + ("drop_layers",),
                    "megatron_gpt_drop_layers.py runs on one node (it has no num_nodes option)",
                    hint="use resources.nodes: 1 or nemo.flavor: nemo2",
                )
            continue
        if not isinstance(variant, WidthPrune):  # kind: search, refused by spec/rules.py
            continue
        if variant.importance != "activation":
            yield loaded.locate(
                base + ("importance",),
                f"NeMo prunes width by Minitron's activation importance only, not '{variant.importance}'",
                hint="set importance: activation, or use engine: torch",
            )
        if spec.nemo_settings.flavor == "bridge":
            continue  # ModelOpt prunes heads within groups, never groups (bridge_lint)
        if (variant.target_num_attention_heads is None) != (
            variant.target_num_query_groups is None
        ):
            missing = (
                "target_num_query_groups"
                if variant.target_num_query_groups is None
                else "target_num_attention_heads"
            )
            yield loaded.locate(
                base + (missing,),
                "NeMo prunes attention heads and query groups together: set both target_num_attention_heads and target_num_query_groups",
                hint=_keep_hint(loaded, missing),
            )


def _keep_hint(loaded, missing: str) -> str:
    """Name the teacher's value, which is how to keep it (spec/rules.py accepts it for nemo)."""
    shapes = _shapes(loaded)
    attribute = (
        "num_query_groups" if missing == "target_num_query_groups" else "num_attention_heads"
    )
    value = getattr(shapes, attribute, None) if shapes is not None else None
    if value is None:
        return "set it to the teacher's value to keep that number unchanged"
    return f"set {missing}: {value} (the teacher's) to keep that number unchanged"


def distillation(loaded) -> Iterator[Problem]:
    spec = loaded.spec
    if spec.distill is None:
        return
    if spec.distill.teacher_logits is not None:
        yield loaded.locate(
            ("distill", "teacher_logits"),
            "the nemo engine distills with the teacher online (NeMo's KD runs the teacher at every step); it has no cached teacher logits",
            hint="remove distill.teacher_logits, or use engine: torch",
        )
    loss = spec.distill.loss
    base = ("distill", "loss")
    if spec.nemo_settings.flavor == "bridge":
        return  # distill.py's own limits: bridge_lint.distillation_loss
    if spec.nemo_settings.flavor == "legacy":
        reasons = {
            "kind": loss.kind != "logits_kl",
            "temperature": loss.temperature != 1.0,
            "alpha": loss.alpha != 1.0,
            "intermediate": bool(loss.intermediate),
        }
        for key, bad in reasons.items():
            if bad:
                yield loaded.locate(
                    base + (key,),
                    "megatron_gpt_distillation.py (flavor legacy) distills with logits KL at T = 1 alone; this setting has no counterpart",
                    hint="remove it, or use nemo.flavor: nemo2",
                )
        return
    for path, reason in kd.unsupported(loss):
        yield loaded.locate(base + path, reason, hint="use engine: torch for this loss")
    if loss.intermediate and spec.resources.pipeline_parallel > 1:
        yield loaded.locate(
            base + ("intermediate",),
            "with pipeline parallelism NeMo supports intermediate-layer losses only on the last pipeline stage",
            hint="use pipeline_parallel: 1 or drop the intermediate losses",
        )


def training_settings(loaded) -> Iterator[Problem]:
    """gpt_train.py has no flags for these; NeMo uses Megatron's defaults instead."""
    spec = loaded.spec
    if spec.nemo_settings.flavor != "nemo2":
        return
    for block in ("finetune", "distill"):
        schedule = getattr(spec, block)
        if schedule is None:
            continue
        for field, nemo_value in NEMO_OPTIMIZER_DEFAULTS.items():
            value = getattr(schedule, field)
            # only a value the user wrote is a surprise; minispec's default is not a request
            if value != nemo_value and loaded.is_set((block, field)):
                yield loaded.locate(
                    (block, field),
                    f"gpt_train.py has no option for {field}; NeMo uses {nemo_value}, not {value}",
                    hint=f"set {block}.{field}: {nemo_value} to say what runs",
                    severity="warning",
                )
        if schedule.checkpoint_interval not in (None, schedule.val_interval):
            yield loaded.locate(
                (block, "checkpoint_interval"),
                "gpt_train.py saves a checkpoint at every validation (val_interval), not at checkpoint_interval",
                severity="warning",
            )


def flavor_legacy(loaded) -> Iterator[Problem]:
    spec = loaded.spec
    if spec.nemo_settings.flavor != "legacy":
        return
    if spec.exported:
        yield loaded.locate(
            ("nemo", "flavor"),
            "flavor legacy cannot export students to Hugging Face (NeMo 1's converter rebuilds the teacher's architecture)",
            hint="set export.students: [] or use nemo.flavor: nemo2",
        )
    if spec.finetune is not None and _shapes(loaded) is None:
        yield loaded.locate(
            ("teacher", "source"),
            "flavor legacy restates the teacher's architecture for teacher correction, and it is not known offline for this source",
            hint="use a local Hugging Face directory as teacher.source, or nemo.flavor: nemo2",
        )
    yield loaded.locate(
        ("nemo", "flavor"),
        "flavor legacy evaluates with the validation losses NeMo 1 measured while training (no test split, speed or sizes)",
        severity="warning",
    )


def command_values(loaded) -> Iterator[Problem]:
    from minispec.engines.nemo.values import value_problems

    for path, message, hint in value_problems(loaded.spec):
        yield loaded.locate(path, message, hint=hint)


RULES = [
    command_values,
    teacher_source,
    launcher,
    parallelism,
    pruning,
    distillation,
    training_settings,
    flavor_legacy,
    *bridge_lint.RULES,
]


@reads("engine", "teacher", "resources", "nemo", "finetune", "prune", "distill", "export", "data")
def nemo_engine(loaded) -> Iterator[Problem]:
    """What NeMo would reject or do differently (parallelism, flavor options)."""
    yield from check(loaded)


@reads("resources", "engine")
def accelerator(loaded) -> Iterator[Problem]:
    res = loaded.spec.resources
    if res.accelerator == "cpu":
        yield loaded.locate(
            ("resources", "accelerator"),
            "the nemo engine needs GPUs; accelerator: cpu cannot run it",
            hint="use accelerator: cuda (or auto), or engine: torch to run on the CPU",
        )
    if res.precision == "fp8":
        yield loaded.locate(
            ("resources", "precision"),
            "precision: fp8 is the torch engine's (torchao FP8 GEMMs); the nemo engine does not map it to NeMo's FP8 recipes",
            hint="use precision: bf16 (or auto) with engine: nemo, or engine: torch for FP8 training",
        )
    if loaded.is_set(("resources", "strategy")):
        yield loaded.locate(
            ("resources", "strategy"),
            "strategy is a torch-engine setting; the nemo engine ignores it",
            severity="warning",
        )


# what the nemo engine adds to the spec's rules (minispec.engines.Engine.LINT_RULES)
ENGINE_RULES = (nemo_engine, accelerator)
