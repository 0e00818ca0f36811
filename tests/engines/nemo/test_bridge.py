"""Flavor ``bridge``: Model-Optimizer's Megatron-Bridge scripts.

Every flag emitted for ``prune_minitron.py`` and ``distill.py`` is checked against facts read
from ModelOpt's sources (``modelopt-bridge-cli-facts.json``), as the other flavors are against
NeMo's; the tutorial compiles to its values; depth by ``drop_layers`` really keeps the right
layers (1-indexed), run by the very command the flavor emits; Megatron-Bridge's TensorBoard
tags become our curves and metrics; lint refuses what the scripts cannot do.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_nemo_commands import check_argparse, flag_values, pipeline, program_of
from test_nemo_logs import params_yaml, write_events

from minispec import layout
from minispec.cli import cli
from minispec.engines.nemo import logs
from minispec.engines.nemo.bridge import DISTILL, PRUNE_MINITRON
from minispec.engines.nemo.bridge_runtime import BRIDGE_TAGS
from minispec.engines.nemo.commands import commands_for, stage_lines
from minispec.errors import StageError

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("MINISPEC_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO / "tests" / "engines" / "torch"))  # prune_support: pipeline dirs
SHARED_FACTS = "modelopt-bridge-cli-facts.json"
OUR_MODULES = {"minispec"}  # python -m minispec ...: our own stage code inside the container


@pytest.fixture(scope="session")
def bridge_facts() -> dict:
    path = SHARED / "reference" / SHARED_FACTS
    if not path.is_file():
        pytest.fail(f"{path} not found (set MINISPEC_SHARED)")
    return json.loads(path.read_text())


def check_bridge_command(command: list, facts: dict) -> str | None:
    """The ModelOpt script a command runs (its flags checked), or None for our own commands."""
    words = [str(w) for w in command]
    if "--module" in words:  # torchrun --module minispec ...: our stage code
        assert words[words.index("--module") + 1] in OUR_MODULES, words
        return None
    program = program_of(command)
    if program[0] in OUR_MODULES or program[0] == "minispec":
        return None
    scripts = facts["argparse"]
    key = next((k for k in scripts if scripts[k] and program[0].endswith("/" + k)), None)
    assert key is not None, f"unknown Model-Optimizer script {program[0]}"
    flags = scripts[key]
    check_argparse(key, program[1:], flags)
    # argparse mutually exclusive groups: exactly one member when the group is required
    groups: dict[str, list[str]] = {}
    for flag, info in flags.items():
        if "mutually_exclusive_group" in info:
            groups.setdefault(info["mutually_exclusive_group"], []).append(flag)
    for members in groups.values():
        given = [m for m in members if m in program[1:]]
        required = any(flags[m].get("group_required") for m in members)
        assert len(given) <= 1, f"{key}: {given} are mutually exclusive"
        assert given or not required, f"{key}: one of {members} is required"
    return key


BRIDGE_VARIANTS = [
    (),
    ("nemo.launcher=docker",),
    ("nemo.launcher=slurm", "resources.nodes=2", "nemo.slurm.partition=batch", "finetune=null"),
    (
        "prune.depth.drop_layers=null",
        "prune.depth.target_num_layers=16",
        "prune.depth.importance=block_influence",
    ),
    ("prune.width.target_num_attention_heads=16",),
    (
        "prune.width.target_hidden_size=null",
        "prune.width.target_ffn_hidden_size=null",
        "prune.width.target_params=4000000000",
    ),
    ("distill.checkpoint_interval=10",),
    ("finetune=null",),
]


@pytest.mark.parametrize("overrides", BRIDGE_VARIANTS, ids=lambda o: ",".join(o) or "tutorial")
def test_bridge_commands_use_only_real_flags(bridge_facts, load_tutorial, overrides):
    from minispec.spec.lint import semantic_problems

    loaded = load_tutorial("nemo.flavor=bridge", *overrides)
    assert not [p for p in semantic_problems(loaded) if p.severity == "error"]
    spec = loaded.spec
    scripts = {check_bridge_command(command, bridge_facts) for _, command in pipeline(spec)}
    assert scripts - {None} == {PRUNE_MINITRON, DISTILL}


def test_the_bridge_checker_rejects_what_argparse_would(bridge_facts):
    flags = bridge_facts["argparse"][PRUNE_MINITRON]
    with pytest.raises(AssertionError, match="mutually exclusive"):
        check_bridge_command(
            ["python", f"/m/{PRUNE_MINITRON}", "--hf_model_name_or_path", "a",
             "--output_hf_path", "b", "--output_megatron_path", "c"],
            bridge_facts,
        )  # fmt: skip
    with pytest.raises(AssertionError, match="is required"):
        check_bridge_command(
            ["python", f"/m/{PRUNE_MINITRON}", "--hf_model_name_or_path", "a"], bridge_facts
        )
    with pytest.raises(AssertionError, match="no flag"):
        check_argparse(
            "prune_minitron", ["--hf_model_name_or_path", "a", "--drop_layers", "3"], flags
        )


def test_tutorial_compiles_to_its_values(load_tutorial):
    spec = load_tutorial("nemo.flavor=bridge").spec
    (prune, publish, metrics) = commands_for(spec, "prune", "width")
    program = program_of(prune)
    assert program[0] == f"/opt/Model-Optimizer/{PRUNE_MINITRON}"
    values = flag_values(program)
    assert json.loads(values["--prune_export_config"][0]) == {
        "ffn_hidden_size": 9216,
        "hidden_size": 3072,
    }
    assert values["--pp_size"] == ["8"] and prune[prune.index("--nproc-per-node") + 1] == "8"
    assert values["--calib_num_samples"] == ["1024"] and values["--seq_length"] == ["8192"]
    assert values["--calib_dataset_name"] == [layout.jsonl_path("train")]
    assert values["--hf_model_name_or_path"] == [layout.CORRECTED_TEACHER_DIR]
    assert publish[-2:] == [values["--output_hf_path"][0], layout.pruned_dir("width")]
    assert program_of(metrics)[:4] == ["minispec", "nemo", "bridge-prune-metrics", "width"]

    distill = program_of(commands_for(spec, "distill", "width")[0])
    values = flag_values(distill)
    expected = {
        "--teacher_hf_path": [layout.CORRECTED_TEACHER_DIR],
        "--student_hf_path": [layout.pruned_dir("width")],
        "--data_paths": ["1.0", layout.tokens_prefix("train")],
        "--train_iters": ["30"], "--gbs": ["128"], "--mbs": ["4"], "--seq_length": ["8192"],
        "--lr": ["0.0001"], "--min_lr": ["1e-05"], "--lr_warmup_iters": ["2"],
        "--eval_interval": ["10"], "--eval_iters": ["5"], "--tp_size": ["8"], "--pp_size": ["1"],
        "--seed": ["1234"],
    }  # fmt: skip
    for flag, value in expected.items():
        assert values[flag] == value, flag
    # depth by drop_layers: our own HF layer surgery, 1-indexed as the spec (and NeMo 2) say
    assert commands_for(spec, "prune", "depth") == [
        ["python", "-m", "minispec", "stage", "prune", "depth"]
    ]


def test_image_follows_the_flavor(load_tutorial):
    bridge = load_tutorial("nemo.flavor=bridge", "nemo.launcher=docker").spec
    assert bridge.nemo_settings.image == "nvcr.io/nvidia/nemo:26.06"
    assert "nvcr.io/nvidia/nemo:26.06" in commands_for(bridge, "distill", "width")[0]
    nemo2 = load_tutorial("nemo.launcher=docker").spec
    assert nemo2.nemo_settings.image == "nvcr.io/nvidia/nemo:25.04"
    chosen = load_tutorial("nemo.flavor=bridge", "nemo.image=registry.local/nemo:custom").spec
    assert chosen.nemo_settings.image == "registry.local/nemo:custom"


def test_tutorial_runs_dry_with_flavor_bridge(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "minispec", "run", str(REPO / "specs" / "llama31-8b-minitron.yaml"),
         "--set", "nemo.flavor=bridge", "--out", str(tmp_path), "--dry-run"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "prune_minitron.py" in result.stdout and "distill.py" in result.stdout
    assert "gpt_prune.py" not in result.stdout


# --------------------------------------------------------------------------------------------
# lint


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (("prune.width.target_num_query_groups=4",), "prune.width.target_num_query_groups",
         "does not prune query groups"),
        (("distill.loss.temperature=2",), "distill.loss.temperature", "logits KL at T = 1"),
        (("distill.loss.alpha=0.5",), "distill.loss.alpha", "logits KL at T = 1"),
        (("prune.width.target_params=4000000000",), "prune.width.target_hidden_size", "not both"),
        (("resources.nodes=2", "nemo.launcher=slurm"), "finetune", "one node"),
    ],
)  # fmt: skip
def test_lint_refuses_what_the_scripts_cannot_do(load_tutorial, overrides, key, message):
    from minispec.spec.lint import semantic_problems

    problems = semantic_problems(load_tutorial("nemo.flavor=bridge", *overrides))
    errors = [p for p in problems if p.severity == "error"]
    assert any(message in p.message and ".".join(map(str, p.path)) == key for p in errors), errors


def test_a_parameter_budget_needs_flavor_bridge(load_tutorial):
    from minispec.spec.lint import semantic_problems

    overrides = ("prune.width.target_hidden_size=null", "prune.width.target_ffn_hidden_size=null",
                 "prune.width.target_params=4000000000")  # fmt: skip
    ok = semantic_problems(load_tutorial("nemo.flavor=bridge", *overrides))
    assert not [p for p in ok if p.severity == "error"]
    bad = semantic_problems(load_tutorial(*overrides))
    assert any("flavor bridge" in p.message for p in bad if p.severity == "error")


# --------------------------------------------------------------------------------------------
# runtime: logs, publish, prune metrics, drop_layers


def test_bridge_logs_become_our_curves_and_metrics(tmp_path, load_tutorial, monkeypatch):
    spec = load_tutorial("nemo.flavor=bridge").spec
    stage = "distill@width"
    start = time.time()
    # what Megatron-Bridge's training_log / evaluate_and_print_results write into tb_logs
    write_events(tmp_path / layout.nemo_run_dir(stage) / "tb_logs", {
        "total loss": [(s, 1.5 - 0.02 * s) for s in range(1, 31)],
        "lm loss": [(s, 3.0 - 0.02 * s) for s in range(1, 31)],
        "lm loss validation": [(10, 2.7), (20, 2.5), (30, 2.4)],
        "learning-rate": [(s, 1e-4) for s in range(1, 31)],
    }, start=start)  # fmt: skip
    params_yaml(spec, tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["nemo", "logs", "--flavor", "bridge", stage])
    assert result.exit_code == 0, result.output
    train = (tmp_path / layout.train_curve_path(stage)).read_text().splitlines()
    assert len(train) == 31 and float(train[1].split("\t")[2]) == pytest.approx(1.48)
    metrics = json.loads((tmp_path / layout.metrics_path(stage)).read_text())
    assert metrics["steps"] == 30 and metrics["final_val_loss"] == pytest.approx(2.4)
    assert metrics["final_train_loss"] == pytest.approx(1.5 - 0.6)
    # NeMo's tags are not there: the nemo2 reader finds no training loss
    with pytest.raises(StageError, match="reduced_train_loss"):
        logs.convert_stage(stage, tmp_path, global_batch_size=128, seq_length=8192)
    assert BRIDGE_TAGS.val_loss == "lm loss validation"


def test_publish_moves_a_hugging_face_directory(tmp_path):
    scratch = tmp_path / "checkpoints" / "prune-width" / "pruned"
    scratch.mkdir(parents=True)
    (scratch / "config.json").write_text("{}")
    (scratch / "model.safetensors").write_bytes(b"x")
    target = tmp_path / "models" / "pruned" / "width"
    logs.publish(scratch, target, "bridge")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageError, match="not a Hugging Face checkpoint"):
        logs.publish(empty, tmp_path / "other", "bridge")


@pytest.fixture
def bridge_pipeline(tmp_path, tiny_llama):
    """A pipeline directory (teacher, tokens, params.yaml) of an engine-nemo, flavor-bridge spec."""
    from prune_support import base_spec, make_pipeline, write_params

    prune = {"drop": {"kind": "depth", "drop_layers": [2, 3]}}
    teacher = tiny_llama()
    make_pipeline(tmp_path, teacher, prune)
    spec = base_spec(prune)
    spec.update(engine="nemo", nemo={"flavor": "bridge"})
    write_params(tmp_path, spec)
    return tmp_path, teacher


def test_drop_layers_run_by_the_emitted_command_keep_the_right_layers(bridge_pipeline):
    """The bridge flavor's prune@drop command, run as DVC would: layers 2 and 3 (1-indexed) go,
    the student's layers are the teacher's 1st and 4th."""
    from minispec.engines.torch.modeling import load_model
    from minispec.params import load_params

    root, teacher = bridge_pipeline
    spec = load_params(root)
    assert spec.nemo_settings.flavor == "bridge"
    (line,) = stage_lines(spec, type("Stage", (), {"step": "prune", "variant": "drop"})())
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "minispec"]
    result = subprocess.run([sys.executable, *argv[1:]], cwd=root, capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    student = load_model(root / layout.pruned_dir("drop"))
    assert student.config.num_hidden_layers == 2
    for kept, original in zip(student.model.layers, (0, 3), strict=True):
        source = teacher.model.layers[original]
        assert (kept.mlp.down_proj.weight == source.mlp.down_proj.weight).all()
    from minispec.fsio import read_metrics_record

    metrics = read_metrics_record(root, "prune@drop")  # layer lists live in the info file
    assert metrics["drop_layers"] == [2, 3] and metrics["kept_layers"] == [1, 4]


def test_prune_metrics_of_a_bridge_student(bridge_pipeline):
    """``minispec nemo bridge-prune-metrics``: the torch engine's keys for a student another
    program wrote (here a real width-pruned HF directory in the pruned model's place)."""
    from prune_support import base_spec, make_tokenizer, write_params

    from minispec.engines.nemo.bridge_runtime import write_prune_metrics
    from minispec.engines.torch.modeling import save_model
    from minispec.engines.torch.surgery import model_dims
    from minispec.engines.torch.width import WidthTargets, prune_width, random_scores
    from minispec.params import load_params

    root, teacher = bridge_pipeline
    spec = base_spec({"narrow": {"kind": "width", "target_ffn_hidden_size": 64}})
    spec.update(engine="nemo", nemo={"flavor": "bridge"})
    write_params(root, spec)
    dims = model_dims(teacher.config)
    targets = WidthTargets(hidden_size=64, ffn_hidden_size=64, num_attention_heads=4,
                           num_query_groups=2)  # fmt: skip
    student, _ = prune_width(teacher, random_scores(dims, 0), targets)
    save_model(student, make_tokenizer(256), root / layout.pruned_dir("narrow"))
    metrics = write_prune_metrics(load_params(root), "narrow", root)
    assert (
        metrics["pruned"]["ffn_hidden_size"] == 64 and metrics["source"]["ffn_hidden_size"] == 128
    )
    assert metrics["val_loss"] > 0 and metrics["teacher_val_loss"] > 0
    assert metrics["val_loss"] != pytest.approx(metrics["teacher_val_loss"], rel=1e-6)
    on_disk = json.loads((root / layout.metrics_path("prune@narrow")).read_text())
    assert on_disk == yaml.safe_load(json.dumps(metrics))
