"""Every NeMo command minispec emits, checked against facts read from NeMo's own sources.

argparse scripts: every flag exists for that script, required flags are present, store_true
flags carry no value, nargs flags get their values, int/float flags parse, choices hold.
Hydra scripts: every override parses with Hydra's own grammar, names an existing key of the
script's config (or adds one with ``+``), and carries a value of the default's type.
Golden tests: the tutorial spec compiles to the tutorial's values in both flavors.
"""

from __future__ import annotations

import shlex

import pytest

from minispec.engines.nemo.commands import commands_for, stage_commands, stage_lines
from minispec.engines.nemo.launch import ShellWord
from minispec.errors import CompileError

# NeMo 1's HF→.nemo converter is not in the facts file; its flags as NeMo documents them
# (docs: "Checkpoint conversion", convert_<model>_hf_to_nemo.py --input_name_or_path --output_path).
EXTRA_ARGPARSE = {
    "scripts/checkpoint_converters/convert_llama_hf_to_nemo.py": {
        "--input_name_or_path": {"required": True, "type": "str"},
        "--output_path": {"required": True, "type": "str"},
        "--precision": {"type": "str"},
    },
}
# Keys whose default is a number but whose type is a union: Lightning's precision takes 32 or "bf16"
# (the tutorial passes trainer.precision=bf16 to a config whose default is 32).
UNION_KEYS = {"trainer.precision"}
OUR_LAUNCHERS = {
    "minispec.engines.nemo.import_ckpt",
    "minispec.engines.nemo.export_ckpt",
    "minispec.engines.nemo.evaluate",
}


def pipeline(spec, *, skip_export: bool = False) -> list[tuple[str, list]]:
    """(stage name, command) for every stage of the spec, in graph order."""
    stages = [("data", None), ("tokenize", None), ("import", None)]
    if spec.finetune is not None:
        stages.append(("finetune", None))
    stages += [("prune", v) for v in spec.prune] + [("distill", v) for v in spec.students]
    stages += [("evaluate", None), ("report", None)]
    if not skip_export:
        stages += [("export", v) for v in spec.exported]
    out = []
    for step, variant in stages:
        for command in commands_for(spec, step, variant):
            out.append((step + (f"@{variant}" if variant else ""), command))
    return out


def program_of(command: list) -> list[str]:
    """The program inside launcher wrappers: from the NeMo script (or our module) on."""
    words = [str(w) for w in command]
    for index, word in enumerate(words):
        if word.endswith(".py") and "/" in word:
            return words[index:]
        if word == "-m" and index + 1 < len(words):
            return words[index + 1 :]
    return words


def script_key(path: str, facts: dict) -> str | None:
    known = list(facts["argparse"]) + list(facts["hydra_scripts"]) + list(EXTRA_ARGPARSE)
    for key in known:
        if path.endswith("/" + key):
            return key
    return None


def check_argparse(script: str, args: list[str], spec_flags: dict) -> None:
    seen = set()
    index = 0
    while index < len(args):
        flag = args[index]
        assert flag.startswith("--"), f"{script}: stray value {flag!r}"
        assert flag in spec_flags, f"{script} has no flag {flag}"
        assert flag not in seen, f"{script}: {flag} given twice"
        seen.add(flag)
        info = spec_flags[flag]
        index += 1
        values = []
        while index < len(args) and not args[index].startswith("--"):
            values.append(args[index])
            index += 1
        if info.get("action") == "store_true":
            assert not values, f"{script} {flag} is store_true but got {values}"
            continue
        nargs = info.get("nargs")
        if nargs == "+":
            assert values, f"{script} {flag} needs at least one value"
        elif nargs != "*":
            assert len(values) == 1, f"{script} {flag} takes one value, got {values}"
        for value in values:
            if info.get("type") == "int":
                int(value)
            elif info.get("type") == "float":
                float(value)
            if "choices" in info:
                assert value in info["choices"], f"{script} {flag}={value} not in {info['choices']}"
    missing = [
        flag for flag, info in spec_flags.items() if info.get("required") and flag not in seen
    ]
    assert not missing, f"{script}: required flags missing: {missing}"


def check_hydra(script: str, args: list[str], facts: dict) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config_name = facts["hydra_scripts"][script]
    if args[:1] == ["--config-path"]:
        assert args[2] == "--config-name"
        config_name = args[3]
        args = args[4:]
    keys = dict(facts["hydra"][config_name])  # overrides apply in order: ~key removes a subtree
    parser = OverridesParser.create()
    for text in args:
        override = parser.parse_override(text)
        key = override.key_or_group
        exists = key in keys or any(k.startswith(key + ".") for k in keys)
        if override.is_add():
            assert not exists, (
                f"{script}: +{key} adds a key {config_name} already has (Hydra rejects that)"
            )
        elif override.is_force_add():
            pass  # ++ sets or adds
        else:
            assert exists, f"{script}: {config_name} has no key {key}"
        if override.is_delete():
            keys = {k: v for k, v in keys.items() if k != key and not k.startswith(key + ".")}
            continue
        if key not in keys or key in UNION_KEYS:
            continue
        default, value = keys[key], override.value()
        if isinstance(default, bool):
            assert isinstance(value, bool), f"{key}={value!r} should be a bool"
        elif isinstance(default, int):
            assert isinstance(value, int) and not isinstance(value, bool), (
                f"{key}={value!r} should be an int"
            )
        elif isinstance(default, float):
            assert isinstance(value, (int, float)), f"{key}={value!r} should be a number"


def check_command(command: list, facts: dict) -> str | None:
    program = program_of(command)
    if program[0] in OUR_LAUNCHERS:
        return program[0]
    if program[0] == "minispec":
        return None
    key = script_key(program[0], facts)
    assert key is not None, f"unknown NeMo script {program[0]}"
    if key in facts["hydra_scripts"]:
        check_hydra(key, program[1:], facts)
    else:
        check_argparse(key, program[1:], facts["argparse"].get(key) or EXTRA_ARGPARSE[key])
    return key


SPEC_VARIANTS = [
    (),
    ("nemo.launcher=docker",),
    ("nemo.launcher=slurm", "resources.nodes=2", "nemo.slurm.partition=batch"),
    (
        "prune.depth.drop_layers=null",
        "prune.depth.target_num_layers=16",
        "prune.depth.importance=block_influence",
    ),
    ("prune.width.target_num_attention_heads=24", "prune.width.target_num_query_groups=8"),
    ("distill.loss.intermediate=[{student_layer: 15, teacher_layer: 31}]",),
    ("finetune=null",),
]


@pytest.mark.parametrize("overrides", SPEC_VARIANTS, ids=lambda o: ",".join(o) or "tutorial")
def test_nemo2_commands_use_only_real_flags(facts, load_tutorial, overrides):
    spec = load_tutorial(*overrides).spec
    scripts = {check_command(command, facts) for _, command in pipeline(spec)}
    assert {
        "scripts/llm/gpt_prune.py",
        "scripts/nlp_language_modeling/preprocess_data_for_megatron.py",
    } <= scripts
    assert ("scripts/llm/gpt_train.py" in scripts) == (
        spec.distill is not None or spec.finetune is not None
    )


LEGACY_VARIANTS = [
    (),
    ("nemo.launcher=slurm",),
    (
        "prune.depth.drop_layers=null",
        "prune.depth.target_num_layers=16",
        "prune.depth.importance=block_influence",
    ),
    ("prune.width.target_num_attention_heads=24", "prune.width.target_num_query_groups=8"),
]


@pytest.mark.parametrize("overrides", LEGACY_VARIANTS, ids=lambda o: ",".join(o) or "tutorial")
def test_legacy_commands_use_only_real_flags_and_keys(facts, load_tutorial, overrides):
    spec = load_tutorial("nemo.flavor=legacy", "export.students=[]", *overrides).spec
    scripts = {check_command(command, facts) for _, command in pipeline(spec)}
    expected = {
        "examples/nlp/language_modeling/megatron_gpt_pretraining.py",
        "examples/nlp/language_modeling/megatron_gpt_prune.py",
        "examples/nlp/language_modeling/megatron_gpt_distillation.py",
    }
    assert expected <= scripts
    assert ("examples/nlp/language_modeling/megatron_gpt_drop_layers.py" in scripts) == (
        spec.prune["depth"].drop_layers is not None
    )


def test_the_checker_rejects_what_nemo_would(facts):
    """The checks above can fail: a made-up flag, a missing required flag, a bad value, a bad key."""
    flags = facts["argparse"]["scripts/llm/gpt_prune.py"]
    base = ["--restore_path", "a", "--save_path", "b"]
    with pytest.raises(AssertionError, match="no flag"):
        check_argparse("gpt_prune", [*base, "--target_ffn", "1"], flags)
    with pytest.raises(AssertionError, match="required"):
        check_argparse("gpt_prune", ["--restore_path", "a"], flags)
    with pytest.raises(ValueError):
        check_argparse("gpt_prune", [*base, "--tp_size", "one"], flags)
    with pytest.raises(AssertionError, match="store_true"):
        check_argparse("gpt_prune", [*base, "--legacy_ckpt", "yes"], flags)
    script = "examples/nlp/language_modeling/megatron_gpt_prune.py"
    with pytest.raises(AssertionError, match="no key"):
        check_hydra(script, ["prune.ffn_size=3"], facts)
    with pytest.raises(AssertionError, match="int"):
        check_hydra(script, ["trainer.devices=eight"], facts)
    with pytest.raises(AssertionError, match="adds a key"):
        check_hydra(script, ["+trainer.devices=8"], facts)


# --------------------------------------------------------------------------------------------
# golden: the tutorial's values


def flag_values(program: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    current = None
    for word in program[1:]:
        if word.startswith("--"):
            current = word
            values[current] = []
        elif current:
            values[current].append(word)
    return values


def hydra_values(program: list[str]) -> dict[str, str]:
    return dict(
        word.lstrip("+").split("=", 1)
        for word in program[1:]
        if "=" in word and not word.startswith("--")
    )


def commands_of(spec, step, variant=None) -> list[list[str]]:
    return [program_of(command) for command in commands_for(spec, step, variant)]


def test_golden_tutorial_nemo2(load_tutorial):
    spec = load_tutorial().spec
    for stage, variant, model in (
        ("finetune", None, "models/teacher"),
        ("distill", "depth", "models/pruned/depth"),
        ("distill", "width", "models/pruned/width"),
    ):
        train = next(p for p in commands_of(spec, stage, variant) if p[0].endswith("gpt_train.py"))
        v = flag_values(train)
        assert v["--max_steps"] == ["30"] and v["--gbs"] == ["128"] and v["--mbs"] == ["4"]
        assert float(v["--lr"][0]) == 1e-4 and float(v["--min_lr"][0]) == 1e-5
        assert (
            v["--warmup_steps"] == ["2"]
            and v["--val_check_interval"] == ["10"]
            and v["--limit_val_batches"] == ["5"]
        )
        assert v["--tp_size"] == ["8"] and v["--pp_size"] == ["1"] and v["--devices"] == ["8"]
        assert v["--seq_length"] == ["8192"] and v["--model_path"] == [model]
        if stage == "distill":
            assert v["--teacher_path"] == ["models/teacher-corrected"]
            assert v["--kd_config"] == [f"logs/distill-{variant}/kd_config.yaml"]
    depth = flag_values(commands_of(spec, "prune", "depth")[0])
    assert depth["--drop_layers"] == [str(n) for n in range(16, 32)]
    assert depth["--tp_size"] == ["8"]  # dropping layers needs no calibration: any TP
    width = flag_values(commands_of(spec, "prune", "width")[0])
    assert width["--target_ffn_hidden_size"] == ["9216"] and width["--target_hidden_size"] == [
        "3072"
    ]
    assert "--target_num_attention_heads" not in width and "--target_num_query_groups" not in width
    assert width["--tp_size"] == ["1"] and width["--pp_size"] == [
        "8"
    ]  # gpt_prune.py: TP 1, PP over the GPUs
    assert width["--num_train_samples"] == ["1024"] and width["--seq_length"] == ["8192"]
    assert width["--data_paths"] == ["1.0", "data/tokens/train_text_document"]


def test_golden_tutorial_legacy(load_tutorial):
    spec = load_tutorial("nemo.flavor=legacy", "export.students=[]").spec
    finetune = commands_of(spec, "finetune")[0]
    assert finetune[0].endswith("megatron_gpt_pretraining.py")
    assert finetune[1:5] == [
        "--config-path",
        "/opt/NeMo/examples/nlp/language_modeling/conf",
        "--config-name",
        "megatron_llama_distill.yaml",
    ]
    for step, variant in (("finetune", None), ("distill", "depth"), ("distill", "width")):
        h = hydra_values(commands_of(spec, step, variant)[0])
        assert (
            h["trainer.max_steps"] == "30"
            and h["model.global_batch_size"] == "128"
            and h["model.micro_batch_size"] == "4"
        )
        assert float(h["model.optim.lr"]) == 1e-4 and float(h["model.optim.sched.min_lr"]) == 1e-5
        assert (
            h["model.optim.sched.warmup_steps"] == "2"
            and h["model.optim.name"] == "distributed_fused_adam"
        )
        assert h["trainer.val_check_interval"] == "10" and h["trainer.limit_val_batches"] == "5"
        assert (
            h["model.tensor_model_parallel_size"] == "8" and h["model.sequence_parallel"] == "True"
        )
        assert h["trainer.num_sanity_val_steps"] == "0" and h["trainer.precision"] == "bf16"
        assert "validation: [data/tokens/validation_text_document]" in h["model.data.data_prefix"]
    h = hydra_values(finetune)
    assert (h["model.num_layers"], h["model.hidden_size"], h["model.ffn_hidden_size"]) == (
        "32",
        "4096",
        "14336",
    )
    assert (h["model.num_query_groups"], h["model.rotary_base"], h["model.encoder_seq_length"]) == (
        "8",
        "500000.0",
        "8192",
    )
    assert (
        h["model.tokenizer"]
        == "{library: huggingface, type: meta-llama/Llama-3.1-8B, use_fast: True}"
    )
    drop = commands_of(spec, "prune", "depth")[0]
    assert drop[0].endswith("megatron_gpt_drop_layers.py")
    assert flag_values(drop)["--drop_layers"] == [str(n) for n in range(16, 32)]
    assert flag_values(drop)["--tensor_model_parallel_size"] == ["8"]
    width = hydra_values(commands_of(spec, "prune", "width")[0])
    assert width["prune.ffn_hidden_size"] == "9216" and width["prune.hidden_size"] == "3072"
    assert (
        width["model.tensor_model_parallel_size"] == "1"
        and width["model.pipeline_model_parallel_size"] == "8"
    )
    assert "prune.num_attention_heads" not in width and width["prune.num_calib_size"] == "1024"
    distill = hydra_values(commands_of(spec, "distill", "width")[0])
    assert distill["model.restore_from_path"] == "models/pruned/width/model.nemo"
    assert distill["model.kd_teacher_restore_from_path"] == "models/teacher-corrected/model.nemo"


def test_tokenize_outputs_land_at_the_layout_prefix(load_tutorial):
    from minispec import layout

    spec = load_tutorial().spec
    for program, split in zip(commands_of(spec, "tokenize"), layout.SPLITS, strict=True):
        v = flag_values(program)
        assert v["--input"] == [layout.jsonl_path(split)]
        # preprocess_data_for_megatron.py writes "{prefix}_{json key}_document.{bin,idx}"
        assert f"{v['--output-prefix'][0]}_{v['--json-keys'][0]}_document" == layout.tokens_prefix(
            split
        )
        assert v["--tokenizer-library"] == ["huggingface"] and v["--tokenizer-type"] == [
            "meta-llama/Llama-3.1-8B"
        ]
        assert v["--append-eod"] == []


def test_stage_objects_and_lines(load_tutorial):
    class Stage:  # what the compiler passes: .step, .variant, .name
        def __init__(self, step, variant=None):
            self.step, self.variant = step, variant
            self.name = step + (f"@{variant}" if variant else "")

    spec = load_tutorial().spec
    assert stage_commands(spec, Stage("prune", "width")) == commands_for(spec, "prune", "width")
    lines = stage_lines(spec, Stage("distill", "depth"))
    assert lines[0] == "minispec nemo kd-config --output logs/distill-depth/kd_config.yaml"
    assert lines[-1] == "minispec nemo logs distill@depth"


def test_stages_nemo_does_not_have(load_tutorial):
    spec = load_tutorial().spec
    with pytest.raises(CompileError, match="importance"):
        commands_for(spec, "importance")
    with pytest.raises(CompileError, match="needs a variant"):
        commands_for(spec, "prune")
    with pytest.raises(CompileError, match="not a prune variant"):
        commands_for(spec, "distill", "nope")
    legacy = load_tutorial("nemo.flavor=legacy").spec
    with pytest.raises(CompileError, match="cannot export"):
        commands_for(legacy, "export", "depth")


def test_no_shell_words_from_the_spec(load_tutorial):
    """Only the launcher's own constant is left to the shell; everything else is a plain string."""
    for launcher in ("local", "docker", "slurm"):
        spec = load_tutorial(f"nemo.launcher={launcher}").spec
        shell_words = {str(w) for _, c in pipeline(spec) for w in c if isinstance(w, ShellWord)}
        assert shell_words <= {'"$PWD":/workspace'}
        for _, command in pipeline(spec):
            assert all(isinstance(w, (str, ShellWord)) for w in command)
            if not any(isinstance(w, ShellWord) for w in command):
                assert shlex.split(" ".join(shlex.quote(w) for w in command)) == command
