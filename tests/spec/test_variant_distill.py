"""``prune.<variant>.distill``: a student's own distillation loss or steps, in one pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from minispec.compile import relative_spec
from minispec.compile.graph import attach_commands, build_graph
from minispec.spec.lint import lint_file
from minispec.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]
TINY_TEACHER = REPO / "tests" / "fixtures" / "teachers" / "tiny-llama"
sys.path.insert(0, str(REPO / "tests" / "engines" / "torch"))

SPEC = f"""\
version: 1
name: own-distill
teacher: {{source: {TINY_TEACHER}}}
data: {{source: hf://x/y, seq_length: 32}}
prune:
  plain: {{kind: depth, drop_layers: [1]}}
  ce:
    kind: depth
    drop_layers: [1]
    distill: {{loss: {{alpha: 0.0}}, steps: 4}}
distill: {{steps: 8, global_batch_size: 2, micro_batch_size: 2, warmup_steps: 1, val_interval: 2}}
resources: {{accelerator: cpu}}
"""


def write(tmp_path, text: str = SPEC) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def messages(path: Path, *overrides: str) -> list[str]:
    return [
        f"{'.'.join(map(str, p.path))}: {p.message}"
        for p in lint_file(path, list(overrides)).problems
    ]


def test_a_student_gets_its_own_loss_and_steps_and_the_others_the_distill_block(tmp_path):
    spec = load_spec(write(tmp_path)).spec
    own, plain = spec.distill_for("ce"), spec.distill_for("plain")
    assert (own.loss.alpha, own.steps) == (0.0, 4)
    assert (plain.loss.alpha, plain.steps) == (1.0, 8)
    assert own.global_batch_size == plain.global_batch_size == 2  # the rest is shared
    assert plain is spec.distill


def test_only_the_student_with_own_settings_reads_them_as_params(tmp_path):
    spec = relative_spec(load_spec(write(tmp_path)).spec, tmp_path)
    stages = {s.name: s for s in attach_commands(spec, build_graph(spec))}
    assert "prune.ce.distill" in stages["distill@ce"].params
    assert not any(p.startswith("prune.") for p in stages["distill@plain"].params)


def test_compiled_pipeline_is_valid_for_dvc(tmp_path):
    from click.testing import CliRunner

    from minispec.cli import cli

    result = CliRunner().invoke(
        cli, ["compile", str(write(tmp_path)), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    from dvc.repo import Repo

    Repo.init(str(tmp_path / "run"), no_scm=True)
    with Repo(str(tmp_path / "run")) as repo:  # DVC itself reads the foreach group
        params = {
            s.name: {key for dep in s.deps for key in getattr(dep, "params", None) or []}
            for s in repo.index.stages
        }
    assert "prune.ce.distill" in params["distill@ce"]
    assert not any(key.startswith("prune.") for key in params["distill@plain"])
    assert "distill.loss" in params["distill@plain"] and "distill.loss" in params["distill@ce"]


def test_lint_accepts_the_spec(tmp_path):
    assert messages(write(tmp_path)) == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "engine=nemo",
            "prune.ce.distill: a student's own distillation settings are supported by the torch engine only (engine: nemo)",
        ),
        (
            "distill.students=[plain]",
            "prune.ce.distill: 'ce' is not distilled, so its distill settings are never used",
        ),
        (
            "prune.ce.distill.steps=1",
            "prune.ce.distill.steps: steps 1 must be more than distill.warmup_steps 1",
        ),
        (
            "distill.teacher_logits={top_k: 4}",
            "prune.ce.distill.steps: steps 40 exceeds distill.steps 8, the windows the cached teacher logits cover",
        ),
    ],
)
def test_lint_says_what_is_wrong_with_a_students_own_settings(tmp_path, override, expected):
    overrides = [override] + (["prune.ce.distill.steps=40"] if "teacher_logits" in override else [])
    found = messages(write(tmp_path), *overrides)
    assert expected in found, found


def test_the_distill_stage_trains_with_the_students_own_loss_and_steps(tmp_path, wikitext_dir):
    import train_support as ts

    from minispec.fsio import read_metrics_record
    from minispec.stage import run_stage

    tokenizer = ts.make_tokenizer(wikitext_dir)
    spec = ts.base_spec(
        finetune=None,
        prune={
            "small": {
                "kind": "depth",
                "drop_layers": [1, 2, 3],
                "distill": {"steps": 3, "loss": {"alpha": 0.0}},
            }
        },
        distill={"warmup_steps": 1, "val_interval": 3},
    )
    root = ts.make_pipeline(tmp_path / "run", wikitext_dir, tokenizer, spec)
    run_stage("distill", "small", root)
    record = read_metrics_record(root, "distill@small")
    assert record["steps"] == 3  # not distill.steps (8)
    assert record["tokens"] == 3 * 8 * ts.SEQ
    # alpha 0: the objective is the cross-entropy alone, no KD term is computed
    assert "final_kd_loss" not in record
    assert record["final_train_loss"] == record["final_ce_loss"]
