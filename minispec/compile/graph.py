"""Spec → engine-agnostic stage graph: what every stage reads, writes and is parametrized by.

Both engines share this graph; only the commands differ (:func:`attach_commands`). All paths
come from :mod:`minispec.layout` and are relative to the directory of the compiled
``dvc.yaml``. The spec given here must already hold paths relative to that directory
(:func:`minispec.compile.relative_spec`).

Each stage lists exactly the ``params.yaml`` keys its code reads, so that DVC re-runs only
what a change affects (e.g. ``prune.width.target_hidden_size`` re-runs ``prune@width``,
``distill@width``, ``export@width``, ``evaluate`` and ``report``). The tables below are the
contract with the engines: a stage that starts reading another key must add it here.
Settings that cannot change results (``data.workers``, ``resources.devices``, ...) are left
out on purpose; the ones that change the command line reach DVC through ``cmd`` anyway.

Stages, in order (``<v>`` is a prune variant):

    data       source → data/jsonl/<split>.jsonl
    import     teacher → models/teacher (an HF directory; GGUF dequantized once)
    tokenize   jsonl + the teacher's tokenizer → data/tokens/<split>_text_document.{bin,idx}
    finetune   teacher correction → models/teacher-corrected          (only with `finetune:`)
    importance activation importance of the working teacher           (only with a width
               variant whose `importance` is `activation`)
    prune@<v>  working teacher → models/pruned/<v>
    teacher_logits working teacher → data/teacher-logits: its top-k log-probabilities over the
               windows distillation reads               (only with `distill.teacher_logits`)
    distill@<v> working teacher (or its cached logits) → models/students/<v> (for spec.students)
    evaluate   every model on the evaluation splits
    report     metrics and curves → reports/
    export@<v> final model → export/<v>                                (for spec.exported)
"""

from __future__ import annotations

import re
import string

from minispec import layout
from minispec.engines import get_engine
from minispec.errors import CompileError
from minispec.shell import is_command
from minispec.sources import parse_source
from minispec.spec.model import NAME_PATTERN, SearchPrune, Spec, WidthPrune
from minispec.steps import (
    MODEL_LOADING,
    STEPS,
    TRAINING_RESOURCES,
    Out,
    Stage,
    resolve,
    with_training_logs,
)

# DVC's own rule for stage names (dvc.stage.INVALID_STAGENAME_CHARS; a test keeps them equal).
# '@' joins a foreach group and its key, so it is excluded as well.
DVC_INVALID_STAGENAME_CHARS = frozenset(string.punctuation) - {"_", "-"}


# --------------------------------------------------------------------------------------------
# the graph


def build_graph(spec: Spec) -> list[Stage]:
    """Every stage of ``spec`` in dependency order, without commands (see :func:`attach_commands`):
    the stages of each step of the step table that the spec's engine runs, in table order."""
    check_variant_names(list(spec.prune))
    engine = get_engine(spec.engine)
    stages: list[Stage] = []
    for step in STEPS:
        if step.stages is not None and step.name in engine.STEPS:
            stages += resolve(step.stages)(spec)
    check_sources_outside_outputs(spec, stages)
    return stages


def check_sources_outside_outputs(spec: Spec, stages: list[Stage]) -> None:
    """A local source inside a stage output (or holding one) would be deleted or rewritten by
    DVC when that stage runs, and makes a cycle in the graph."""
    import posixpath

    sources = {
        "teacher.source": spec.teacher.source,
        "data.source": spec.data.source,
        "data.tokenizer": spec.data.tokenizer,
    }
    for key, text in sources.items():
        for path in local_sources(text):
            path = posixpath.normpath(path)
            for stage in stages:
                for out in stage.outs + stage.metrics:
                    if (
                        path == "."
                        or path == out.path
                        or path.startswith(out.path + "/")
                        or out.path.startswith(path + "/")
                    ):
                        raise CompileError(
                            f"{key} ({path}) overlaps the output {out.path} of stage '{stage.name}'",
                            hint="keep sources outside the pipeline's output directories, or compile into another --out directory",
                        )


def attach_commands(spec: Spec, stages: list[Stage]) -> list[Stage]:
    """Fill each stage's ``cmd`` with the commands of ``spec.engine``."""
    engine = get_engine(spec.engine)
    for stage in stages:
        commands = engine.stage_commands(spec, stage)
        if not commands or not all(is_command(argv) for argv in commands):
            raise CompileError(
                f"the {spec.engine} engine gave no valid command for stage '{stage.name}' (got {commands!r})"
            )
        stage.cmd = [list(argv) for argv in commands]
    return stages


def check_variant_names(names: list[str]) -> None:
    """Variant names become DVC stage names (``prune@<v>``), directory names and command words.

    The spec's own pattern (a letter, then letters, digits, ``_``, ``-``) is stricter than DVC's
    rule (no punctuation but ``_`` and ``-``) and also keeps spaces and non-ASCII letters out of
    paths and shell commands; it is checked again here because a ``Spec`` may be built in code.
    """
    problems = []
    for name in names:
        if re.fullmatch(NAME_PATTERN, name):
            continue
        bad = sorted(DVC_INVALID_STAGENAME_CHARS & set(name))
        why = (
            f"contains {' '.join(repr(c) for c in bad)}, which DVC does not allow in stage names"
            if bad
            else "is not a plain name"
        )
        problems.append(f"'{name}' {why}")
    if problems:
        raise CompileError(
            f"prune variant names cannot be DVC stage names: {'; '.join(problems)}",
            hint="start with a letter and use only ASCII letters, digits, '_' and '-' (at most 64)",
        )
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(name.lower(), name)
        if other != name:
            raise CompileError(
                f"prune variants '{other}' and '{name}' differ only in case; their directories would collide on case-insensitive file systems",
                hint="rename one of them",
            )


def activation_variants(spec: Spec) -> list[str]:
    """Variants that read the activation importance: width variants scored by activations, and
    search variants (every candidate is pruned from it)."""
    return [
        v
        for v, p in spec.prune.items()
        if (isinstance(p, WidthPrune) and p.importance == "activation")
        or isinstance(p, SearchPrune)
    ]


def has_importance_stage(spec: Spec) -> bool:
    """The torch engine scores activations once for every width variant; NeMo's gpt_prune.py
    runs its own calibration pass inside each prune stage."""
    return "importance" in get_engine(spec.engine).STEPS and bool(activation_variants(spec))


def training_stage_name(spec: Spec, variant: str) -> str:
    """The stage that produced a variant's final model: ``distill@<v>``, else ``prune@<v>``."""
    return f"distill@{variant}" if variant in spec.students else f"prune@{variant}"


# --------------------------------------------------------------------------------------------
# one function per step


def data_stage(spec: Spec) -> Stage:
    params = ["data.source", "data.splits", "data.split_ratio", "data.text_field"]
    if spec.data.split_ratio is not None:
        params.append("seed")  # the document split is seeded
    return Stage(
        "data",
        "data",
        None,
        "Read the corpus into one JSONL file per split",
        deps=local_sources(spec.data.source),
        params=params,
        outs=[Out(layout.DATA_DIR)],
    )


def import_stage(spec: Spec) -> Stage:
    # `teacher.dtype: auto` means float32 on CPU and bfloat16 on GPU, hence the accelerator
    return Stage(
        "import",
        "import",
        None,
        "Import the teacher as a working Hugging Face checkpoint",
        deps=local_sources(spec.teacher.source),
        params=["teacher", "resources.accelerator"],
        outs=[Out(layout.TEACHER_DIR)],
    )


def tokenize_stage(spec: Spec) -> Stage:
    tokenizer = spec.data.tokenizer
    if tokenizer is None:
        tokenizer_deps = [layout.TEACHER_DIR]  # the imported teacher's tokenizer
    else:
        tokenizer_deps = local_sources(tokenizer)
    return Stage(
        "tokenize",
        "tokenize",
        None,
        "Tokenize every split into Megatron .bin/.idx files",
        deps=[layout.DATA_DIR, *tokenizer_deps],
        params=["data.tokenizer"],
        outs=[Out(layout.TOKENS_DIR)],
    )


def finetune_stage(spec: Spec) -> Stage:
    stage = Stage(
        "finetune",
        "finetune",
        None,
        "Correct the teacher: a light fine-tune on the data",
        deps=[layout.TEACHER_DIR, layout.TOKENS_DIR],
        params=["finetune", "data.seq_length", "seed", *TRAINING_RESOURCES],
        outs=[Out(layout.CORRECTED_TEACHER_DIR)],
    )
    return with_training_logs(stage)


def importance_stage(spec: Spec) -> Stage:
    # one calibration pass serves every activation variant; their targets are not read here,
    # so a new width target reuses it
    samples = [f"prune.{v}.calibration_samples" for v in activation_variants(spec)]
    return Stage(
        "importance",
        "importance",
        None,
        "Score MLP neurons, attention heads and embedding channels by their activations",
        deps=[layout.working_teacher_dir(spec), layout.TOKENS_DIR],
        params=["data.seq_length", "seed", *samples, *MODEL_LOADING],
        outs=[Out(layout.IMPORTANCE_DIR)],
    )


def prune_stage(spec: Spec, variant: str) -> Stage:
    config = spec.prune[variant]
    if isinstance(config, SearchPrune):
        from minispec.search.graph import rank_stage

        return rank_stage(spec, variant)
    # every variant reads the tokens: calibration (importance-chosen layers, nemo's width pass)
    # and the quick validation loss written right after pruning
    deps = [layout.working_teacher_dir(spec), layout.TOKENS_DIR]
    params = [f"prune.{variant}", "data.seq_length", "seed", *MODEL_LOADING]
    if (
        isinstance(config, WidthPrune)
        and config.importance == "activation"
        and has_importance_stage(spec)
    ):
        deps.append(layout.IMPORTANCE_DIR)
    name = f"prune@{variant}"
    return Stage(
        name,
        "prune",
        variant,
        f"Prune the working teacher into variant {variant}",
        deps=deps,
        params=params,
        # the numbers are an output, not a DVC metric: see layout.SUMMARY_METRICS
        outs=[
            Out(layout.pruned_dir(variant)),
            Out(layout.info_path(name), cache=False),
            Out(layout.metrics_path(name), cache=False),
        ],
    )


def has_teacher_logits_stage(spec: Spec) -> bool:
    """Offline distillation: the torch engine caches the teacher's logits once for every student."""
    return (
        "teacher_logits" in get_engine(spec.engine).STEPS
        and spec.distill is not None
        and spec.distill.teacher_logits is not None
        and bool(spec.students)
    )


# what decides the teacher_logits cache: which windows (steps × global batch, seed, length),
# the teacher's arithmetic (precision, dtype, device) and K; not lr, loss or student settings,
# so a new student or a student's new settings reuse it
TEACHER_LOGITS_PARAMS = (
    "distill.teacher_logits",
    "distill.steps",
    "distill.global_batch_size",
    "data.seq_length",
    "seed",
    "resources.precision",
    *MODEL_LOADING,
)


def teacher_logits_stage(spec: Spec) -> Stage:
    return Stage(
        "teacher_logits",
        "teacher_logits",
        None,
        "Run the working teacher once over the distillation windows; keep its top-k log-probabilities",
        deps=[layout.working_teacher_dir(spec), layout.TOKENS_DIR],
        params=list(TEACHER_LOGITS_PARAMS),
        outs=[Out(layout.TEACHER_LOGITS_DIR)],
    )


def variant_distill_params(spec: Spec, variant: str) -> list[str]:
    """``prune.<v>.distill`` when the student has settings of its own (absent keys are no params)."""
    return [f"prune.{variant}.distill"] if getattr(spec.prune[variant], "distill", None) else []


def distill_stage(spec: Spec, variant: str) -> Stage:
    assert spec.distill is not None
    name = f"distill@{variant}"
    # every distill setting except the list of students, which only decides which stages exist,
    # and teacher_logits, whose settings reach the stage through the cache it reads
    settings = [
        f"distill.{key}"
        for key in type(spec.distill).model_fields
        if key not in ("students", "teacher_logits")
    ]
    # with cached teacher logits the teacher itself is not read
    teacher = (
        layout.TEACHER_LOGITS_DIR
        if has_teacher_logits_stage(spec)
        else layout.working_teacher_dir(spec)
    )
    stage = Stage(
        name,
        "distill",
        variant,
        f"Distill the working teacher into the pruned {variant} student",
        deps=[layout.pruned_dir(variant), teacher, layout.TOKENS_DIR],
        params=[
            *settings,
            *variant_distill_params(spec, variant),
            "data.seq_length",
            "seed",
            *TRAINING_RESOURCES,
        ],
        outs=[Out(layout.student_dir(variant))],
    )
    return with_training_logs(stage)


def evaluate_stage(spec: Spec) -> Stage:
    models = [layout.TEACHER_DIR]
    if spec.finetune is not None:
        models.append(layout.CORRECTED_TEACHER_DIR)
    models += [layout.final_model_dir(spec, v) for v in spec.prune]
    harness = spec.evaluate.harness
    tasks_dir = local_sources(harness.include_path) if harness is not None else []
    return Stage(
        "evaluate",
        "evaluate",
        None,
        "Score the teacher and every student with the same code",
        deps=[*models, layout.TOKENS_DIR, *tasks_dir],
        params=["evaluate", "data.seq_length", "seed", *MODEL_LOADING],
        outs=[
            Out(layout.EVALUATE_TABLE, cache=False),
            Out(layout.info_path("evaluate"), cache=False),
            Out(layout.metrics_path("evaluate"), cache=False),
            *([Out(layout.HARNESS_SCORES, cache=False)] if harness is not None else []),
        ],
        # the pipeline's one DVC metric: a headline small enough for `dvc metrics show`,
        # `dvc metrics diff` and `dvc exp show` in a 120-column terminal (minispec.summary)
        metrics=[Out(layout.SUMMARY_METRICS, cache=False)],
    )


def report_stage(spec: Spec) -> Stage:
    deps = [layout.metrics_path("evaluate"), layout.info_path("evaluate"), layout.EVALUATE_TABLE]
    for stage in training_stage_names(spec):
        deps += [
            layout.metrics_path(stage),
            layout.info_path(stage),
            layout.train_curve_path(stage),
            layout.val_curve_path(stage),
        ]
    deps += [layout.metrics_path(f"prune@{v}") for v in spec.prune]
    deps += [layout.info_path(f"prune@{v}") for v in spec.prune]
    return Stage(
        "report",
        "report",
        None,
        "Tables and plots comparing the teacher and the students",
        deps=deps,
        params=["name"],
        outs=[Out(layout.REPORT_DIR)],
    )


def export_stage(spec: Spec, variant: str) -> Stage:
    # not evaluate's metrics (a new evaluate option must not re-export); with evaluate.harness
    # the card shows the variant's lm-eval scores, which are an input then
    harness = [layout.HARNESS_SCORES] if spec.evaluate.harness is not None else []
    return Stage(
        f"export@{variant}",
        "export",
        variant,
        f"Export the final {variant} model as a Hugging Face directory with a model card",
        deps=[
            layout.final_model_dir(spec, variant),
            layout.metrics_path(training_stage_name(spec, variant)),
            *harness,
        ],
        params=["name", "teacher.source", "export.dtype"],
        outs=[Out(layout.export_dir(variant))],
    )


# --------------------------------------------------------------------------------------------
# the builders the step table names: (spec) -> list[Stage]


def data_stages(spec: Spec) -> list[Stage]:
    return [data_stage(spec)]


def import_stages(spec: Spec) -> list[Stage]:
    return [import_stage(spec)]


def tokenize_stages(spec: Spec) -> list[Stage]:
    return [tokenize_stage(spec)]


def finetune_stages(spec: Spec) -> list[Stage]:
    return [finetune_stage(spec)] if spec.finetune is not None else []


def importance_stages(spec: Spec) -> list[Stage]:
    return [importance_stage(spec)] if has_importance_stage(spec) else []


def prune_stages(spec: Spec) -> list[Stage]:
    return [prune_stage(spec, v) for v in spec.prune]


def teacher_logits_stages(spec: Spec) -> list[Stage]:
    return [teacher_logits_stage(spec)] if has_teacher_logits_stage(spec) else []


def distill_stages(spec: Spec) -> list[Stage]:
    return [distill_stage(spec, v) for v in spec.students]


def evaluate_stages(spec: Spec) -> list[Stage]:
    return [evaluate_stage(spec)]


def report_stages(spec: Spec) -> list[Stage]:
    return [report_stage(spec)]


def export_stages(spec: Spec) -> list[Stage]:
    return [export_stage(spec, v) for v in spec.exported]


# --------------------------------------------------------------------------------------------
# helpers


def training_stage_names(spec: Spec) -> list[str]:
    names = ["finetune"] if spec.finetune is not None else []
    return names + [f"distill@{v}" for v in spec.students]


def local_sources(text: str | None) -> list[str]:
    """A local source is a dependency (DVC hashes it); hub and package sources are params only."""
    if text is None:
        return []
    source = parse_source(text)
    return [source.path] if source.is_local and source.path else []


def upstream_closure(stages: list[Stage], names: list[str]) -> list[Stage]:
    """``names`` and every stage they need, in graph order (what ``dvc repro NAME`` considers)."""
    producer = {}
    for stage in stages:
        for out in stage.outs + stage.metrics:
            producer[out.path] = stage.name
    by_name = {s.name: s for s in stages}
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for dep in by_name[name].deps:
            owner = owner_of(dep, producer)
            if owner:
                todo.append(owner)
    return [s for s in stages if s.name in needed]


def owner_of(path: str, producer: dict[str, str]) -> str | None:
    """The stage whose output is ``path`` or contains it."""
    probe = path
    while probe:
        if probe in producer:
            return producer[probe]
        probe = probe.rpartition("/")[0]
    return None
