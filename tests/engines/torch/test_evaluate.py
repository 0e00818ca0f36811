"""The evaluate stage against direct computations with the models themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import train_support as ts

from minispec import layout
from minispec.engines.torch.evaluate import evaluation_windows, markdown_table, models_to_evaluate
from minispec.engines.torch.windows import TokenWindows
from minispec.fsio import read_metrics_record
from minispec.spec.model import Spec
from minispec.stage import run_stage


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_models_to_evaluate_follow_the_final_model_of_each_variant():
    spec = Spec.model_validate(
        ts.base_spec(
            prune={
                "a": {"kind": "depth", "drop_layers": [1]},
                "b": {"kind": "depth", "drop_layers": [2]},
            },
            distill={"students": ["a"]},
        )
    )
    assert models_to_evaluate(spec) == [
        ("teacher", None, layout.TEACHER_DIR),
        ("teacher_corrected", None, layout.CORRECTED_TEACHER_DIR),
        ("students", "a", layout.student_dir("a")),
    ]
    no_training = Spec.model_validate(ts.base_spec(finetune=None, distill=None))
    assert models_to_evaluate(no_training) == [
        ("teacher", None, layout.TEACHER_DIR),
        ("students", "small", layout.pruned_dir("small")),
    ]


def test_evaluation_windows():
    np.testing.assert_array_equal(evaluation_windows(5, None, 1), np.arange(5))
    np.testing.assert_array_equal(evaluation_windows(5, 10, 1), np.arange(5))
    chosen = evaluation_windows(100, 7, 1)
    assert len(set(chosen)) == 7 and list(chosen) == sorted(chosen)
    np.testing.assert_array_equal(chosen, evaluation_windows(100, 7, 1))


def test_evaluate_stage_matches_direct_computation(tmp_path, wikitext_dir):
    tokenizer = ts.make_tokenizer(wikitext_dir)
    root = tmp_path / "pipeline"
    spec = ts.base_spec(
        finetune=None,
        evaluate={
            "max_windows": 6,
            "batch_size": 4,
            "max_new_tokens": 5,
            "prompts": ["The history of", "In 1990 the"],
        },
    )
    teacher = ts.tiny_teacher(tokenizer)
    ts.make_pipeline(root, wikitext_dir, tokenizer, spec, teacher=teacher)
    student = ts.drop_layers(teacher, [0, 2])
    ts.save_hf(
        student, tokenizer, root / layout.student_dir("small")
    )  # stands for a distilled student

    run_stage("evaluate", None, root)
    numbers = json.loads((root / layout.metrics_path("evaluate")).read_text())
    assert "settings" not in numbers and "samples" not in numbers["teacher"]  # numbers only
    results = read_metrics_record(root, "evaluate")  # with the settings and samples beside them
    assert set(results) == {"teacher", "students", "settings"} and set(results["students"]) == {
        "small"
    }

    from minispec.engines.torch.modeling import count_parameters

    for metrics, model in ((results["teacher"], teacher), (results["students"]["small"], student)):
        model.eval()
        counts = count_parameters(model)
        assert (metrics["params_total"], metrics["params_non_embedding"]) == (
            counts["total"],
            counts["non_embedding"],
        )
        for split in ("validation", "test"):
            windows = TokenWindows(root / layout.tokens_prefix(split), ts.SEQ)
            indices = evaluation_windows(len(windows), 6, spec["seed"])
            batch = windows.batch(indices)
            with torch.no_grad():
                logits = model(input_ids=batch[:, :-1]).logits
            expected = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            ).item()
            assert metrics[f"{split}_loss"] == pytest.approx(expected, rel=1e-5)
            assert metrics[f"{split}_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
            assert metrics["tokens_evaluated"][split] == 6 * ts.SEQ
        assert metrics["generated_tokens"] == 2 * 5 and metrics["tokens_per_second"] > 0
        assert metrics["latency_seconds"] > 0 and metrics["time_to_first_token_seconds"] > 0
        for sample in metrics["samples"]:
            inputs = tokenizer(sample["prompt"], return_tensors="pt")
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=5,
                    min_new_tokens=5,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                )
            assert sample["completion"] == tokenizer.decode(
                output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )

    table = (root / layout.EVALUATE_TABLE).read_text()
    assert table == markdown_table(results)
    assert "| student `small` |" in table and "validation loss" in table and "test ppl" in table
    assert f"{results['students']['small']['validation_loss']:.4f}" in table
