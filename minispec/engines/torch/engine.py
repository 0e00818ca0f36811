"""The torch engine (:class:`minispec.engines.Engine`): every step in-process with PyTorch and
Hugging Face transformers, through ``minispec stage STEP [VARIANT]``; several GPUs of one node
through ``torchrun``. Imports no torch: lint and compile read it."""

from __future__ import annotations

from minispec.engines.torch.commands import stage_commands
from minispec.engines.torch.lint import RULES
from minispec.spec.model import prune_kinds
from minispec.steps import STEP_NAMES

NAME = "torch"
STEPS = frozenset(STEP_NAMES)
PRUNE_KINDS = frozenset(prune_kinds())  # every kind: the reference engine
MODEL_PARALLEL = False  # one node; FSDP2 or DDP over its GPUs
HEADS_WITH_GROUPS = False
SHAPE_CHECKS = ("architecture",)
LINT_RULES = RULES
STUDENT_DISTILL = True
STAGE_SERVER = "minispec.engines.torch.warm:stage_server"  # torch imported once per run

__all__ = ["stage_commands"]
