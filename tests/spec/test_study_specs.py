"""The GPU study's specs (specs/study/) keep the comparisons fair: equal sizes, equal tokens."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from minispec.plan import Shape, student_shape
from minispec.spec.lint import lint_file
from minispec.spec.load import load_spec

STUDY = Path(__file__).resolve().parents[2] / "specs" / "study"
# SmolLM2-135M (shared/README.md): 30 layers, hidden 576, MLP 1536, 9 heads, 3 KV heads of 64
TEACHER = Shape(
    layers=30, hidden=576, ffn=1536, heads=9, groups=3, head_dim=64, vocab=49152, tied=True
)


def non_embedding(shape: Shape) -> int:
    return shape.params - shape.vocab * shape.hidden


def spec(name: str):
    return load_spec(STUDY / f"{name}.yaml").spec


def test_width_and_depth_students_have_the_same_non_embedding_parameters_within_0_3_percent():
    core = spec("core")
    sizes = {v: non_embedding(student_shape(TEACHER, p, None)) for v, p in core.prune.items()}
    assert non_embedding(TEACHER) == 106_203_456
    assert sizes["d15"] == 53_102_016  # exactly half of the teacher's
    # w50's MLP is 856 (a multiple of 8 for cuBLAS's fast kernels), not the odd 853 that would
    # match exactly: 0.29% larger
    assert sizes["w50"] == 53_257_536 and abs(sizes["w50"] / sizes["d15"] - 1) < 0.003
    assert sizes["w75"] == 79_661_376 and round(sizes["w75"] / non_embedding(TEACHER), 3) == 0.75
    # both keep hidden 576, so the same embedding
    w50_embedding = student_shape(TEACHER, core.prune["w50"], None).params - sizes["w50"]
    assert w50_embedding == replace(TEACHER, layers=15).params - sizes["d15"]


def test_every_50_percent_width_student_has_the_same_shape():
    shapes = {
        (name, variant): student_shape(TEACHER, prune, None)
        for name in ("core", "no-correction")
        for variant, prune in spec(name).prune.items()
        if variant.startswith("w50")
    }
    assert len(shapes) == 6 and len(set(shapes.values())) == 1
    # iterative round 2 prunes round 1's w75 to the same final shape
    w75 = student_shape(TEACHER, spec("core").prune["w75"], None)
    assert student_shape(w75, spec("iterative").prune["w50"], None) == next(iter(shapes.values()))


def test_every_comparison_gets_the_same_tokens():
    core, no_correction, iterative = spec("core"), spec("no-correction"), spec("iterative")
    steps = {v: core.distill_for(v).steps for v in core.students}
    one_shot = steps.pop("w75") * 2
    assert set(steps.values()) == {one_shot}  # w75 gets half of every one-shot student
    assert no_correction.distill.steps == core.distill.steps
    assert core.distill_for("w75").steps + iterative.distill.steps <= core.distill.steps
    assert core.distill_for("w75").steps == iterative.distill.steps
    for other in (no_correction, iterative):  # the same batch, schedule shape and loss
        assert other.distill.model_dump(exclude={"steps"}) == core.distill.model_dump(
            exclude={"steps"}
        )
        assert other.data == core.data and other.seed == core.seed


def test_the_study_differs_only_where_each_finding_says():
    core = spec("core")
    assert core.distill_for("w50_ce").loss.alpha == 0.0
    assert core.distill_for("w50_kdce").loss.alpha == 0.5
    assert core.distill_for("w50").loss.alpha == 1.0
    assert {core.prune[v].importance for v in ("w50", "w50_mag", "w50_rand")} == {
        "activation",
        "magnitude",
        "random",
    }
    assert (core.prune["d15"].importance, core.prune["d15_lm"].importance) == (
        "block_influence",
        "lm_loss",
    )
    assert core.finetune is not None and spec("no-correction").finetune is None


@pytest.mark.parametrize("name", ["core", "no-correction"])
def test_study_specs_lint_against_a_local_corpus(tmp_path, name, wikitext_dir):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_bytes(
            (wikitext_dir / "test.jsonl").read_bytes()[:4096].rsplit(b"\n", 1)[0] + b"\n"
        )
    result = lint_file(STUDY / f"{name}.yaml", [f"data.source={tmp_path}"])
    assert result.ok, [p.message for p in result.problems]
