"""Several processes (torchrun, gloo on CPU): the loss curve of 2 ranks equals 1 rank's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import train_support as ts

from minispec import layout
from minispec.fsio import read_metrics_record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory, wikitext_dir):
    torch.set_num_threads(1)
    tokenizer = ts.make_tokenizer(wikitext_dir)
    root = tmp_path_factory.mktemp("dist") / "base"
    loss = {
        "alpha": 0.8,
        "temperature": 2.0,
        "intermediate": [{"student_layer": 2, "teacher_layer": 3}],
    }
    distill = {
        "steps": 6,
        "global_batch_size": 8,
        "micro_batch_size": 2,
        "val_interval": 3,
        "val_batches": 1,
        "loss": loss,
    }
    spec = ts.base_spec(finetune=None, distill=distill)
    ts.make_pipeline(root, wikitext_dir, tokenizer, spec)
    # a narrower student: projections train, and FSDP shards parameters of uneven sizes
    narrow = ts.tiny_teacher(
        tokenizer,
        layers=2,
        seed=5,
        hidden_size=48,
        num_attention_heads=3,
        num_key_value_heads=1,
        intermediate_size=96,
    )
    ts.save_hf(narrow, tokenizer, root / layout.pruned_dir("small"))
    single = shutil.copytree(root, root.parent / "single", copy_function=shutil.copy2)
    result = ts.run_stage_process(single, "distill", "small", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, single


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_match_one_with_the_same_global_batch(base, strategy, tmp_path):
    root, single = base
    multi = shutil.copytree(root, tmp_path / strategy, copy_function=shutil.copy2)
    spec = json.loads((multi / "params.yaml").read_text())
    spec["resources"].update({"devices": 2, "strategy": strategy})
    ts.write_params(multi, spec)
    command = ts.torchrun_stage_command("distill", "small")
    result = ts.run_group(command, multi, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    name = "distill@small"
    metrics = read_metrics_record(multi, name)
    assert metrics["world_size"] == 2
    for path in (layout.train_curve_path(name), layout.val_curve_path(name)):
        one, two = ts.curve(single / path), ts.curve(multi / path)
        assert [s for s, _ in one] == [s for s, _ in two]
        difference = max(abs(a - b) for (_, a), (_, b) in zip(one, two, strict=True))
        assert difference < 1e-5, (path, one, two)
    for series in ("kd_loss", "intermediate_loss"):
        path = f"{layout.log_dir(name)}/plots/metrics/train/{series}.tsv"
        for (_, a), (_, b) in zip(
            ts.curve(single / path, series), ts.curve(multi / path, series), strict=True
        ):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6)

    from safetensors.torch import load_file

    one = load_file(str(single / layout.student_dir("small") / "model.safetensors"))
    two = load_file(str(multi / layout.student_dir("small") / "model.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)
    # rank 0 alone wrote: one event file, one checkpoint
    assert len(list((multi / layout.tensorboard_dir(name)).iterdir())) == 1
    assert [p.name for p in (multi / layout.checkpoint_dir(name)).iterdir()] == ["step-00000006"]

    # a rerun loads the full-state checkpoint into the sharded/replicated model and ends the same
    again = ts.run_group(command, multi, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert read_metrics_record(multi, name)["resumed_from_step"] == 6
    reloaded = load_file(str(multi / layout.student_dir("small") / "model.safetensors"))
    assert all(torch.equal(reloaded[key], two[key]) for key in two)
