"""The engine-agnostic stage graph: which stages exist, what each reads, writes and declares."""

from __future__ import annotations

import pytest
from pipeline_harness import QUICKSTART

from minispec import layout
from minispec.compile import relative_spec
from minispec.compile.graph import (
    DVC_INVALID_STAGENAME_CHARS,
    attach_commands,
    build_graph,
    check_variant_names,
    upstream_closure,
)
from minispec.errors import CompileError
from minispec.spec.load import load_spec
from minispec.steps import Out, Plot


def graph(tmp_path, *overrides: str):
    spec = relative_spec(load_spec(QUICKSTART, overrides).spec, tmp_path)
    return spec, {s.name: s for s in attach_commands(spec, build_graph(spec))}


def test_quickstart_stages_in_order(tmp_path):
    _, stages = graph(tmp_path)
    assert list(stages) == [
        "data", "import", "tokenize", "finetune", "importance",
        "prune@depth", "prune@width", "distill@depth", "distill@width",
        "evaluate", "report", "export@depth", "export@width",
    ]  # fmt: skip


def test_quickstart_deps_params_outs(tmp_path):
    _, s = graph(tmp_path)
    assert s["data"].deps == [] and s["data"].outs == [Out("data/jsonl")]
    assert s["import"].params == ["teacher", "resources.accelerator"]
    assert s["tokenize"].deps == ["data/jsonl", "models/teacher"]  # the teacher's tokenizer
    assert s["tokenize"].params == ["data.tokenizer"]
    assert set(s["finetune"].deps) == {"models/teacher", "data/tokens"}
    assert s["finetune"].outs == [
        Out("models/teacher-corrected"),
        Out("logs/finetune", cache=True, persist=True),  # cached: `dvc exp apply` restores it
        Out("metrics/finetune.json", cache=False),  # an output, not a DVC metric
        Out("metrics/info/finetune.json", cache=False),  # settings beside the numbers
    ]
    assert s["finetune"].metrics == []  # the headline (evaluate's) is the one DVC metric
    assert s["finetune"].plots == [
        Plot("logs/finetune/plots/metrics/train/loss.tsv", "step", "loss"),
        Plot("logs/finetune/plots/metrics/val/loss.tsv", "step", "loss"),
    ]
    # importance: one calibration pass on the corrected teacher; width targets are not read
    assert set(s["importance"].deps) == {"models/teacher-corrected", "data/tokens"}
    assert "prune.width.calibration_samples" in s["importance"].params
    assert not any(p.startswith("prune.width.target") for p in s["importance"].params)
    assert s["importance"].outs == [Out("importance")]
    assert {"teacher.dtype", "teacher.trust_remote_code"} <= set(s["importance"].params)
    # width: scores from importance; every variant reads the tokens (calibration, quick val loss)
    assert set(s["prune@width"].deps) == {"models/teacher-corrected", "importance", "data/tokens"}
    assert {"prune.width", "data.seq_length", "seed", "teacher.dtype"} <= set(
        s["prune@width"].params
    )
    assert not any(p.startswith("prune.depth") for p in s["prune@width"].params)
    assert set(s["prune@depth"].deps) == {"models/teacher-corrected", "data/tokens"}
    assert {"prune.depth", "data.seq_length", "seed"} <= set(s["prune@depth"].params)
    assert s["prune@depth"].outs == [
        Out("models/pruned/depth"),
        Out("metrics/info/prune-depth.json", cache=False),
        Out("metrics/prune-depth.json", cache=False),
    ]
    assert s["prune@depth"].metrics == []
    assert set(s["distill@width"].deps) == {
        "models/pruned/width",
        "models/teacher-corrected",
        "data/tokens",
    }
    assert (
        "distill.lr" in s["distill@width"].params
        and "distill.students" not in s["distill@width"].params
    )
    # checkpoints are the stage's own resumable state, no DVC output (nothing could restore them)
    assert not any(o.path.startswith("checkpoints/") for o in s["distill@width"].outs)
    assert set(s["evaluate"].deps) == {
        "models/teacher", "models/teacher-corrected", "models/students/depth", "models/students/width", "data/tokens",
    }  # fmt: skip
    assert "evaluate" in s["evaluate"].params
    assert s["evaluate"].metrics == [Out("metrics/summary.json", cache=False)]
    assert Out("metrics/evaluate.json", cache=False) in s["evaluate"].outs
    metrics = [m.path for stage in s.values() for m in stage.metrics]
    assert metrics == [
        layout.SUMMARY_METRICS
    ]  # one small file: `dvc metrics show` fits 120 columns
    assert (
        "metrics/evaluate.json" in s["report"].deps
        and "logs/distill-width/plots/metrics/val/loss.tsv" in s["report"].deps
    )
    # export: the final model and its training metrics, never evaluate's outputs (no harness)
    assert s["export@width"].deps == ["models/students/width", "metrics/distill-width.json"]
    assert s["export@width"].outs == [Out("export/width")]


def test_every_declared_param_key_exists_in_params(tmp_path):
    spec, stages = graph(tmp_path)
    params = spec.model_dump(mode="json")
    for stage in stages.values():
        for key in stage.params:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (
                    f"{stage.name}: {key} not in params.yaml"
                )
                node = node[part]


def test_paths_come_from_layout(tmp_path):
    spec, s = graph(tmp_path)
    assert s["distill@depth"].deps[0] == layout.pruned_dir("depth")
    assert layout.metrics_path("distill@depth") in [o.path for o in s["distill@depth"].outs]
    assert layout.log_dir("distill@depth") in [o.path for o in s["distill@depth"].outs]
    assert layout.final_model_dir(spec, "width") in s["export@width"].deps


def test_without_finetune_the_teacher_is_the_import(tmp_path):
    _, s = graph(tmp_path, "finetune=null")
    assert "finetune" not in s
    assert "models/teacher" in s["prune@width"].deps and "models/teacher" in s["distill@depth"].deps
    assert "models/teacher-corrected" not in s["evaluate"].deps
    assert not any("finetune" in d for d in s["report"].deps)


def test_importance_only_for_activation_width_variants(tmp_path):
    _, s = graph(tmp_path, "prune.width.importance=magnitude")
    assert "importance" not in s
    assert s["prune@width"].deps == ["models/teacher-corrected", "data/tokens"]
    _, s = graph(tmp_path, "prune.width.importance=random")
    assert "seed" in s["prune@width"].params  # a seeded baseline


def test_depth_with_drop_layers_reads_only_its_own_variant(tmp_path):
    _, s = graph(
        tmp_path, "prune.depth.target_num_layers=null", "prune.depth.drop_layers=[11, 12, 13]"
    )
    # the tokens serve the quick validation loss written right after pruning
    assert s["prune@depth"].deps == ["models/teacher-corrected", "data/tokens"]
    assert [p for p in s["prune@depth"].params if p.startswith("prune.")] == ["prune.depth"]


def test_without_distill_the_pruned_models_are_final(tmp_path):
    _, s = graph(tmp_path, "distill=null")
    assert not any(name.startswith("distill") for name in s)
    assert s["export@width"].deps == ["models/pruned/width", "metrics/prune-width.json"]
    assert "models/pruned/depth" in s["evaluate"].deps


def test_students_and_exports_subsets(tmp_path):
    _, s = graph(tmp_path, "distill.students=[width]", "export.students=[width]")
    assert "distill@width" in s and "distill@depth" not in s
    assert "export@width" in s and "export@depth" not in s
    assert {"models/pruned/depth", "models/students/width"} <= set(s["evaluate"].deps)


def test_local_sources_are_deps_relative_to_the_pipeline(tmp_path, wikitext_dir):
    out = tmp_path / "pipe"
    spec, s = graph(out, f"data.source={wikitext_dir}")
    assert s["data"].deps == [spec.data.source]
    assert (out / spec.data.source).resolve() == wikitext_dir.resolve()
    assert not spec.data.source.startswith("/")


def test_torch_commands(tmp_path):
    _, s = graph(tmp_path)
    assert s["data"].cmd == [["minispec", "stage", "data"]]
    assert s["prune@width"].cmd == [["minispec", "stage", "prune", "width"]]
    assert s["export@depth"].cmd == [["minispec", "stage", "export", "depth"]]


def test_torchrun_for_several_devices(tmp_path):
    _, s = graph(tmp_path, "resources.devices=4")
    torchrun = ["torchrun", "--standalone", "--nproc-per-node", "4", "-m", "minispec", "stage"]
    assert s["finetune"].cmd == [[*torchrun, "finetune"]]
    assert s["distill@width"].cmd == [[*torchrun, "distill", "width"]]
    assert s["importance"].cmd == [[*torchrun, "importance"]]
    assert s["evaluate"].cmd == [[*torchrun, "evaluate"]]
    assert s["prune@width"].cmd == [["minispec", "stage", "prune", "width"]]
    assert s["data"].cmd == [["minispec", "stage", "data"]]


def test_upstream_closure(tmp_path):
    _, s = graph(tmp_path)
    names = [x.name for x in upstream_closure(list(s.values()), ["distill@width"])]
    assert names == [
        "data",
        "import",
        "tokenize",
        "finetune",
        "importance",
        "prune@width",
        "distill@width",
    ]


def test_dvc_stage_name_rule_matches_dvc():
    from dvc.stage import INVALID_STAGENAME_CHARS

    assert DVC_INVALID_STAGENAME_CHARS == INVALID_STAGENAME_CHARS
    assert "@" in DVC_INVALID_STAGENAME_CHARS


@pytest.mark.parametrize("name", ["wid.th", "a@b", "a/b", "a b", "1st", "", "ä$"])
def test_invalid_variant_names_are_rejected(name):
    with pytest.raises(CompileError, match="cannot be DVC stage names"):
        check_variant_names(["depth", name])


def test_valid_variant_names():
    from dvc.stage.utils import is_valid_name

    names = ["width", "w-384", "depth_20", "A1"]
    check_variant_names(names)
    assert all(is_valid_name(f"prune@{n}".split("@")[1]) for n in names)


def test_variant_names_differing_in_case_are_rejected():
    with pytest.raises(CompileError, match="differ only in case"):
        check_variant_names(["width", "Width"])


@pytest.mark.parametrize("inside", ["data/jsonl", "models", "models/teacher/sub", "."])
def test_a_local_source_inside_an_output_is_rejected(tmp_path, inside):
    source = (tmp_path / inside).resolve()
    with pytest.raises(CompileError, match="overlaps the output"):
        graph(tmp_path, f"data.source={source}")
