"""Commands of torch-engine stages, as written into ``dvc.yaml``.

Every stage runs minispec's own entry point, ``minispec stage STEP [VARIANT]``, from the
directory of ``dvc.yaml`` (where DVC runs commands); the stage reads its settings from
``params.yaml`` there. With ``resources.devices > 1`` the stages that run models on batches
(training, activation importance, evaluation) start one process per GPU with ``torchrun``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minispec.steps import DISTRIBUTED_STEPS

if TYPE_CHECKING:
    from minispec.spec.model import Spec
    from minispec.steps import Stage


def stage_commands(spec: Spec, stage: Stage) -> list[list[str]]:
    """The argv lists of one stage (one command for every torch stage)."""
    args = ["stage", stage.step] + ([stage.variant] if stage.variant else [])
    devices = spec.resources.devices
    if devices > 1 and stage.step in DISTRIBUTED_STEPS:
        return [
            ["torchrun", "--standalone", "--nproc-per-node", str(devices), "-m", "minispec", *args]
        ]
    return [["minispec", *args]]
