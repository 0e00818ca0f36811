"""Exact resume after kill -9, and checkpoints that are never left half-written (real processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import train_support as ts

from minispec import layout
from minispec.engines.torch import checkpointing
from minispec.fsio import read_metrics_record


@pytest.fixture(scope="module")
def resume_pipeline(tmp_path_factory, wikitext_dir):
    """A distillation with everything that has state: a width-different student (a trained
    projection for the intermediate loss), KD + CE mixing, warmup and cosine decay."""
    torch.set_num_threads(1)
    tokenizer = ts.make_tokenizer(wikitext_dir)
    root = tmp_path_factory.mktemp("resume") / "base"
    loss = {
        "kind": "logits_kl",
        "temperature": 2.0,
        "alpha": 0.7,
        "intermediate": [{"student_layer": 1, "teacher_layer": 2}],
    }
    spec = ts.base_spec(
        finetune=None,
        distill={
            "steps": 60,
            "global_batch_size": 4,
            "micro_batch_size": 2,
            "val_interval": 20,
            "val_batches": 1,
            "checkpoint_interval": 5,
            "loss": loss,
        },
    )
    ts.make_pipeline(root, wikitext_dir, tokenizer, spec)
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
    return root


def _copy(base: Path, target: Path) -> Path:
    shutil.copytree(base, target, copy_function=shutil.copy2)  # keep mtimes: same inputs
    return target


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_kill_9_then_rerun_gives_the_uninterrupted_curve_bitwise(tmp_path, resume_pipeline):
    stage, variant = "distill", "small"
    name = "distill@small"

    whole = _copy(resume_pipeline, tmp_path / "whole")
    done = ts.run_stage_process(whole, stage, variant, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = _copy(resume_pipeline, tmp_path / "killed")
    process = subprocess.Popen(
        ts.stage_command(stage, variant),
        cwd=killed,
        env=ts.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = killed / layout.checkpoint_dir(name)
    train_log = killed / layout.train_curve_path(name)
    deadline = time.monotonic() + 300
    # kill -9 two steps after the first checkpoint: the logs then run ahead of the checkpoint
    while time.monotonic() < deadline and process.poll() is None:
        if (
            list(checkpoints.glob("step-*"))
            and train_log.exists()
            and len(train_log.read_text().splitlines()) >= 1 + 7
        ):
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / layout.student_dir(variant)).exists(), (
        "the run finished before it could be killed"
    )
    saved, _ = checkpointing.latest(checkpoints)
    assert saved is not None and 0 < saved.step < 60
    logged_before = len(ts.read_tsv(train_log))
    assert logged_before > saved.step

    resumed = ts.run_stage_process(killed, stage, variant, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {saved.path}" in resumed.stdout

    for curve_path in (layout.train_curve_path(name), layout.val_curve_path(name)):
        assert ts.curve(killed / curve_path) == ts.curve(whole / curve_path), (
            curve_path
        )  # bitwise floats
    for series in ("kd_loss", "ce_loss", "intermediate_loss", "lr"):
        path = f"{layout.log_dir(name)}/plots/metrics/train/{series}.tsv"
        assert ts.curve(killed / path, series) == ts.curve(whole / path, series), series
    a, b = (
        _weights(whole / layout.student_dir(variant)),
        _weights(killed / layout.student_dir(variant)),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    metrics = read_metrics_record(killed, name)
    assert metrics["resumed_from_step"] == saved.step and metrics["steps"] == 60
    print(
        f"killed at checkpoint step {saved.step} with {logged_before} steps logged; resumed to 60, curves identical"
    )


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    sys.path[:0] = [{tests!r}, {support!r}]
    import torch
    import train_support as ts
    from minispec.engines.torch import checkpointing
    from minispec.engines.torch.train import Trainer, TrainConfig
    from minispec.errors import StageError

    torch.set_num_threads(1)
    tokenizer = ts.make_tokenizer(Path({wikitext!r}))
    cfg = TrainConfig(stage="finetune", section="finetune", steps=4, global_batch_size=2, micro_batch_size=2,
                      seq_length=8, lr=1e-3, min_lr=1e-4, warmup_steps=0, val_interval=2, val_batches=1, checkpoint_interval=2)
    trainer = Trainer(cfg, ts.tiny_teacher(tokenizer).train(), None, vocab_size=256)
    trainer.train_step(torch.randint(0, 256, (2, 9)), 1e-3)
    root = Path({root!r})
    trainer.save_checkpoint(root, 2, {{"fingerprint": "f", "history": {{"train": [], "val": []}}}})
    trainer.train_step(torch.randint(0, 256, (2, 9)), 1e-3)
    # the disk is "full": no file may grow beyond 64 KiB (the model file needs ~400 KiB)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
    try:
        trainer.save_checkpoint(root, 4, {{"fingerprint": "f", "history": {{"train": [], "val": []}}}})
    except StageError as exc:
        print("ERROR:", exc.render())
    else:
        print("NO ERROR")
    """
)


def test_full_disk_leaves_no_checkpoint_that_looks_complete(tmp_path, wikitext_dir):
    root = tmp_path / "checkpoints"
    script = FULL_DISK_SCRIPT.format(
        tests=str(ts.REPO / "tests"),
        support=str(Path(ts.__file__).parent),
        wikitext=str(wikitext_dir),
        root=str(root),
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=ts.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR: error: could not write the finetune checkpoint at step 4" in result.stdout, (
        result.stdout
    )
    assert "File too large" in result.stdout and "free disk space" in result.stdout
    assert sorted(p.name for p in root.iterdir()) == [
        "step-00000002"
    ]  # no partial left, the old one kept
    checkpoint, notes = checkpointing.latest(root)
    assert checkpoint.step == 2 and notes == []
    assert set(checkpoint.tensors(checkpointing.MODEL_FILE)) and set(
        checkpoint.tensors(checkpointing.OPTIMIZER_FILE)
    )


def test_damaged_checkpoint_is_skipped(tmp_path):
    root = tmp_path
    partial = checkpointing.begin(root, 2)
    checkpointing.write_tensors(partial / checkpointing.MODEL_FILE, {"w": torch.ones(100)})
    checkpointing.commit(partial, root, 2, {"fingerprint": "f"})
    partial = checkpointing.begin(root, 4)  # a save interrupted before its commit
    checkpointing.write_tensors(partial / checkpointing.MODEL_FILE, {"w": torch.ones(100)})
    # only a .partial directory exists for step 4, which is never loaded
    assert [c.name for c in checkpointing.complete_dirs(root)] == ["step-00000002"]
    # a truncated file in a committed checkpoint is detected by its recorded size
    shutil.copytree(root / "step-00000002", root / "step-00000006")
    state = json.loads((root / "step-00000006" / "state.json").read_text())
    (root / "step-00000006" / "state.json").write_text(json.dumps({**state, "step": 6}))
    with open(root / "step-00000006" / checkpointing.MODEL_FILE, "r+b") as handle:
        handle.truncate(50)
    checkpoint, notes = checkpointing.latest(root)
    assert checkpoint.step == 2 and "model.safetensors is missing or truncated" in notes[0]


def test_streamed_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file

    tensors = {
        "matrix": torch.randn(3, 5),
        "bf16": torch.randn(7).to(torch.bfloat16),
        "scalar": torch.tensor(3.0),  # AdamW's step
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(5),
        "transposed": torch.randn(4, 6).t(),  # not contiguous
    }
    checkpointing.write_tensors(tmp_path / "t.safetensors", tensors)
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
