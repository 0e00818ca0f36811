"""evaluate.harness: lm-evaluation-harness on a loaded model, a local task written here, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from real_pipeline import TASK_NAME, write_task  # noqa: E402
from train_support import make_tokenizer, tiny_teacher  # noqa: E402

from minispec.engines.torch import harness  # noqa: E402
from minispec.errors import StageError  # noqa: E402
from minispec.spec.model import HarnessSpec  # noqa: E402

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def model_and_tokenizer(wikitext_dir):
    tokenizer = make_tokenizer(wikitext_dir)
    return tiny_teacher(tokenizer, layers=2, seed=3).eval(), tokenizer


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) as lm-eval scores a choice: the whole string tokenized
    once, the continuation's tokens being those after the context's."""
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    prefix = tokenizer(context, add_special_tokens=False).input_ids
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return picked[len(prefix) - 1 :].sum().item()


def test_local_task_scores_the_loaded_model(tmp_path, wikitext_dir, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    write_task(tmp_path / "tasks", wikitext_dir, questions=8)
    spec = HarnessSpec(tasks=[TASK_NAME], include_path="tasks", num_fewshot=0, batch_size=4)
    results = harness.run_tasks(model, tokenizer, spec, tmp_path, seed=0)
    scores = harness.scores(results)

    # the accuracy lm-eval reports is the argmax of the continuation log-likelihoods
    rows = [json.loads(line) for line in (tmp_path / "tasks" / "questions.jsonl").open()]
    correct = 0
    for row in rows:
        lls = [
            continuation_logprob(model, tokenizer, row["context"], " " + choice)  # " ": delimiter
            for choice in row["choices"]
        ]
        correct += int(max(range(len(lls)), key=lls.__getitem__) == row["answer"])
    assert scores[TASK_NAME]["acc"] == pytest.approx(correct / len(rows))
    assert 0.0 <= scores[TASK_NAME]["acc_norm"] <= 1.0 and "acc_stderr" in scores[TASK_NAME]
    assert all(isinstance(v, float) for v in scores[TASK_NAME].values())  # numbers only
    info = harness.provenance(results)
    assert info["tasks"][TASK_NAME]["samples"] == len(rows)
    assert info["tasks"][TASK_NAME]["num_fewshot"] == 0 and info["lm_eval_version"]


def test_limit_and_missing_directory(tmp_path, wikitext_dir, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    write_task(tmp_path / "tasks", wikitext_dir, questions=8)
    spec = HarnessSpec(tasks=[TASK_NAME], include_path="tasks", limit=3)
    results = harness.run_tasks(model, tokenizer, spec, tmp_path, seed=0)
    assert harness.provenance(results)["tasks"][TASK_NAME]["samples"] == 3

    missing = HarnessSpec(tasks=[TASK_NAME], include_path="nowhere")
    with pytest.raises(StageError, match="include_path nowhere: no such directory"):
        harness.run_tasks(model, tokenizer, missing, tmp_path, seed=0)


def test_metric_names_and_numbers_only():
    results = {
        "results": {
            "t": {
                "alias": "t",
                "sample_len": 5,
                "acc,none": 0.5,
                "acc_stderr,none": "N/A",
                "exact_match,strict-match": 1.0,
            }
        }
    }
    assert harness.scores(results) == {"t": {"acc": 0.5, "exact_match_strict-match": 1.0}}


def test_the_shipped_example_task_runs_offline(tmp_path, model_and_tokenizer):
    """examples/harness (the README's local task) loads and scores all its questions."""
    model, tokenizer = model_and_tokenizer
    repo = Path(__file__).resolve().parents[3]
    spec = HarnessSpec(tasks=["everyday_mc"], include_path=str(repo / "examples" / "harness"))
    results = harness.run_tasks(model, tokenizer, spec, tmp_path, seed=0)
    lines = (repo / "examples" / "harness" / "questions.jsonl").read_text().splitlines()
    assert harness.provenance(results)["tasks"]["everyday_mc"]["samples"] == len(lines) == 16
    acc = harness.scores(results)["everyday_mc"]["acc"]
    assert acc * 16 == pytest.approx(round(acc * 16))  # a count of 16 answers
