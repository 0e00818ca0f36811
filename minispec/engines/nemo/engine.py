"""The nemo engine (:class:`minispec.engines.Engine`): stages run NVIDIA's NeMo / Model-Optimizer
scripts (:mod:`minispec.engines.nemo.commands`); the data and report stages run minispec's
engine-neutral ``minispec stage`` entry. Imports no NeMo: lint and compile read it."""

from __future__ import annotations

from minispec.engines.nemo.commands import STEPS_WITH_VARIANT, STEPS_WITHOUT_VARIANT, stage_commands
from minispec.engines.nemo.lint import ENGINE_RULES

NAME = "nemo"
STEPS = frozenset(STEPS_WITHOUT_VARIANT | STEPS_WITH_VARIANT)
# `search` is refused by the spec's search rule, which says why (no search step here)
PRUNE_KINDS = frozenset({"depth", "width", "search"})
MODEL_PARALLEL = True  # tensor/pipeline parallelism, several nodes
HEADS_WITH_GROUPS = True  # NeMo prunes heads and query groups together
SHAPE_CHECKS: tuple[str, ...] = ()
LINT_RULES = ENGINE_RULES
STUDENT_DISTILL = False  # one distill block for every student
STAGE_SERVER = None  # its stages are NVIDIA's scripts

__all__ = ["stage_commands"]
