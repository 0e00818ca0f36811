"""The step table: every step of a minispec pipeline, declared once.

The compiler (:mod:`minispec.compile.graph`), the ``minispec stage`` entry
(:mod:`minispec.stage`), the pipeline runner, the report and every engine read this table;
nothing else lists step names. A step is one kind of DVC stage; a *variant* step has one stage
per prune variant (``prune@width``).

Each step names two functions as ``"module:function"`` strings, imported only when used (so
that lint and compile never import torch):

- ``stages``: ``(spec) -> list[Stage]``, the step's stages in the graph, each listing exactly
  the ``params.yaml`` keys its code reads, its deps and its outs. ``None``: another step's
  builder makes them (the search builds its own candidate stages).
- ``run``: ``(spec, variant, root) -> None``, what ``minispec stage NAME [VARIANT]`` runs. The
  torch engine runs every step this way; other engines run the steps they do not implement
  themselves (data, report) this way too.

To add a step: a module with both functions, and one row here (in graph order).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from minispec import layout
from minispec.shell import Command


@dataclass(frozen=True)
class Step:
    name: str
    stages: str | None  # "module:function", (spec) -> list[Stage]
    run: str  # "module:function", (spec, variant, root) -> None
    variant: bool = False  # one stage per prune variant: NAME@<variant>
    trains: bool = False  # a training loop: loss curves, training metrics, resumable state
    distributed: bool = False  # runs models over batches: one process per GPU with devices > 1
    # a training step whose curves the report and `dvc plots` show: the loss its training curve
    # is ("CE", "KD": never on one axis) and how the report names its stages ("{variant}")
    curves: str | None = None
    label: str | None = None


GRAPH = "minispec.compile.graph"
SEARCH_GRAPH = "minispec.search.graph"
SEARCH = "minispec.search.stages"
TORCH = "minispec.engines.torch"

# in graph order: the compiler builds the stages of each step in this order
STEPS: tuple[Step, ...] = (
    Step("data", f"{GRAPH}:data_stages", "minispec.data:run"),
    Step("import", f"{GRAPH}:import_stages", f"{TORCH}.importer:run"),
    Step("tokenize", f"{GRAPH}:tokenize_stages", f"{TORCH}.tokenize:run"),
    Step(
        "finetune",
        f"{GRAPH}:finetune_stages",
        f"{TORCH}.train_stage:run_finetune",
        trains=True,
        distributed=True,
        curves="CE",
        label="teacher correction",
    ),
    Step(
        "importance",
        f"{GRAPH}:importance_stages",
        f"{TORCH}.importance:run",
        distributed=True,
    ),
    Step("search", f"{SEARCH_GRAPH}:search_stages", f"{SEARCH}:run_search", variant=True),
    Step("search-prune", None, f"{SEARCH}:run_search_prune", variant=True),
    Step("search-distill", None, f"{SEARCH}:run_search_distill", variant=True, trains=True),
    Step("prune", f"{GRAPH}:prune_stages", f"{TORCH}.prune:run", variant=True),
    Step(
        "teacher_logits",
        f"{GRAPH}:teacher_logits_stages",
        f"{TORCH}.teacher_logits:run",
        distributed=True,
    ),
    Step(
        "distill",
        f"{GRAPH}:distill_stages",
        f"{TORCH}.train_stage:run_distill",
        variant=True,
        trains=True,
        distributed=True,
        curves="KD",
        label="student {variant}",
    ),
    Step("evaluate", f"{GRAPH}:evaluate_stages", f"{TORCH}.evaluate:run", distributed=True),
    Step("report", f"{GRAPH}:report_stages", "minispec.report:run_stage"),
    Step("export", f"{GRAPH}:export_stages", f"{TORCH}.export:run", variant=True),
)

BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}
STEP_NAMES: tuple[str, ...] = tuple(BY_NAME)
VARIANT_STEPS: tuple[str, ...] = tuple(s.name for s in STEPS if s.variant)
TRAINING_STEPS: tuple[str, ...] = tuple(s.name for s in STEPS if s.trains)
DISTRIBUTED_STEPS: frozenset[str] = frozenset(s.name for s in STEPS if s.distributed)


def resolve(reference: str) -> Any:
    """The function named by ``"module:function"`` (imports the module)."""
    module_name, func_name = reference.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def step_of(stage_name: str) -> str:
    """``distill@width`` → ``distill``."""
    return stage_name.split("@")[0]


# the longest name first: ``search-distill-w-0`` is a search-distill file, not a search one
_BY_LENGTH = sorted(STEPS, key=lambda s: -len(s.name))


def step_of_file(name: str) -> tuple[Step, str | None] | None:
    """The step and variant of a per-stage file or directory name (``layout.log_dir``,
    ``layout.metrics_path``: ``@`` is written ``-``, so ``distill-width`` is ``distill@width``);
    None for a name no step writes."""
    for step in _BY_LENGTH:
        if name == step.name and not step.variant:
            return step, None
        if step.variant and name.startswith(step.name + "-") and len(name) > len(step.name) + 1:
            return step, name[len(step.name) + 1 :]
    return None


def plotted_curves(name: str) -> str | None:
    """The loss of a stage's training curves when the report plots them (``Step.curves``); the
    stage as its name or as its file name."""
    found = step_of_file(name.replace("@", "-"))
    return found[0].curves if found else None


def stage_order(name: str) -> tuple[int, str]:
    """Sort key: the plotted training stages first, in step-table order, then the rest; by name
    within each."""
    found = step_of_file(name.replace("@", "-"))
    plotted = [s.name for s in STEPS if s.curves]
    step = found[0].name if found and found[0].curves else None
    return (plotted.index(step) if step else len(plotted), name)


def stage_label(name: str) -> str:
    """How the report names a stage (``Step.label``); its name when the step has no label."""
    found = step_of_file(name.replace("@", "-"))
    if found is None or found[0].label is None:
        return name
    return found[0].label.format(variant=found[1])


# --------------------------------------------------------------------------------------------
# compiled stages: what a step's builder returns


@dataclass(frozen=True)
class Out:
    """A declared output. ``cache=False`` keeps it out of DVC's cache (metrics, logs, checkpoints);
    ``persist=True`` stops DVC from deleting it before the stage re-runs (resumable state)."""

    path: str
    cache: bool = True
    persist: bool = False


@dataclass(frozen=True)
class Plot:
    """A per-step curve (a TSV written by the stage) to draw with ``dvc plots``."""

    path: str
    x: str = "step"
    y: str = "loss"


@dataclass
class Stage:
    name: str  # DVC stage name: "data", "prune@width", ...
    step: str  # one of STEP_NAMES
    variant: str | None
    desc: str
    deps: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # dotted params.yaml keys
    outs: list[Out] = field(default_factory=list)
    metrics: list[Out] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    cmd: list[Command] = field(default_factory=list)  # argv lists, run in order


# Settings that change numbers (device kind, autocast precision) for stages that run models.
# what a training stage reads besides its own block: devices and strategy change the numerics
# (data-parallel reductions), precision the arithmetic
TRAINING_RESOURCES = (
    "resources.accelerator",
    "resources.devices",
    "resources.precision",
    "resources.strategy",
    "teacher.trust_remote_code",
)
# what loading the working teacher reads (device, dtype, remote code)
MODEL_LOADING = ("resources.accelerator", "teacher.dtype", "teacher.trust_remote_code")


def with_training_logs(stage: Stage) -> Stage:
    """Logs survive a kill (persist) and are cached, so that `dvc exp apply` and `dvc checkout`
    restore the curves and events of the run they belong to (DVC replaces the directory: no
    event file of another run stays behind). Checkpoints (``layout.checkpoint_dir``) are no
    DVC output: resumable training state that the stage manages itself (it resumes from it or
    clears it), large, git-ignored; as an uncached output nothing could restore it and every
    `dvc exp apply` would leave the stage "changed". Metrics and curves are small, for git; the
    metrics file is an output, not a DVC metric (``layout.SUMMARY_METRICS`` is the one metric)."""
    stage.outs += [Out(layout.log_dir(stage.name), cache=True, persist=True)]
    stage.outs.append(Out(layout.metrics_path(stage.name), cache=False))
    stage.outs.append(Out(layout.info_path(stage.name), cache=False))
    stage.plots += [
        Plot(layout.train_curve_path(stage.name)),
        Plot(layout.val_curve_path(stage.name)),
    ]
    return stage
