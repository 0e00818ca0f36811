"""The nemo engine against careless and hostile specs: through the real lint and compile paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.cli import cli
from minispec.compile import compile_pipeline
from minispec.errors import CompileError
from minispec.spec.load import load_spec

REPO = Path(__file__).resolve().parents[3]
TUTORIAL = REPO / "specs" / "llama31-8b-minitron.yaml"

# Llama-3.1-8B's config.json as transformers 5 writes it: RoPE settings nested
LLAMA31_TF5 = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "vocab_size": 128256,
    "rope_parameters": {
        "rope_theta": 500000.0,
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    ("launcher", "words"),
    [
        (
            "docker",
            ["docker run --rm --gpus all", '-v "$PWD":/workspace', "nvcr.io/nvidia/nemo:25.04"],
        ),
        ("slurm", ["srun --nodes 1", '--container-mounts "$PWD":/workspace']),
    ],
)
def test_dry_run_with_container_launchers(tmp_path, launcher, words):
    """`minispec run --dry-run` of the shipped tutorial spec compiles and prints, as run does."""
    result = invoke(
        "run",
        str(TUTORIAL),
        "--out",
        str(tmp_path),
        "--dry-run",
        "--set",
        f"nemo.launcher={launcher}",
    )
    assert result.exit_code == 0, result.output
    assert "TypeError" not in result.output
    finetune = next(line for line in result.output.splitlines() if line.startswith("finetune: "))
    for word in words:
        assert word in finetune, finetune
    assert list(tmp_path.iterdir()) == []


OPTION_LIKE = [
    ("nemo.image=--privileged", "nemo.image", "would be read as an option"),
    ("nemo.image=nvcr.io/x --privileged", "nemo.image", "is not a container image"),
    ("nemo.shm_size=--cap-add=ALL", "nemo.shm_size", "would be read as an option"),
    ("nemo.root=opt/NeMo", "nemo.root", "is not an absolute path"),
    ("nemo.slurm.partition=--uid=0", "nemo.slurm.partition", "would be read as an option"),
    ("nemo.slurm.account=-A", "nemo.slurm.account", "would be read as an option"),
    ("nemo.slurm.time=--overcommit", "nemo.slurm.time", "would be read as an option"),
]


@pytest.mark.parametrize(("override", "key", "words"), OPTION_LIKE)
def test_free_form_settings_cannot_become_options(override, key, words):
    launcher = "slurm" if "slurm" in key else "docker"
    result = invoke("lint", str(TUTORIAL), "--set", f"nemo.launcher={launcher}", "--set", override)
    assert result.exit_code == 2
    assert f"--set {override}: {key}: " in result.output and words in result.output, result.output
    # compiled without lint (a bundle's params.yaml): refused all the same
    with pytest.raises(CompileError, match=words):
        compile_pipeline(
            load_spec(TUTORIAL, [f"nemo.launcher={launcher}", override]), "/tmp/unused"
        )


def test_a_line_break_never_reaches_a_nemo_command():
    override = 'data.text_field="body\\ntouch pwned"'
    result = invoke("lint", str(TUTORIAL), "--set", override)
    assert result.exit_code == 2
    assert "data.text_field: a line break cannot go into a nemo stage command" in result.output
    with pytest.raises(CompileError, match="line break"):
        compile_pipeline(load_spec(TUTORIAL, [override]), "/tmp/unused")


def test_legacy_restates_a_relative_teacher_from_any_directory(tmp_path, monkeypatch):
    """The teacher path is relative to the spec; compiling from another directory reads the
    same config, and transformers-5 `rope_parameters` give Llama 3.1's RoPE, not defaults."""
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(LLAMA31_TF5))
    spec = tmp_path / "spec.yaml"
    spec.write_text(TUTORIAL.read_text().replace("hf://meta-llama/Llama-3.1-8B", "teacher"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    compiled = compile_pipeline(
        load_spec(spec, ["nemo.flavor=legacy", "export.students=[]"]), tmp_path / "out"
    )
    finetune = next(s for s in compiled.stages if s.name == "finetune")
    words = [w for argv in finetune.cmd for w in map(str, argv)]
    assert "++model.rotary_base=500000.0" in words, words
    assert "++model.scale_positional_embedding=True" in words, words
    assert "model.num_query_groups=8" in words


def test_heads_alone_get_one_consistent_answer(tmp_path):
    """NeMo needs both head targets; the fix the nemo rule suggests must pass the other rules."""
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps(LLAMA31_TF5))
    teacher = f"teacher.source={tmp_path / 'teacher'}"
    heads = "prune.width.target_num_attention_heads=24"
    first = invoke("lint", str(TUTORIAL), "--set", teacher, "--set", heads)
    assert first.exit_code == 2
    assert "set target_num_query_groups: 8 (the teacher's)" in first.output, first.output
    second = invoke(
        "lint", str(TUTORIAL), "--set", teacher, "--set", heads,
        "--set", "prune.width.target_num_query_groups=8",
    )  # fmt: skip
    assert second.exit_code == 0, second.output
