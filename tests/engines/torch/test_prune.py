"""The importance and prune@<variant> stages end to end on a tiny teacher, and their bad input."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from prune_support import base_spec, expected_params, make_pipeline, unique_params, write_params

from minispec import layout
from minispec.cli import cli
from minispec.fsio import read_metrics_record
from minispec.stage import run_stage

VARIANTS = {
    "width": {
        "kind": "width",
        "target_hidden_size": 48,
        "target_ffn_hidden_size": 96,
        "calibration_samples": 24,
    },
    "heads": {
        "kind": "width",
        "target_num_attention_heads": 2,
        "importance": "activation",
        "calibration_samples": 8,
    },
    "magnitude": {"kind": "width", "target_ffn_hidden_size": 64, "importance": "magnitude"},
    "random": {"kind": "width", "target_num_query_groups": 1, "importance": "random"},
    "depth": {"kind": "depth", "target_num_layers": 2, "calibration_samples": 12},
    "shortgpt": {
        "kind": "depth",
        "target_num_layers": 3,
        "importance": "block_influence",
        "calibration_samples": 12,
    },
    "drop": {"kind": "depth", "drop_layers": [2, 3]},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tiny_models import make_tiny_model, tiny_config

    root = tmp_path_factory.mktemp("pipeline")
    make_pipeline(root, make_tiny_model(tiny_config("llama")), VARIANTS)
    run_stage("importance", None, root)
    for name in VARIANTS:
        run_stage("prune", name, root)
    return root


def metrics(root, name):
    return read_metrics_record(root, f"prune@{name}")


def test_importance_stage_writes_scores_and_summary(pipeline):
    from safetensors import safe_open

    with safe_open(str(pipeline / layout.width_importance_path()), "pt") as handle:
        assert (
            handle.metadata()["calibration_samples"] == "24"
        )  # the most any activation variant asks
        assert {"hidden", "mlp.0", "heads.3", "norm.norm"} <= set(handle.keys())
    summary = json.loads((pipeline / layout.width_importance_summary_path()).read_text())
    assert summary["calibration_samples"] == 24 and summary["seq_length"] == 16
    assert len(summary["layers"]) == 4
    assert not {"seconds", "tokens_per_second"} & set(summary)  # timings would change its hash


def test_importance_reruns_to_the_same_bytes(pipeline, tmp_path):
    """DVC hashes the importance directory: a rerun on the same teacher must not change it,
    or every width variant after it would run again for nothing."""
    import shutil

    root = shutil.copytree(pipeline, tmp_path / "pipeline")
    run_stage("importance", None, root)
    for path in sorted((pipeline / layout.IMPORTANCE_DIR).iterdir()):
        assert (root / layout.IMPORTANCE_DIR / path.name).read_bytes() == path.read_bytes(), path


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pruned_models_reload_with_tokenizer_and_the_implied_size(pipeline, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = pipeline / layout.pruned_dir(name)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert AutoTokenizer.from_pretrained(model_dir).eos_token == "<eos>"
    m = metrics(pipeline, name)
    assert unique_params(model) == expected_params(model.config) == m["pruned"]["params_total"]
    assert m["source"]["params_total"] == 164416 and m["pruned"]["params_total"] < 164416
    assert m["pruned"]["num_layers"] == model.config.num_hidden_layers
    assert m["pruned"]["hidden_size"] == model.config.hidden_size
    assert math.isfinite(m["val_loss"]) and math.isfinite(m["teacher_val_loss"])
    assert m["val_windows"] == 16
    with torch.no_grad():
        out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_width_metrics_record_the_sizes(pipeline):
    m = metrics(pipeline, "width")
    assert (m["kind"], m["importance"]) == ("width", "activation")
    assert (m["pruned"]["hidden_size"], m["pruned"]["ffn_hidden_size"]) == (48, 96)
    assert metrics(pipeline, "heads")["pruned"]["num_attention_heads"] == 2
    assert metrics(pipeline, "random")["pruned"]["num_query_groups"] == 1


def test_depth_scores_are_written_for_importance_chosen_variants(pipeline):
    from minispec.report.collect import parse_depth_scores

    report = json.loads((pipeline / layout.depth_scores_path("depth")).read_text())
    best = min(report["per_block"], key=lambda b: b["score"])
    assert report["dropped_layers"] == list(range(best["start"], best["end"] + 1))
    assert len(report["per_block"]) == 3 and len(report["per_layer"]) == 4
    assert metrics(pipeline, "depth")["drop_layers"] == report["dropped_layers"]
    # the report reads what the stage wrote (layout.depth_scores_path's format)
    parsed = parse_depth_scores("depth", report)
    assert parsed.metric == "lm_loss" and parsed.dropped_layers == report["dropped_layers"]
    assert len(parsed.per_block) == 3 and len(parsed.per_layer) == 4

    shortgpt = json.loads((pipeline / layout.depth_scores_path("shortgpt")).read_text())
    lowest = 1 + min(range(4), key=lambda i: shortgpt["per_layer"][i])
    assert shortgpt["dropped_layers"] == [lowest] and "per_block" not in shortgpt

    assert not (pipeline / layout.depth_scores_path("drop")).exists()
    assert metrics(pipeline, "drop")["kept_layers"] == [1, 4]


def test_no_validation_split_means_no_validation_loss(tmp_path, tiny_llama):
    root = make_pipeline(
        tmp_path, tiny_llama(), {"drop": {"kind": "depth", "drop_layers": [1]}}, validation_tokens=0
    )
    run_stage("prune", "drop", root)
    assert "val_loss" not in metrics(root, "drop")


# --------------------------------------------------------------------------------------------
# bad input: a clear error, exit 1, no traceback, nothing written — before the model is loaded

BAD = [
    (
        {"w": {"kind": "width", "target_hidden_size": 80}},
        "w",
        "target_hidden_size is 80, but the model's size is only 64",
    ),
    ({"w": {"kind": "width", "target_ffn_hidden_size": 128}}, "w", "nothing would be pruned"),
    (
        {"w": {"kind": "width", "target_num_attention_heads": 3}},
        "w",
        "cannot be split evenly over 2 query groups",
    ),
    (
        {"w": {"kind": "width", "target_hidden_size": 50}},
        "w",
        "hidden size (50) is not a multiple of the number of attention heads (4)",
    ),
    (
        {"w": {"kind": "width", "target_ffn_hidden_size": 64}},
        "w",
        "activations.safetensors not found",
    ),
    ({"d": {"kind": "depth", "drop_layers": [2, 5]}}, "d", "layers [5] are out of range"),
    (
        {"d": {"kind": "depth", "target_num_layers": 4}},
        "d",
        "target_num_layers is 4, but the model has 4 layers",
    ),
    (
        {"d": {"kind": "depth", "target_num_layers": 2, "calibration_samples": 1000}},
        "d",
        "prune.d.calibration_samples needs 1000 windows of 16 tokens, but train_text_document has only",
    ),
    (
        {"w": {"kind": "width", "target_hidden_size": 32, "calibration_samples": 1000}},
        None,
        "prune.w.calibration_samples needs 1000 windows",
    ),
]


@pytest.fixture
def refuse_model_loading(monkeypatch):
    from minispec.engines.torch import modeling

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(modeling, "load_model", fail)


@pytest.mark.parametrize(("prune", "variant", "message"), BAD)
def test_bad_input_fails_clearly_before_loading_the_model(
    tmp_path, tiny_llama, monkeypatch, refuse_model_loading, prune, variant, message
):
    root = make_pipeline(tmp_path, tiny_llama(), prune, train_tokens=400)
    monkeypatch.chdir(root)
    args = ["stage", "prune", variant] if variant else ["stage", "importance"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert (
        not (root / "models" / "pruned").exists()
        and not (root / layout.width_importance_path()).exists()
    )


def test_unsupported_architecture_is_refused_by_both_stages(
    tmp_path, tiny_llama, monkeypatch, refuse_model_loading
):
    root = make_pipeline(tmp_path, tiny_llama(), {"w": {"kind": "width", "target_hidden_size": 32}})
    config_file = root / layout.TEACHER_DIR / "config.json"
    config_file.write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "n_embd": 64,
                "n_layer": 2,
                "n_head": 4,
            }
        )
    )
    monkeypatch.chdir(root)
    for args in (["stage", "importance"], ["stage", "prune", "w"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1
        assert (
            "unsupported architecture 'GPT2LMHeadModel'" in result.output
            and "Traceback" not in result.output
        )


def test_unknown_variant_is_refused(tmp_path, tiny_llama):
    root = tmp_path
    write_params(root, base_spec({"drop": {"kind": "depth", "drop_layers": [1]}}))
    from minispec.errors import StageError

    with pytest.raises(StageError, match="'nope' is not in the spec"):
        run_stage("prune", "nope", root)
