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
TEACHER_LOGITS_DIR = "data/teacher-logits"  # teacher_logits stage (offline teacher, top-k)

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


PRUNED_DIR = "models/pruned"  # prune@<variant>: one HF directory per variant


def pruned_dir(variant: str) -> str:
    return f"{PRUNED_DIR}/{variant}"


def student_dir(variant: str) -> str:
    return f"models/students/{variant}"


def export_dir(variant: str) -> str:
    return f"{EXPORT_DIR}/{variant}"


def depth_scores_path(variant: str) -> str:
    """Per-layer and per-block depth importance of an importance-chosen depth variant.

    It lives inside the pruned model's directory (an output of ``prune@<variant>``), not under
    ``importance/``: every variant of a DVC ``foreach`` group must declare the same number of
    outputs, and only depth variants with ``target_num_layers`` write scores. Write it after
    the model is saved (``save_model`` replaces the whole directory).
    """
    return f"{pruned_dir(variant)}/depth_scores.json"


def width_importance_path() -> str:
    return f"{IMPORTANCE_DIR}/activations.safetensors"


def width_importance_summary_path() -> str:
    """Human-readable summary of the importance pass (calibration settings, score ranges, timing)."""
    return f"{IMPORTANCE_DIR}/activations.json"


def metrics_path(stage: str) -> str:
    """Metrics JSON of a stage; ``stage`` may be ``prune@width`` (written as ``prune-width``)."""
    return f"{METRICS_DIR}/{stage.replace('@', '-')}.json"


# The one file the compiled dvc.yaml declares as a DVC metric (written by the evaluate stage,
# ``minispec.summary``): the working teacher's validation loss and each final model's validation
# loss and size, so that `dvc metrics show`, `dvc metrics diff` and the first screen of
# `dvc exp show` fit a 120-column terminal. Every other numbers file under metrics/ is a plain
# output (uncached, versioned with the project, read by the report, cards and bundles; still
# `dvc metrics show PATH` by name), not a DVC metric.
SUMMARY_METRICS = f"{METRICS_DIR}/summary.json"


def info_path(stage: str) -> str:
    """Settings and provenance of a stage's metrics (strings, sizes that repeat params, sample
    texts): beside the metrics but not a DVC metric, so ``dvc metrics show`` holds numbers only
    (``fsio.write_metrics`` splits a record; ``fsio.read_metrics_record`` joins it again)."""
    return f"{METRICS_DIR}/info/{stage.replace('@', '-')}.json"


def log_dir(stage: str) -> str:
    """DVCLive directory of a training stage (``plots/metrics/...tsv``) and TensorBoard events under ``tb/``."""
    return f"{LOGS_DIR}/{stage.replace('@', '-')}"


def stage_log_path(stage: str) -> str:
    """Everything a stage's command printed in its last run (written by ``minispec run``)."""
    return f"{LOGS_DIR}/{stage.replace('@', '-')}.log"


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
#   tb/                            TensorBoard event files (tags train/objective, train/ce_loss,
#                                  train/kd_loss, val/loss, ...: each means one thing everywhere)
# The compiled dvc.yaml declares log_dir(stage) and checkpoint_dir(stage) as persistent,
# uncached outputs: DVC never deletes them before a rerun, so a run resumed after a kill finds
# its checkpoint and appends to its curves. A stage that starts afresh (no checkpoint, or one
# made with other settings) must clear both itself. Both must exist when the stage succeeds
# (DVC checks every declared output), even if empty.
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
# the lm-evaluation-harness scores alone ({"teacher": {task: {metric: x}}, "students": {...}}),
# an input of export@<v> (its model card shows them): unlike evaluate.json it does not change
# with timings, so a rerun of evaluate that gives the same scores re-exports nothing
HARNESS_SCORES = f"{METRICS_DIR}/info/harness.json"


# ---- nemo engine -----------------------------------------------------------------------------
#
# The nemo engine keeps the same layout; its model directories hold NeMo checkpoints instead of
# HF directories: a NeMo 2 checkpoint directory (``context/`` + ``weights/``) for flavor nemo2,
# a single ``model.nemo`` file inside the directory for flavor legacy (NeMo 1). NeMo's own run
# directories (checkpoints, TensorBoard events, index mappings) live under checkpoint_dir(stage),
# which is persistent so an interrupted stage resumes.
NEMO_LEGACY_FILE = "model.nemo"


def nemo_model_path(model_dir: str, flavor: str) -> str:
    """What a NeMo script is given for a model directory: the directory (nemo2) or its .nemo file."""
    return f"{model_dir}/{NEMO_LEGACY_FILE}" if flavor == "legacy" else model_dir


def nemo_run_dir(stage: str) -> str:
    """NeMo's experiment directory of a stage (``--log_dir`` / ``exp_manager.exp_dir``)."""
    return checkpoint_dir(stage)


def nemo_index_mapping_dir(stage: str) -> str:
    """Megatron dataset index caches of a stage (kept out of the tokenize stage's outputs)."""
    return f"{checkpoint_dir(stage)}/index_mappings"


def nemo_kd_config_path(variant: str) -> str:
    """The knowledge-distillation YAML that ``gpt_train.py --kd_config`` reads for a student."""
    return f"{log_dir('distill@' + variant)}/kd_config.yaml"


# ---- importance scores (the importance/prune stages write them; the report reads them) --------
#
# depth_scores_path(v), JSON, written when a depth variant is chosen by importance:
#   {"metric": "lm_loss" | "block_influence",   what chose the dropped layers
#    "num_layers": N, "target_num_layers": n, "calibration_samples": ..., "calibration_tokens": ...,
#    "full_model_loss": LM loss of the unpruned model on the calibration data,
#    "per_layer": [s_1, ..., s_N],      block influence 1 - cos(input, output) of decoder layer i
#                                       (1-indexed) at position i-1; higher = more important
#    "per_block": [{"start": a, "end": b, "score": s}, ...],   lm_loss only: every contiguous
#                                       1-indexed block [a, b] (inclusive) of the needed length
#                                       and the LM loss with it removed (lower = cheaper to drop)
#    "dropped_layers": [...]}           the 1-indexed layers the variant removes
#
# width_importance_path(), safetensors of float tensors, one set for all width variants:
#   "mlp.<i>"    [intermediate_size]    MLP neuron importance of decoder layer i
#   "heads.<i>"  [num_attention_heads]  attention (query) head importance of decoder layer i
#   "hidden"     [hidden_size]          embedding-channel importance (norm-layer outputs)
# where i is the 0-based index of the HF module `model.layers.<i>` (reports show i + 1).
WIDTH_MLP_KEY = "mlp.{layer}"
WIDTH_HEADS_KEY = "heads.{layer}"
WIDTH_HIDDEN_KEY = "hidden"


# ---- report (the report stage and `minispec report`) -----------------------------------------
REPORT_MARKDOWN = f"{REPORT_DIR}/report.md"
REPORT_HTML = f"{REPORT_DIR}/report.html"
REPORT_PLOTS_DIR = f"{REPORT_DIR}/plots"  # PNG figures and plots.json (what each figure draws)
REPORT_DATA_DIR = f"{REPORT_DIR}/data"  # tables behind the figures, also used as DVC plots


def report_models_path() -> str:
    """The comparison table as JSON records (one per model), a DVC plot source."""
    return f"{REPORT_DATA_DIR}/models.json"


def report_depth_scores_path(variant: str) -> str:
    """Per-layer depth importance of a variant as JSON records ``{layer, score, dropped}``."""
    return f"{REPORT_DATA_DIR}/depth-{variant}.json"


# ---- architecture search (prune variants of kind `search`) ------------------------------------
#
# search@<v> enumerates and scores the candidates, writing search_candidates_path(v):
#   {"variant", "budget": {...}, "teacher": {...}, "block_influence": [per layer, 0-based],
#    "candidates": [{"id", num_layers, hidden_size, ffn_hidden_size, num_attention_heads,
#                    num_query_groups, "params_total", "params_non_embedding",
#                    "val_loss_pruned", "rank_pruned"}, ...],
#    "slots": ["c07", "c02", ...]}   the top_k ids, best first: slot i (1-based) is slots[i-1]
# search-prune@<v>-<i> prunes slot i into search_pruned_dir, search-distill@<v>-<i> distils it
# briefly into search_student_dir; prune@<v> ranks the short-distilled slots and copies the
# winner into pruned_dir(v), recording every candidate in metrics_path("prune@<v>")["search"].
SEARCH_DIR = "search"


def search_dir(variant: str) -> str:
    return f"{SEARCH_DIR}/{variant}"


def search_candidates_path(variant: str) -> str:
    return f"{search_dir(variant)}/candidates.json"


def search_slot(variant: str, slot: int) -> str:
    """The foreach key of a candidate slot: ``<variant>-<slot>`` (slot 1-based)."""
    return f"{variant}-{slot}"


def parse_search_slot(key: str) -> tuple[str, int]:
    variant, _, slot = key.rpartition("-")
    if not variant or not slot.isdigit() or int(slot) < 1:
        raise ValueError(f"'{key}' is not <variant>-<slot>")
    return variant, int(slot)


def search_pruned_dir(key: str) -> str:
    return f"models/search/{key}/pruned"


def search_student_dir(key: str) -> str:
    return f"models/search/{key}/student"
