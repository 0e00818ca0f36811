"""Stage → NeMo commands: what each stage of an ``engine: nemo`` pipeline runs.

The compiler calls :func:`stage_commands` for every stage of the graph and writes the joined
commands (:func:`stage_lines`) into ``dvc.yaml``; they run, in order, in the pipeline directory.
Paths come from :mod:`minispec.layout` and are relative to that directory; ``nemo.root`` is the
NeMo checkout inside the container. Every flag and Hydra key emitted here is checked against
facts read from NeMo's sources (``tests/engines/nemo``).

Flavors:

- ``nemo2``: ``scripts/llm/gpt_train.py`` (fine-tuning, and distillation with ``--teacher_path``
  and a ``--kd_config`` YAML), ``scripts/llm/gpt_prune.py`` (``--drop_layers``,
  ``--target_num_layers``, width targets), ``preprocess_data_for_megatron.py``, and our small
  launchers around ``llm.import_ckpt`` / ``llm.export_ckpt`` (NeMo 2 checkpoint directories).
- ``legacy``: the original tutorial's NeMo 1 commands with Hydra overrides
  (``megatron_gpt_pretraining.py --config-name megatron_llama_distill.yaml``,
  ``megatron_gpt_drop_layers.py``, ``megatron_gpt_prune.py``, ``megatron_gpt_distillation.py``)
  on ``.nemo`` files.
- ``bridge``: Model-Optimizer's Megatron-Bridge scripts on HF checkpoints, in
  :mod:`minispec.engines.nemo.bridge`.

Each training, pruning and import stage writes into its NeMo run directory
(:func:`minispec.layout.nemo_run_dir`) and then ``minispec nemo publish`` moves the finished
checkpoint into the layout's model directory in one rename: no half-written model directory.
Training stages end with ``minispec nemo logs``, which turns NeMo's TensorBoard events into the
same loss curves and metrics files the torch engine writes.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from minispec import layout
from minispec.engines.nemo import hydra
from minispec.engines.nemo.launch import TUTORIAL_ENV, Arg, Command, Job, join, launch
from minispec.errors import CompileError
from minispec.sources import parse_source
from minispec.spec.model import DepthPrune, Spec, WidthPrune

# NeMo scripts, relative to nemo.root
PREPROCESS = "scripts/nlp_language_modeling/preprocess_data_for_megatron.py"
GPT_TRAIN = "scripts/llm/gpt_train.py"
GPT_PRUNE = "scripts/llm/gpt_prune.py"
LEGACY_CONF_DIR = "examples/nlp/language_modeling/conf"
LEGACY_PRETRAIN = "examples/nlp/language_modeling/megatron_gpt_pretraining.py"
LEGACY_DROP_LAYERS = "examples/nlp/language_modeling/megatron_gpt_drop_layers.py"
LEGACY_PRUNE = "examples/nlp/language_modeling/megatron_gpt_prune.py"
LEGACY_DISTILL = "examples/nlp/language_modeling/megatron_gpt_distillation.py"
LEGACY_HF_TO_NEMO = "scripts/checkpoint_converters/convert_llama_hf_to_nemo.py"
LEGACY_TRAIN_CONFIG = "megatron_llama_distill.yaml"  # the tutorial's config for teacher correction

JSON_KEY = "text"  # the data stage writes {"text": ...} records; NeMo names outputs after the key
TOKENS_SUFFIX = f"_{JSON_KEY}_document"  # preprocess_data_for_megatron.py appends _<key>_<level>
TOKENIZE_WORKERS = 32  # the tutorial's value when data.workers is unset (does not change results)
CALIBRATION_SPLIT = "99,1,0"  # gpt_prune.py's own default: calibration reads the train portion
TRAIN_SPLIT = "99,1,0"  # gpt_train.py takes one blended list; its validation is a held-out 1%
LOG_INTERVAL = 1  # log every step, as the tutorial does: the loss curves need every point

STEPS_WITHOUT_VARIANT = {"data", "tokenize", "import", "finetune", "evaluate", "report"}
STEPS_WITH_VARIANT = {"prune", "distill", "export"}


# --------------------------------------------------------------------------------------------
# entry points


def stage_commands(spec: Spec, stage) -> list[Command]:
    """The commands of a compiled stage (anything with ``.step`` and ``.variant``)."""
    return commands_for(spec, stage.step, stage.variant)


def stage_lines(spec: Spec, stage) -> list[str]:
    """:func:`stage_commands` as quoted shell lines, ready for ``dvc.yaml``."""
    return [join(command) for command in stage_commands(spec, stage)]


def commands_for(spec: Spec, step: str, variant: str | None = None) -> list[Command]:
    """The commands that run ``step`` (``variant`` for prune/distill/export) with NeMo."""
    if step == "importance":
        raise CompileError(
            "the nemo engine has no 'importance' stage: gpt_prune.py scores activations itself "
            "during pruning (calibration_samples)",
            hint="the compiler should not create an importance stage for engine: nemo",
        )
    if step not in STEPS_WITHOUT_VARIANT | STEPS_WITH_VARIANT:
        raise CompileError(f"the nemo engine has no '{step}' stage")
    if (step in STEPS_WITH_VARIANT) != (variant is not None):
        need = "needs a variant" if step in STEPS_WITH_VARIANT else "takes no variant"
        raise CompileError(f"stage '{step}' {need}")
    if variant is not None and step in ("prune", "distill") and variant not in spec.prune:
        raise CompileError(f"'{variant}' is not a prune variant of the spec")
    if spec.nemo_settings.flavor == "bridge":  # Model-Optimizer's scripts: their own module
        from minispec.engines.nemo import bridge

        return bridge.commands_for(spec, step, variant)
    builder = _BUILDERS[(spec.nemo_settings.flavor, step)]
    return builder(spec, variant) if step in STEPS_WITH_VARIANT else builder(spec)


# --------------------------------------------------------------------------------------------
# shared stages


def data(spec: Spec) -> list[Command]:
    return [["minispec", "stage", "data"]]


def report(spec: Spec) -> list[Command]:
    return [["minispec", "stage", "report"]]


def tokenize(spec: Spec) -> list[Command]:
    """One ``preprocess_data_for_megatron.py`` per split, landing at ``layout.tokens_prefix``."""
    commands = []
    for split in layout.SPLITS:
        prefix = layout.tokens_prefix(split)
        assert prefix.endswith(TOKENS_SUFFIX), prefix  # NeMo appends the suffix itself
        program = [
            "python", _nemo(spec, PREPROCESS),
            "--input", layout.jsonl_path(split),
            "--json-keys", JSON_KEY,
            "--tokenizer-library", "huggingface",
            "--tokenizer-type", tokenizer_name(spec),
            "--dataset-impl", "mmap",
            "--output-prefix", prefix[: -len(TOKENS_SUFFIX)],
            "--append-eod",
            "--workers", str(spec.data.workers or TOKENIZE_WORKERS),
        ]  # fmt: skip
        commands.append(launch(spec, Job(program)))
    return commands


# --------------------------------------------------------------------------------------------
# nemo2


def import_nemo2(spec: Spec) -> list[Command]:
    """HF → NeMo 2 checkpoint with ``llm.import_ckpt`` (our launcher imports NeMo when it runs)."""
    program = [
        "python", "-m", "minispec.engines.nemo.import_ckpt",
        "--source", hf_source(spec),
        "--output", layout.TEACHER_DIR,
    ]  # fmt: skip
    return [launch(spec, Job(program))]


def finetune_nemo2(spec: Spec) -> list[Command]:
    assert spec.finetune is not None
    stage = "finetune"
    train = _gpt_train(spec, stage, spec.finetune, model=layout.TEACHER_DIR)
    return [
        launch(spec, _training_job(spec, train)),
        _publish(spec, layout.nemo_run_dir(stage), layout.CORRECTED_TEACHER_DIR),
        _logs(stage),
    ]


def prune_nemo2(spec: Spec, variant: str) -> list[Command]:
    """``gpt_prune.py``: explicit layers with the spec's TP/PP; importance-based with TP 1 and PP
    over every GPU, as the script requires, calibrating on ``calibration_samples`` train windows."""
    prune = spec.prune[variant]
    stage = f"prune@{variant}"
    resources = spec.resources
    scratch = f"{layout.nemo_run_dir(stage)}/pruned"
    explicit = isinstance(prune, DepthPrune) and prune.drop_layers is not None
    tp, pp = (
        (resources.tensor_parallel, resources.pipeline_parallel) if explicit else (1, _world(spec))
    )
    program = [
        "python", _nemo(spec, GPT_PRUNE),
        "--devices", str(resources.devices),
        "--num_nodes", str(resources.nodes),
        "--tp_size", str(tp),
        "--pp_size", str(pp),
        "--restore_path", layout.working_teacher_dir(spec),
        "--save_path", scratch,
    ]  # fmt: skip
    if explicit:
        program += ["--drop_layers", *(str(layer) for layer in prune.drop_layers)]
    else:
        program += [
            "--seq_length", str(spec.data.seq_length),
            "--data_paths", "1.0", layout.tokens_prefix("train"),
            "--split", CALIBRATION_SPLIT,
            "--index_mapping_dir", layout.nemo_index_mapping_dir(stage),
            "--num_train_samples", str(prune.calibration_samples),
        ]  # fmt: skip
        program += _prune_targets(prune)
    job = Job(program, tasks_per_node=resources.devices, gpus_per_node=resources.devices,
              nodes=resources.nodes, env=dict(TUTORIAL_ENV))  # fmt: skip
    return [launch(spec, job), _publish(spec, scratch, layout.pruned_dir(variant))]


def _prune_targets(prune: DepthPrune | WidthPrune) -> list[str]:
    if isinstance(prune, DepthPrune):
        return ["--target_num_layers", str(prune.target_num_layers)]
    flags = []
    for name in (
        "target_ffn_hidden_size",
        "target_hidden_size",
        "target_num_attention_heads",
        "target_num_query_groups",
    ):
        size = getattr(prune, name)
        if size is not None:
            flags += [f"--{name}", str(size)]
    return flags


def distill_nemo2(spec: Spec, variant: str) -> list[Command]:
    """``gpt_train.py --teacher_path`` with a KD config written from the spec's ``loss`` block."""
    assert spec.distill is not None
    stage = f"distill@{variant}"
    kd_config = layout.nemo_kd_config_path(variant)
    train = _gpt_train(spec, stage, spec.distill, model=layout.pruned_dir(variant))
    train += ["--teacher_path", layout.working_teacher_dir(spec), "--kd_config", kd_config]
    return [
        ["minispec", "nemo", "kd-config", "--output", kd_config],
        launch(spec, _training_job(spec, train)),
        _publish(spec, layout.nemo_run_dir(stage), layout.student_dir(variant)),
        _logs(stage),
    ]


def export_nemo2(spec: Spec, variant: str) -> list[Command]:
    """NeMo 2 → HF directory with ``llm.export_ckpt``."""
    program = [
        "python", "-m", "minispec.engines.nemo.export_ckpt",
        "--checkpoint", layout.final_model_dir(spec, variant),
        "--output", layout.export_dir(variant),
    ]  # fmt: skip
    return [launch(spec, Job(program))]


def evaluate_nemo2(spec: Spec) -> list[Command]:
    """Every model exported to HF in a scratch copy of the layout and scored by the torch engine's
    evaluation code, so both engines' numbers come from the same code."""
    program = ["python", "-m", "minispec.engines.nemo.evaluate", "--params", layout.PARAMS_FILE]
    return [launch(spec, Job(program, gpus_per_node=1))]


def _gpt_train(spec: Spec, stage: str, schedule, *, model: str) -> list[str]:
    resources = spec.resources
    return [
        "python", _nemo(spec, GPT_TRAIN),
        "--name", _run_name(stage),
        "--model_path", model,
        "--tp_size", str(resources.tensor_parallel),
        "--pp_size", str(resources.pipeline_parallel),
        "--devices", str(resources.devices),
        "--num_nodes", str(resources.nodes),
        "--precision", _nemo2_precision(spec),
        "--log_dir", layout.nemo_run_dir(stage),
        "--max_steps", str(schedule.steps),
        "--gbs", str(schedule.global_batch_size),
        "--mbs", str(schedule.micro_batch_size),
        "--seq_length", str(spec.data.seq_length),
        "--data_paths", "1.0", layout.tokens_prefix("train"),
        "--split", TRAIN_SPLIT,
        "--index_mapping_dir", layout.nemo_index_mapping_dir(stage),
        "--lr", repr(float(schedule.lr)),
        "--min_lr", repr(float(schedule.min_lr)),
        "--warmup_steps", str(schedule.warmup_steps),
        "--val_check_interval", str(schedule.val_interval),
        "--limit_val_batches", str(schedule.val_batches),
        "--log_interval", str(LOG_INTERVAL),
    ]  # fmt: skip


def _training_job(spec: Spec, program: list[str]) -> Job:
    resources = spec.resources
    return Job(program, tasks_per_node=resources.devices, gpus_per_node=resources.devices,
               nodes=resources.nodes, env=dict(TUTORIAL_ENV))  # fmt: skip


def _nemo2_precision(spec: Spec) -> str:
    return "32" if spec.resources.precision == "fp32" else "bf16-mixed"


# --------------------------------------------------------------------------------------------
# legacy (NeMo 1, the original tutorial)


def import_legacy(spec: Spec) -> list[Command]:
    """HF → ``.nemo`` with NeMo 1's Llama converter (the tutorial started from a .nemo file)."""
    scratch = f"{layout.nemo_run_dir('import')}/{layout.NEMO_LEGACY_FILE}"
    program = [
        "python", _nemo(spec, LEGACY_HF_TO_NEMO),
        "--input_name_or_path", hf_model_name(spec),
        "--output_path", scratch,
        "--precision", "bf16",
    ]  # fmt: skip
    return [launch(spec, Job(program)), _publish(spec, scratch, layout.TEACHER_DIR)]


def finetune_legacy(spec: Spec) -> list[Command]:
    """The tutorial's teacher correction: ``megatron_gpt_pretraining.py`` with the distillation
    config, restating the teacher's architecture as the tutorial does."""
    from minispec.engines.nemo.shapes import teacher_shapes

    assert spec.finetune is not None
    shapes = teacher_shapes(spec.teacher.source)
    if shapes is None:
        raise CompileError(
            f"flavor legacy must restate the teacher's architecture, and the shapes of "
            f"'{spec.teacher.source}' are not known offline",
            hint="use a local Hugging Face directory as teacher.source, or nemo.flavor: nemo2",
        )
    stage = "finetune"
    overrides = [
        "--config-path",
        _nemo(spec, LEGACY_CONF_DIR),
        "--config-name",
        LEGACY_TRAIN_CONFIG,
        hydra.override("name", _run_name(stage)),
        *_legacy_exp_manager(stage),
        hydra.override("exp_manager.checkpoint_callback_params.save_nemo_on_train_end", True),
        *_legacy_trainer(spec, spec.finetune),
        "model.data.data_prefix=" + hydra.mapping(_legacy_data_prefix()),
        hydra.override("model.restore_from_path", _legacy_model(spec, layout.TEACHER_DIR)),
        hydra.override("model.tokenizer", None, "~"),
        "+model.tokenizer="
        + hydra.mapping({"library": "huggingface", "type": tokenizer_name(spec), "use_fast": True}),
        *_legacy_parallel_and_batch(spec, spec.finetune),
        hydra.override("model.encoder_seq_length", spec.data.seq_length),
        hydra.override("model.data.seq_length", spec.data.seq_length),
        hydra.override("model.num_layers", shapes.num_layers),
        hydra.override("model.hidden_size", shapes.hidden_size),
        hydra.override("model.ffn_hidden_size", shapes.ffn_hidden_size),
        hydra.override("model.num_attention_heads", shapes.num_attention_heads),
        hydra.override("model.hidden_dropout", 0.0),
        hydra.override("model.attention_dropout", 0.0),
        hydra.override("model.apply_query_key_layer_scaling", True),
        hydra.override("model.normalization", "rmsnorm"),
        hydra.override("model.bias", False),
        hydra.override("model.activation", "fast-swiglu"),
        hydra.override("model.position_embedding_type", "rope"),
        hydra.override("model.share_embeddings_and_output_weights", shapes.tie_embeddings),
        hydra.override("model.num_query_groups", shapes.num_query_groups),
        hydra.override("model.scale_positional_embedding", shapes.llama3_rope_scaling, "++"),
        hydra.override("model.rotary_base", shapes.rotary_base, "++"),
        *_legacy_optim(spec.finetune),
    ]
    program = ["python", _nemo(spec, LEGACY_PRETRAIN), *overrides]
    return [
        launch(spec, _training_job(spec, program)),
        _publish(spec, layout.nemo_run_dir(stage), layout.CORRECTED_TEACHER_DIR),
        _logs(stage),
    ]


def prune_legacy(spec: Spec, variant: str) -> list[Command]:
    prune = spec.prune[variant]
    stage = f"prune@{variant}"
    resources = spec.resources
    scratch = f"{layout.nemo_run_dir(stage)}/{layout.NEMO_LEGACY_FILE}"
    teacher = _legacy_model(spec, layout.working_teacher_dir(spec))
    if isinstance(prune, DepthPrune) and prune.drop_layers is not None:
        program = [
            "python", _nemo(spec, LEGACY_DROP_LAYERS),
            "--path_to_nemo", teacher,
            "--path_to_save", scratch,
            "--tensor_model_parallel_size", str(resources.tensor_parallel),
            "--pipeline_model_parallel_size", str(resources.pipeline_parallel),
            "--gpus_per_node", str(resources.devices),
            "--drop_layers", *(str(layer) for layer in prune.drop_layers),
        ]  # fmt: skip
    else:
        overrides = [
            hydra.override("model.restore_from_path", teacher),
            hydra.override("model.tensor_model_parallel_size", 1),  # the prune API's limitation
            hydra.override("model.pipeline_model_parallel_size", _world(spec)),
            hydra.override("trainer.devices", resources.devices),
            hydra.override("trainer.num_nodes", resources.nodes),
            hydra.override("trainer.precision", "bf16"),
            hydra.override("prune.calib_dataset", layout.jsonl_path("train")),  # a local JSONL
            hydra.override("prune.num_calib_size", prune.calibration_samples),
            hydra.override("inference.max_context_length", spec.data.seq_length),
            *_legacy_prune_targets(prune),
            hydra.override("export.save_path", scratch),
        ]
        program = ["python", _nemo(spec, LEGACY_PRUNE), *overrides]
    job = Job(program, tasks_per_node=resources.devices, gpus_per_node=resources.devices,
              nodes=resources.nodes, env=dict(TUTORIAL_ENV))  # fmt: skip
    return [launch(spec, job), _publish(spec, scratch, layout.pruned_dir(variant))]


def _legacy_prune_targets(prune: DepthPrune | WidthPrune) -> list[str]:
    if isinstance(prune, DepthPrune):
        return [hydra.override("prune.num_layers", prune.target_num_layers)]
    keys = {
        "target_ffn_hidden_size": "prune.ffn_hidden_size",
        "target_hidden_size": "prune.hidden_size",
        "target_num_attention_heads": "prune.num_attention_heads",
        "target_num_query_groups": "prune.num_query_groups",
    }
    return [
        hydra.override(key, getattr(prune, name))
        for name, key in keys.items()
        if getattr(prune, name) is not None
    ]


def distill_legacy(spec: Spec, variant: str) -> list[Command]:
    """The tutorial's ``megatron_gpt_distillation.py`` (logits KL, its only loss)."""
    assert spec.distill is not None
    stage = f"distill@{variant}"
    scratch = f"{layout.nemo_run_dir(stage)}/{layout.NEMO_LEGACY_FILE}"
    overrides = [
        hydra.override("name", _run_name(stage)),
        *_legacy_exp_manager(stage),
        *_legacy_trainer(spec, spec.distill),
        "model.data.data_prefix=" + hydra.mapping(_legacy_data_prefix()),
        hydra.override("model.restore_from_path", _legacy_model(spec, layout.pruned_dir(variant))),
        hydra.override(
            "model.kd_teacher_restore_from_path",
            _legacy_model(spec, layout.working_teacher_dir(spec)),
        ),
        hydra.override("model.nemo_path", scratch),
        *_legacy_parallel_and_batch(spec, spec.distill),
        hydra.override("model.encoder_seq_length", spec.data.seq_length),
        hydra.override("model.data.seq_length", spec.data.seq_length),
        *_legacy_optim(spec.distill),
    ]
    program = ["python", _nemo(spec, LEGACY_DISTILL), *overrides]
    return [
        launch(spec, _training_job(spec, program)),
        _publish(spec, scratch, layout.student_dir(variant)),
        _logs(stage),
    ]


def export_legacy(spec: Spec, variant: str) -> list[Command]:
    raise CompileError(
        "flavor legacy cannot export students to Hugging Face: NeMo 1's convert_llama_nemo_to_hf.py "
        "rebuilds the teacher's architecture, which a pruned student no longer has",
        hint="use nemo.flavor: nemo2, or set export.students: [] with flavor legacy",
    )


def evaluate_legacy(spec: Spec) -> list[Command]:
    """NeMo 1 checkpoints cannot be scored by the shared evaluation code (no HF export), so the
    evaluation reports the validation losses NeMo measured while training."""
    return [["minispec", "nemo", "evaluate-logs"]]


def _legacy_model(spec: Spec, model_dir: str) -> str:
    return layout.nemo_model_path(model_dir, "legacy")


def _legacy_exp_manager(stage: str) -> list[str]:
    return [
        hydra.override("exp_manager.exp_dir", layout.nemo_run_dir(stage)),
        hydra.override("exp_manager.checkpoint_callback_params.save_top_k", 1),
    ]


def _legacy_trainer(spec: Spec, schedule) -> list[str]:
    return [
        hydra.override("trainer.max_steps", schedule.steps),
        hydra.override("trainer.log_every_n_steps", LOG_INTERVAL),
        hydra.override("trainer.val_check_interval", schedule.val_interval),
        hydra.override("trainer.limit_val_batches", schedule.val_batches),
        hydra.override("trainer.num_sanity_val_steps", 0, "+"),
        hydra.override("trainer.precision", "32" if spec.resources.precision == "fp32" else "bf16"),
        hydra.override("trainer.devices", spec.resources.devices),
        hydra.override("trainer.num_nodes", spec.resources.nodes),
    ]


def _legacy_data_prefix() -> dict:
    """The tutorial's explicit splits: weighted train blend, validation and test prefixes."""
    return {
        "train": [1.0, layout.tokens_prefix("train")],
        "validation": [layout.tokens_prefix("validation")],
        "test": [layout.tokens_prefix("test")],
    }


def _legacy_parallel_and_batch(spec: Spec, schedule) -> list[str]:
    resources = spec.resources
    overrides = [hydra.override("model.tensor_model_parallel_size", resources.tensor_parallel)]
    if resources.pipeline_parallel != 1:
        overrides.append(
            hydra.override("model.pipeline_model_parallel_size", resources.pipeline_parallel)
        )
    overrides += [
        hydra.override("model.sequence_parallel", resources.tensor_parallel > 1),
        hydra.override("model.micro_batch_size", schedule.micro_batch_size),
        hydra.override("model.global_batch_size", schedule.global_batch_size),
    ]
    return overrides


def _legacy_optim(schedule) -> list[str]:
    return [
        hydra.override("model.optim.name", "distributed_fused_adam"),
        hydra.override("model.optim.lr", float(schedule.lr)),
        hydra.override("model.optim.sched.min_lr", float(schedule.min_lr)),
        hydra.override("model.optim.sched.warmup_steps", schedule.warmup_steps),
    ]


# --------------------------------------------------------------------------------------------
# helpers


def hf_source(spec: Spec) -> str:
    """``teacher.source`` as NeMo's HF importer takes it: ``hf://ORG/NAME`` or ``hf://<path>``."""
    source = parse_source(spec.teacher.source)
    if source.kind == "hub":
        return f"hf://{source.repo}"
    if source.kind == "local" and not source.is_gguf:
        return source.path
    raise CompileError(
        f"the nemo engine imports Hugging Face checkpoints; '{spec.teacher.source}' is not one",
        hint="use hf://ORG/NAME or a local Hugging Face model directory as teacher.source",
    )


def hf_model_name(spec: Spec) -> str:
    """The teacher as ``from_pretrained`` takes it: a hub id or a local directory."""
    source = hf_source(spec)
    return source[len("hf://") :] if source.startswith("hf://") else source


def tokenizer_name(spec: Spec) -> str:
    """The HF tokenizer: ``data.tokenizer`` when set, else the teacher's."""
    if spec.data.tokenizer:
        tokenizer = spec.data.tokenizer
        return tokenizer[len("hf://") :] if tokenizer.startswith("hf://") else tokenizer
    return hf_model_name(spec)


def _nemo(spec: Spec, script: str) -> str:
    return str(PurePosixPath(spec.nemo_settings.root) / script)


def _world(spec: Spec) -> int:
    return spec.resources.devices * spec.resources.nodes


def _run_name(stage: str) -> str:
    return stage.replace("@", "-")


def _publish(spec: Spec, source: str, target: str) -> Command:
    return ["minispec", "nemo", "publish", "--flavor", spec.nemo_settings.flavor, source, target]


def _logs(stage: str) -> Command:
    return ["minispec", "nemo", "logs", stage]


_BUILDERS = {
    ("nemo2", "data"): data,
    ("nemo2", "tokenize"): tokenize,
    ("nemo2", "import"): import_nemo2,
    ("nemo2", "finetune"): finetune_nemo2,
    ("nemo2", "prune"): prune_nemo2,
    ("nemo2", "distill"): distill_nemo2,
    ("nemo2", "evaluate"): evaluate_nemo2,
    ("nemo2", "report"): report,
    ("nemo2", "export"): export_nemo2,
    ("legacy", "data"): data,
    ("legacy", "tokenize"): tokenize,
    ("legacy", "import"): import_legacy,
    ("legacy", "finetune"): finetune_legacy,
    ("legacy", "prune"): prune_legacy,
    ("legacy", "distill"): distill_legacy,
    ("legacy", "evaluate"): evaluate_legacy,
    ("legacy", "report"): report,
    ("legacy", "export"): export_legacy,
}

__all__ = ["Arg", "Command", "commands_for", "stage_commands", "stage_lines"]
