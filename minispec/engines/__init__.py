"""Engines: what runs the stages of a compiled pipeline.

An engine is a module that implements :class:`Engine` (module attributes and functions), named
in :data:`ENGINES`. The compiler asks it for each stage's commands, the linter for its own
rules and for the steps it supports; nothing outside the engine's package branches on its name.
This module imports no engine: :func:`get_engine` imports the one a spec names.

To add an engine: a package ``minispec/engines/<name>/`` with an ``engine`` module, and its
entries in :data:`ENGINES` and :data:`ENGINE_SUMMARIES` (the spec's ``engine`` field and its
JSON Schema follow them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from minispec.errors import Problem

# engine name (the spec's `engine` value) → module implementing Engine
ENGINES: dict[str, str] = {
    "torch": "minispec.engines.torch.engine",
    "nemo": "minispec.engines.nemo.engine",
}
ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)
# engine name → what it is, for the spec's `engine` field (and its JSON Schema description)
ENGINE_SUMMARIES: dict[str, str] = {
    "torch": "embedded engine (CPU, one GPU, several GPUs via torchrun)",
    "nemo": "NeMo Framework scripts on GPU clusters",
}

# a lint rule: (loaded spec) -> problems; ``rule.needs`` names the top-level blocks it reads
Rule = Callable[[Any], "Iterable[Problem]"]


class Engine(Protocol):
    NAME: str
    # the steps (minispec.steps) it runs; the compiler leaves the others out of the graph
    STEPS: frozenset[str]
    # the prune kinds (spec.model's `kind` union) it can run; lint refuses the others
    PRUNE_KINDS: frozenset[str]
    # tensor/pipeline parallelism and several nodes
    MODEL_PARALLEL: bool
    # prunes attention heads and query groups together (a target equal to the teacher's
    # number of query groups says "keep them")
    HEADS_WITH_GROUPS: bool
    # checks against the teacher's shapes that only this engine makes (named in lint's
    # "teacher shapes unknown" warning)
    SHAPE_CHECKS: tuple[str, ...]
    # its own lint rules, run after the spec's rules
    LINT_RULES: tuple[Rule, ...]
    # runs a student's own distillation settings (prune.<v>.distill); lint refuses them if not
    STUDENT_DISTILL: bool
    # "module:function", (enabled: bool) -> context manager yielding the environment entries
    # that let the stages of one `dvc repro` share a warm process; None: every stage starts cold
    STAGE_SERVER: str | None

    def stage_commands(self, spec: Any, stage: Any) -> list[list[str]]:
        """The argv lists that run ``stage`` (a :class:`minispec.steps.Stage`), in order."""
        ...


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (imports its ``engine`` module only)."""
    return importlib.import_module(ENGINES[name])  # type: ignore[return-value]


def engines_running(step: str) -> list[str]:
    """Names of the engines that support ``step``."""
    return [name for name in ENGINE_NAMES if step in get_engine(name).STEPS]


def reads(*blocks: str) -> Callable[[Rule], Rule]:
    """Mark a lint rule with the top-level spec blocks it reads: it runs when they validated
    (see :func:`minispec.spec.rules.check`)."""

    def mark(func: Rule) -> Rule:
        func.needs = blocks  # type: ignore[attr-defined]
        return func

    return mark
