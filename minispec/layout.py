"""Where every stage reads and writes, relative to the directory of the compiled ``dvc.yaml``.

The compiler declares these paths as DVC deps/outs/metrics/plots and the engines write exactly
these paths, so this module is the one place that names them. Both engines use the same
layout; only the checkpoint formats inside ``models/`` differ (HF directories for torch, NeMo 2
checkpoints for nemo).
"""

from __future__ import annotations

SPLITS = ("train", "validation", "test")

# data
DATA_DIR = "data/jsonl"  # data stage: one <split>.jsonl per split
TOKENS_DIR = "data/tokens"  # tokenize stage: <split>_text_document.{bin,idx} per split

# models
TEACHER_DIR = "models/teacher"  # import stage
CORRECTED_TEACHER_DIR = "models/teacher-corrected"  # finetune stage
IMPORTANCE_DIR = "importance"  # importance stage (activation scores for width pruning)

# logs and metrics
METRICS_DIR = "metrics"
LOGS_DIR = "logs"  # per-stage DVCLive directories, TensorBoard events, stage logs
CHECKPOINTS_DIR = "checkpoints"  # resumable training state (persist: true, not cached)
REPORT_DIR = "reports"
EXPORT_DIR = "export"

PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"


def jsonl_path(split: str) -> str:
    return f"{DATA_DIR}/{split}.jsonl"


def tokens_prefix(split: str) -> str:
    """Megatron indexed-dataset prefix; files are ``<prefix>.bin`` and ``<prefix>.idx``."""
    return f"{TOKENS_DIR}/{split}_text_document"


def pruned_dir(variant: str) -> str:
    return f"models/pruned/{variant}"


def student_dir(variant: str) -> str:
    return f"models/students/{variant}"


def export_dir(variant: str) -> str:
    return f"{EXPORT_DIR}/{variant}"


def depth_scores_path(variant: str) -> str:
    """Per-layer and per-block depth importance of an importance-chosen depth variant."""
    return f"{IMPORTANCE_DIR}/depth-{variant}.json"


def width_importance_path() -> str:
    return f"{IMPORTANCE_DIR}/activations.safetensors"


def width_importance_summary_path() -> str:
    """Human-readable summary of the importance pass (calibration settings, score ranges, timing)."""
    return f"{IMPORTANCE_DIR}/activations.json"


def metrics_path(stage: str) -> str:
    """Metrics JSON of a stage; ``stage`` may be ``prune@width`` (written as ``prune-width``)."""
    return f"{METRICS_DIR}/{stage.replace('@', '-')}.json"


def log_dir(stage: str) -> str:
    """DVCLive directory of a training stage (``plots/metrics/...tsv``) and TensorBoard events under ``tb/``."""
    return f"{LOGS_DIR}/{stage.replace('@', '-')}"


def checkpoint_dir(stage: str) -> str:
    return f"{CHECKPOINTS_DIR}/{stage.replace('@', '-')}"


def final_model_dir(spec, variant: str) -> str:
    """The model a variant ends as: the distilled student, or the pruned model when not distilled."""
    return student_dir(variant) if variant in spec.students else pruned_dir(variant)


def working_teacher_dir(spec) -> str:
    """The teacher that pruning and distillation start from: corrected when finetune is set."""
    return CORRECTED_TEACHER_DIR if spec.finetune is not None else TEACHER_DIR


# ---- training logs (both engines write these; reports and DVC plots read them) --------------
#
# A training stage (finetune, distill@<variant>) writes, under log_dir(stage):
#   plots/metrics/train/loss.tsv   DVCLive's format: tab-separated `timestamp  step  loss`
#   plots/metrics/val/loss.tsv     the same for validation loss
#   (further DVCLive series: train/lr, train/tokens_per_second, train/kd_loss, train/ce_loss...)
#   tb/                            TensorBoard event files (tags train/loss, val/loss, ...)
# and metrics_path(stage), a JSON object with at least:
#   steps, tokens, initial_val_loss, final_val_loss, final_train_loss, tokens_per_second


def train_curve_path(stage: str) -> str:
    return f"{log_dir(stage)}/plots/metrics/train/loss.tsv"


def val_curve_path(stage: str) -> str:
    return f"{log_dir(stage)}/plots/metrics/val/loss.tsv"


def tensorboard_dir(stage: str) -> str:
    return f"{log_dir(stage)}/tb"


# ---- evaluation -----------------------------------------------------------------------------
#
# metrics_path("evaluate") holds one entry per model, all measured by the same code:
#   {"teacher": M, "teacher_corrected": M (when finetune ran), "students": {"<variant>": M, ...}}
# where M = {"params_total", "params_non_embedding", "<split>_loss", "<split>_perplexity" for each
# evaluated split, "tokens_per_second", "latency_seconds", "tokens_evaluated": {"<split>": n}}.
EVALUATE_TABLE = f"{METRICS_DIR}/evaluate.md"
