"""Minimal, correct invalidation with real DVC (issue 3, point 3).

A full run of the compiled quickstart pipeline is recorded with real DVC (each stage's outputs
written by the harness and committed: real hashes, a real dvc.lock). Then the spec changes and
the pipeline is recompiled; stage by stage in graph order, DVC says whether the stage is out of
date, and when it is, the stage 're-runs' (new outputs, committed) before its dependents are
asked — what `dvc repro` does. The stages that re-ran must be exactly the expected ones.
"""

from __future__ import annotations

import shutil

import pytest
from pipeline_harness import QUICKSTART, Runner, compile_into, dvc

pytestmark = pytest.mark.slow

AFTER_FINETUNE = [
    "finetune", "importance", "prune@depth", "prune@width", "distill@depth", "distill@width",
    "evaluate", "report", "export@depth", "export@width",
]  # fmt: skip


def corpus_override(root) -> str:
    """The data lives beside dvc.yaml (``corpus/``), so copies of the pipeline directory compile alike."""
    return f"data.source={root / 'corpus'}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, wikitext_dir):
    """A pipeline directory in which every stage has run once, as DVC records it."""
    root = tmp_path_factory.mktemp("full-run")
    (root / "corpus").mkdir()
    for split in ("validation", "test"):
        lines = (wikitext_dir / f"{split}.jsonl").read_text().splitlines(keepends=True)[:200]
        (root / "corpus" / f"{split}.jsonl").write_text("".join(lines))
    compiled = compile_into(QUICKSTART, root, [corpus_override(root)])
    dvc("init", "--no-scm", "-q", cwd=root)
    Runner(root).run_all(compiled.stages)
    return root


def copy_of(full_run, tmp_path):
    root = tmp_path / "pipeline"
    shutil.copytree(full_run, root, symlinks=True)
    return root


def rerun_after(full_run, tmp_path, *changes: str) -> list[str]:
    root = copy_of(full_run, tmp_path)
    compiled = compile_into(QUICKSTART, root, [corpus_override(root), *changes])
    return Runner(root).repro(compiled.stages)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ((), []),
        (
            ("prune.width.target_hidden_size=324",),
            ["prune@width", "distill@width", "evaluate", "report", "export@width"],
        ),
        (("finetune.lr=2e-4",), AFTER_FINETUNE),
        (("evaluate.max_windows=8",), ["evaluate", "report"]),
        (("evaluate.splits=[test]",), ["evaluate", "report"]),
        (("export.dtype=bfloat16",), ["export@depth", "export@width"]),
        (
            ("distill.loss.temperature=2.0",),
            [
                "distill@depth",
                "distill@width",
                "evaluate",
                "report",
                "export@depth",
                "export@width",
            ],
        ),
        # a new calibration size re-scores activations, so only the width student follows
        (
            ("prune.width.calibration_samples=128",),
            ["importance", "prune@width", "distill@width", "evaluate", "report", "export@width"],
        ),
        (
            ("prune.depth.target_num_layers=24",),
            ["prune@depth", "distill@depth", "evaluate", "report", "export@depth"],
        ),
        (("data.text_field=body",), ["data", "tokenize", *AFTER_FINETUNE]),
        (("data.workers=1", "resources.nodes=2"), []),  # read by no stage (or no result)
    ],
    ids=[
        "nothing",
        "width-target",
        "finetune-lr",
        "evaluate-option",
        "evaluate-splits",
        "export-dtype",
        "distill-loss",
        "calibration-samples",
        "depth-target",
        "text-field",
        "no-result-change",
    ],  # fmt: skip
)
def test_exactly_the_affected_stages_rerun(full_run, tmp_path, changes, expected):
    assert rerun_after(full_run, tmp_path, *changes) == expected


def test_a_rerun_after_a_rerun_runs_nothing(full_run, tmp_path):
    root = copy_of(full_run, tmp_path)
    changed = [corpus_override(root), "finetune.lr=2e-4"]
    runner = Runner(root)
    assert runner.repro(compile_into(QUICKSTART, root, changed).stages) == AFTER_FINETUNE
    assert runner.repro(compile_into(QUICKSTART, root, changed).stages) == []


def test_a_changed_data_file_reruns_everything_that_reads_data(full_run, tmp_path):
    root = copy_of(full_run, tmp_path)
    with (root / "corpus" / "test.jsonl").open("a") as handle:
        handle.write('{"text": "one more document"}\n')
    compiled = compile_into(QUICKSTART, root, [corpus_override(root)])
    assert Runner(root).repro(compiled.stages) == ["data", "tokenize", *AFTER_FINETUNE]
