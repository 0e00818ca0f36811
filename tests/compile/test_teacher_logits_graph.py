"""The teacher_logits stage in the graph: what it reads, and what the students read instead."""

from __future__ import annotations

from pipeline_harness import QUICKSTART

from minispec import layout
from minispec.compile import relative_spec
from minispec.compile.graph import attach_commands, build_graph
from minispec.spec.load import load_spec
from minispec.steps import Out

CACHED = "distill.teacher_logits={top_k: 32}"


def graph(tmp_path, *overrides: str):
    spec = relative_spec(load_spec(QUICKSTART, overrides).spec, tmp_path)
    return {s.name: s for s in attach_commands(spec, build_graph(spec))}


def test_no_block_no_stage_and_students_read_the_teacher(tmp_path):
    stages = graph(tmp_path)
    assert "teacher_logits" not in stages
    assert layout.CORRECTED_TEACHER_DIR in stages["distill@depth"].deps
    assert "distill.teacher_logits" not in stages["distill@depth"].params


def test_one_cache_before_the_students_which_read_it_instead_of_the_teacher(tmp_path):
    stages = graph(tmp_path, CACHED)
    names = list(stages)
    assert names.index("teacher_logits") < names.index("distill@depth")
    cache = stages["teacher_logits"]
    assert set(cache.deps) == {layout.CORRECTED_TEACHER_DIR, layout.TOKENS_DIR}
    assert cache.outs == [Out(layout.TEACHER_LOGITS_DIR)]
    assert cache.cmd == [["minispec", "stage", "teacher_logits"]]
    # what decides the windows and the teacher's arithmetic; nothing a student or the loss sets
    assert {"distill.teacher_logits", "distill.steps", "distill.global_batch_size", "data.seq_length", "seed"} <= set(cache.params)  # fmt: skip
    assert not any(
        p.startswith(("prune.", "distill.loss", "distill.lr", "distill.micro_batch_size"))
        for p in cache.params
    )
    for variant in ("depth", "width"):
        distill = stages[f"distill@{variant}"]
        assert layout.TEACHER_LOGITS_DIR in distill.deps
        assert layout.CORRECTED_TEACHER_DIR not in distill.deps
        assert "distill.teacher_logits" not in distill.params  # reaches it through the cache


def test_several_devices_compute_the_cache_with_torchrun(tmp_path):
    stages = graph(tmp_path, CACHED, "resources.devices=2", "distill.global_batch_size=8")
    assert stages["teacher_logits"].cmd[0][:4] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
