"""Flavor ``bridge``: the spec compiled into NVIDIA Model-Optimizer's Megatron-Bridge scripts.

NeMo 2's LLM collection left the NeMo container in 25.11; NVIDIA's maintained Minitron path is
Model-Optimizer's ``examples/megatron_bridge/prune_minitron.py`` and ``distill.py``, run inside a
current NeMo container (``nvcr.io/nvidia/nemo:26.06``) with the Model-Optimizer checkout at
``nemo.modelopt_root``. Both take and give **Hugging Face checkpoints**, so every model directory
of the layout is an HF directory, as with the torch engine, and the steps NVIDIA's scripts do not
cover run the torch engine's own stage code inside the same container:

============ =====================================================================================
step         command
============ =====================================================================================
data         ``minispec stage data`` (shared)
import       ``python -m minispec stage import``: the teacher as an HF directory
tokenize     ``python -m minispec stage tokenize``: Megatron ``.bin/.idx``, what ``--data_paths``
             reads (the same files NeMo's preprocessing writes)
finetune     ``python -m minispec stage finetune`` (torchrun over the node's GPUs): ModelOpt's
             examples have no plain fine-tuning script (``distill.py`` requires a KD weight > 0)
prune        depth by ``drop_layers``: ``python -m minispec stage prune V`` (HF layer surgery,
             1-indexed as the spec says; ``prune_minitron.py`` has no explicit-layers option);
             everything else: ``prune_minitron.py`` — explicit sizes as ``--prune_export_config``
             JSON (``num_layers``, ``hidden_size``, ``ffn_hidden_size``,
             ``num_attention_heads``), a budget as ``--prune_target_params``; pipeline parallel
             over every GPU (the script prunes with TP 1), calibration on ``calibration_samples``
             sequences of our train JSONL; then ``minispec nemo bridge-prune-metrics``
             (sizes and the validation loss right after pruning, as the torch engine writes)
distill      ``distill.py --teacher_hf_path --student_hf_path --data_paths --hf_export_path``;
             its TensorBoard events become our curves and metrics (``minispec nemo logs
             --flavor bridge``)
evaluate     ``python -m minispec stage evaluate``: the same evaluation code as the torch engine
export       ``python -m minispec stage export V``: HF directory with a model card
============ =====================================================================================

Every flag of a ModelOpt script emitted here is checked against facts read from ModelOpt's
sources (``tests/engines/nemo/test_bridge_commands.py``).
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from minispec import layout
from minispec.engines.nemo.launch import TUTORIAL_ENV, Command, Job, launch
from minispec.errors import CompileError
from minispec.spec.model import DepthPrune, Spec, WidthPrune

# Model-Optimizer's scripts, relative to nemo.modelopt_root
PRUNE_MINITRON = "examples/megatron_bridge/prune_minitron.py"
DISTILL = "examples/megatron_bridge/distill.py"

LOG_INTERVAL = 1  # every step: the loss curves need every point
# spec width target -> ModelOpt hparam (mcore_minitron.SUPPORTED_HPARAMS); num_query_groups is
# not prunable since ModelOpt 0.41 (lint refuses a target that changes it)
EXPORT_CONFIG_KEYS = {
    "target_hidden_size": "hidden_size",
    "target_ffn_hidden_size": "ffn_hidden_size",
    "target_num_attention_heads": "num_attention_heads",
}


def commands_for(spec: Spec, step: str, variant: str | None) -> list[Command]:
    """The commands of ``step`` (``variant`` checked by the caller, ``commands.commands_for``)."""
    builder = BUILDERS[step]
    return builder(spec, variant) if variant is not None else builder(spec)


# --------------------------------------------------------------------------------------------
# steps run by the torch engine's stage code inside the container


def data(spec: Spec) -> list[Command]:
    return [["minispec", "stage", "data"]]


def report(spec: Spec) -> list[Command]:
    return [["minispec", "stage", "report"]]


def _minispec_stage(spec: Spec, *args: str, gpus: int = 0, tasks: int = 1) -> Command:
    program = ["python", "-m", "minispec", "stage", *args]
    return launch(spec, Job(program, tasks_per_node=tasks, gpus_per_node=gpus))


def import_teacher(spec: Spec) -> list[Command]:
    return [_minispec_stage(spec, "import")]


def tokenize(spec: Spec) -> list[Command]:
    return [_minispec_stage(spec, "tokenize")]


def finetune(spec: Spec) -> list[Command]:
    devices = spec.resources.devices
    return [_minispec_stage(spec, "finetune", gpus=devices, tasks=devices)]


def evaluate(spec: Spec) -> list[Command]:
    devices = spec.resources.devices
    return [_minispec_stage(spec, "evaluate", gpus=devices, tasks=devices)]


def export(spec: Spec, variant: str) -> list[Command]:
    return [_minispec_stage(spec, "export", variant)]


# --------------------------------------------------------------------------------------------
# Model-Optimizer's scripts


def prune(spec: Spec, variant: str) -> list[Command]:
    settings = spec.prune[variant]
    if isinstance(settings, DepthPrune) and settings.drop_layers is not None:
        return [_minispec_stage(spec, "prune", variant, gpus=1)]
    stage = f"prune@{variant}"
    scratch = f"{layout.nemo_run_dir(stage)}/pruned"
    world = spec.resources.devices * spec.resources.nodes
    program = [
        "python", _modelopt(spec, PRUNE_MINITRON),
        "--hf_model_name_or_path", layout.working_teacher_dir(spec),
        "--output_hf_path", scratch,
        "--pp_size", str(world),  # "Only Pipeline parallelism is supported for pruning"
        "--calib_dataset_name", layout.jsonl_path("train"),  # a local .jsonl of {"text": ...}
        "--calib_num_samples", str(settings.calibration_samples),
        "--seq_length", str(spec.data.seq_length),
        # scores outside the HF output, so the published directory is a clean checkpoint
        "--prune_intermediate_ckpt", f"{layout.nemo_run_dir(stage)}/scores",
        *prune_targets(settings),
    ]  # fmt: skip
    job = Job(program, tasks_per_node=spec.resources.devices, gpus_per_node=spec.resources.devices,
              nodes=spec.resources.nodes, env=dict(TUTORIAL_ENV))  # fmt: skip
    return [
        launch(spec, job),
        ["minispec", "nemo", "publish", "--flavor", "bridge", scratch, layout.pruned_dir(variant)],
        launch(
            spec,
            Job(
                ["python", "-m", "minispec", "nemo", "bridge-prune-metrics", variant],
                gpus_per_node=1,
            ),
        ),  # fmt: skip
    ]


def prune_targets(settings: DepthPrune | WidthPrune) -> list[str]:
    """``--prune_export_config`` JSON for explicit sizes, ``--prune_target_params`` for a budget."""
    if isinstance(settings, WidthPrune) and settings.target_params is not None:
        return ["--prune_target_params", str(settings.target_params)]
    config = json.dumps(export_config(settings), sort_keys=True, separators=(",", ":"))
    return ["--prune_export_config", config]


def export_config(settings: DepthPrune | WidthPrune) -> dict[str, int]:
    if isinstance(settings, DepthPrune):
        if settings.target_num_layers is None:
            raise CompileError("a depth variant by importance needs target_num_layers")
        return {"num_layers": settings.target_num_layers}
    config = {
        key: getattr(settings, name)
        for name, key in EXPORT_CONFIG_KEYS.items()
        if getattr(settings, name) is not None
    }
    if not config:
        raise CompileError(
            "ModelOpt prunes hidden size, FFN size and attention heads; this width variant sets "
            "none of them",
            hint="set target_hidden_size, target_ffn_hidden_size or target_num_attention_heads",
        )
    return config


def distill(spec: Spec, variant: str) -> list[Command]:
    """``distill.py``: logits KL at T = 1 (its loss; lint refuses others), HF student out."""
    assert spec.distill is not None
    schedule, resources = spec.distill, spec.resources
    stage = f"distill@{variant}"
    run_dir = layout.nemo_run_dir(stage)
    scratch = f"{run_dir}/hf"
    program = [
        "python", _modelopt(spec, DISTILL),
        "--teacher_hf_path", layout.working_teacher_dir(spec),
        "--student_hf_path", layout.pruned_dir(variant),
        "--data_paths", "1.0", layout.tokens_prefix("train"),  # split 99,1,0 inside distill.py
        "--data_path_to_cache", layout.nemo_index_mapping_dir(stage),
        "--output_dir", run_dir,  # checkpoints/ (resumable) and tb_logs/
        "--hf_export_path", scratch,
        "--tp_size", str(resources.tensor_parallel),
        "--pp_size", str(resources.pipeline_parallel),
        "--seq_length", str(spec.data.seq_length),
        "--mbs", str(schedule.micro_batch_size),
        "--gbs", str(schedule.global_batch_size),
        "--train_iters", str(schedule.steps),
        "--lr", repr(float(schedule.lr)),
        "--min_lr", repr(float(schedule.min_lr)),
        "--lr_warmup_iters", str(schedule.warmup_steps),
        "--eval_interval", str(schedule.val_interval),
        "--eval_iters", str(schedule.val_batches),
        "--log_interval", str(LOG_INTERVAL),
        "--seed", str(spec.seed),
    ]  # fmt: skip
    if schedule.checkpoint_interval is not None:
        program += ["--save_interval", str(schedule.checkpoint_interval)]
    job = Job(program, tasks_per_node=resources.devices, gpus_per_node=resources.devices,
              nodes=resources.nodes, env=dict(TUTORIAL_ENV))  # fmt: skip
    return [
        launch(spec, job),
        ["minispec", "nemo", "publish", "--flavor", "bridge", scratch, layout.student_dir(variant)],
        ["minispec", "nemo", "logs", "--flavor", "bridge", stage],
    ]


def _modelopt(spec: Spec, script: str) -> str:
    return str(PurePosixPath(spec.nemo_settings.modelopt_root) / script)


BUILDERS = {
    "data": data,
    "tokenize": tokenize,
    "import": import_teacher,
    "finetune": finetune,
    "prune": prune,
    "distill": distill,
    "evaluate": evaluate,
    "report": report,
    "export": export,
}
