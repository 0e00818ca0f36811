"""Cached teacher logits: the sparse loss, the record format, the stage and the distill stage
reading it (one process, two gloo processes, kill -9 and resume), and its fingerprint check."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import train_support as ts

from minispec import layout
from minispec.engines.torch import checkpointing
from minispec.engines.torch.distributed import DistContext
from minispec.engines.torch.losses import ForwardKLLoss, logits_objective, make_divergence
from minispec.engines.torch.sparse_kd import from_dense, sparse_logits_objective
from minispec.engines.torch.teacher_logits import (
    TeacherLogits,
    decode_window,
    distill_windows,
    encode_window,
    index_bits,
    pack_bits,
    unpack_bits,
)
from minispec.engines.torch.train import BatchPlan, TrainConfig
from minispec.engines.torch.windows import TokenWindows

VOCAB = 50


# ---- the sparse loss --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logits_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sparse_loss_is_the_dense_loss_when_k_is_the_vocabulary(kind, temperature):
    torch.manual_seed(0)
    student = torch.randn(2, 6, VOCAB + 14, requires_grad=True)  # padded embedding rows
    teacher = torch.randn(2, 6, VOCAB + 14) * 3
    labels = torch.randint(0, VOCAB, (2, 6))
    labels[0, 2] = -100
    divergence = make_divergence(kind, temperature, vocab_size=VOCAB)
    options = {"kd_weight": 0.7, "ce_weight": 0.3, "normalizer": 11.0, "vocab_size": VOCAB}

    dense = logits_objective(student, teacher, labels, divergence, **options)
    (dense_grad,) = torch.autograd.grad(dense[0], student)
    sparse = sparse_logits_objective(
        student, from_dense(teacher, VOCAB, VOCAB), labels, divergence, chunk_tokens=5, **options
    )
    (sparse_grad,) = torch.autograd.grad(sparse[0], student)

    for a, b in zip(dense, sparse, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_grad, sparse_grad, rtol=1e-5, atol=1e-7)
    assert sparse_grad[..., VOCAB:].abs().max() == 0  # padded columns get no gradient


class _AutogradForwardKL(ForwardKLLoss):
    """Forward KL differentiated by autograd (the sparse loss's closed form is only for its type)."""


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_closed_form_gradient_of_the_bucket_kl_matches_autograd(temperature):
    torch.manual_seed(1)
    student = torch.randn(3, 4, VOCAB, requires_grad=True)
    cached = from_dense(torch.randn(3, 4, VOCAB) * 2, 8)
    labels = torch.randint(0, VOCAB, (3, 4))
    results = []
    for divergence in (ForwardKLLoss(temperature), _AutogradForwardKL(temperature)):
        total, kd, ce = sparse_logits_objective(
            student, cached, labels, divergence, kd_weight=0.6, ce_weight=0.4, normalizer=12.0
        )
        (grad,) = torch.autograd.grad(total, student)
        results.append((total, kd, grad))
    (a_total, a_kd, a_grad), (b_total, b_kd, b_grad) = results
    torch.testing.assert_close(a_total, b_total)
    torch.testing.assert_close(a_grad, b_grad, rtol=1e-5, atol=1e-7)
    assert a_kd > 0


def test_top_k_bucket_kl_at_t1_is_the_kl_of_the_collapsed_distributions():
    """K < V, T = 1: the loss is KL between teacher and student collapsed to top-k + tail."""
    torch.manual_seed(2)
    student, teacher = torch.randn(1, 3, VOCAB), torch.randn(1, 3, VOCAB) * 2
    k = 5
    cached = from_dense(teacher, k)
    _, kd, _ = sparse_logits_objective(
        student, cached, torch.zeros(1, 3, dtype=torch.long), ForwardKLLoss(),
        kd_weight=1.0, ce_weight=0.0, normalizer=1.0,
    )  # fmt: skip
    expected = 0.0
    for position in range(3):
        q = teacher[0, position].softmax(-1).double()
        p = student[0, position].softmax(-1).double()
        top = cached.indices[0, position]
        rest = torch.ones(VOCAB, dtype=torch.bool)
        rest[top] = False
        qb = torch.cat([q[top], q[rest].sum(0, keepdim=True)])
        pb = torch.cat([p[top], p[rest].sum(0, keepdim=True)])
        expected += float((qb * (qb.log() - pb.log())).sum())
    assert float(kd) == pytest.approx(expected, rel=1e-4)


# ---- records ----------------------------------------------------------------------------------


def test_bit_packing_round_trips_17_bit_ids():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 17, size=1001)
    assert index_bits(49152) == 16 and index_bits(128256) == 17 and index_bits(2) == 1
    packed = pack_bits(ids, 17)
    assert len(packed) == (1001 * 17 + 7) // 8
    assert np.array_equal(unpack_bits(packed, 17, 1001), ids)


def test_a_record_keeps_ids_and_tail_exactly_and_values_as_bf16():
    torch.manual_seed(3)
    cached = from_dense(torch.randn(16, 300) * 4, 32)
    record = encode_window(cached.indices, cached.logprobs, cached.tail, index_bits(300))
    indices, logprobs, tail = decode_window(record, 16, 32, index_bits(300))
    assert np.array_equal(indices, cached.indices.numpy())
    assert np.array_equal(tail, cached.tail.numpy())
    assert np.array_equal(logprobs, cached.logprobs.to(torch.bfloat16).float().numpy())
    raw = 16 * 32 * (9 / 8 + 2) + 16 * 4
    assert len(record) < raw  # compressed


def test_the_cached_windows_are_every_window_of_every_step_on_every_rank():
    cfg = TrainConfig(
        stage="distill@x", section="distill", steps=7, global_batch_size=6, micro_batch_size=1,
        seq_length=8, lr=1e-3, min_lr=1e-4, warmup_steps=0, val_interval=7, val_batches=1,
        checkpoint_interval=7, seed=11,
    )  # fmt: skip
    count = 17  # more samples (42) than windows: the run wraps into a second, reshuffled epoch
    cached = set(distill_windows(count, cfg.steps * cfg.global_batch_size, cfg.seed).tolist())
    for world in (1, 2, 3):
        read = set()
        for rank in range(world):
            plan = BatchPlan(count, cfg, DistContext(world_size=world, rank=rank))
            for step in range(cfg.steps):
                read.update(plan.windows_for_step(step))
        assert read == cached
    assert distill_windows(100, 10, 11).tolist() == sorted(
        BatchPlan(100, TrainConfig(**{**cfg.__dict__, "steps": 1, "global_batch_size": 10}),
                  DistContext()).windows_for_step(0)
    )  # fmt: skip


# ---- the stages on a tiny real pipeline -------------------------------------------------------

STEPS = 6


def cached_spec(top_k: int, **distill) -> dict:
    settings = {
        "steps": STEPS,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "val_interval": 3,
        "val_batches": 1,
        "loss": {"kind": "logits_kl", "temperature": 1.0, "alpha": 0.8},
    }
    if top_k:
        settings["teacher_logits"] = {"top_k": top_k}
    return ts.base_spec(finetune=None, distill={**settings, **distill})


def set_spec(root: Path, spec: dict) -> None:
    ts.write_params(root, spec)


def run_ok(root: Path, name: str, variant: str | None = None):
    done = ts.run_stage_process(root, name, variant, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, wikitext_dir):
    """A pipeline directory with a full-vocabulary cache (K = V = 256) built by one process."""
    torch.set_num_threads(1)
    tokenizer = ts.make_tokenizer(wikitext_dir)
    root = tmp_path_factory.mktemp("teacher-logits") / "base"
    ts.make_pipeline(root, wikitext_dir, tokenizer, cached_spec(len(tokenizer)))
    run_ok(root, "teacher_logits")
    return root


def copy(base: Path, target: Path) -> Path:
    return shutil.copytree(base, target, copy_function=shutil.copy2)


@pytest.mark.slow
def test_distilling_from_a_full_vocabulary_cache_follows_online_distillation(pipeline, tmp_path):
    manifest = json.loads((pipeline / layout.TEACHER_LOGITS_DIR / "manifest.json").read_text())
    assert manifest["windows"] == STEPS * 4 and manifest["top_k"] == 256
    cached = copy(pipeline, tmp_path / "cached")
    run_ok(cached, "distill", "small")
    online = copy(pipeline, tmp_path / "online")
    set_spec(online, cached_spec(0))
    run_ok(online, "distill", "small")
    name = "distill@small"
    for series in ("loss", "kd_loss", "ce_loss"):
        path = f"{layout.log_dir(name)}/plots/metrics/train/{series}.tsv"
        a, b = ts.curve(cached / path, series), ts.curve(online / path, series)
        assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1))
        for (_, x), (_, y) in zip(a, b, strict=True):
            # the only difference: the cached log-probabilities are rounded to bf16
            assert x == pytest.approx(y, rel=2e-2, abs=1e-3), (series, a, b)
    a = ts.curve(cached / layout.val_curve_path(name))
    b = ts.curve(online / layout.val_curve_path(name))
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-3)
    metrics = json.loads((cached / layout.metrics_path(name)).read_text())
    assert metrics["final_kd_loss"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data": {"source": "unused-data", "seq_length": 16}}, "data.seq_length: the cache has 32, this run 16"),
        ({"seed": 8}, "seed (window order): the cache has 7, this run 8"),
        ({"distill": {"steps": STEPS + 4}}, "this run reads 16 window(s) the cache lacks"),
    ],
    ids=["seq-length", "seed", "more-steps"],
)  # fmt: skip
def test_a_cache_made_for_other_inputs_is_refused_with_what_differs(
    pipeline, tmp_path, change, named
):
    root = copy(pipeline, tmp_path / "run")
    spec = json.loads((root / "params.yaml").read_text())
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    set_spec(root, spec)
    done = ts.run_stage_process(root, "distill", "small", timeout=600)
    assert done.returncode != 0
    assert "were made for other inputs" in done.stderr and named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (root / layout.student_dir("small")).exists()


@pytest.mark.slow
def test_a_student_with_another_tokenizer_is_refused(pipeline, tmp_path, wikitext_dir):
    root = copy(pipeline, tmp_path / "run")
    swapped = ts.make_tokenizer(wikitext_dir, swap=True)
    student = ts.tiny_teacher(swapped, layers=1, seed=3)
    shutil.rmtree(root / layout.pruned_dir("small"))
    ts.save_hf(student, swapped, root / layout.pruned_dir("small"))
    done = ts.run_stage_process(root, "distill", "small", timeout=600)
    assert done.returncode != 0
    assert "tokenizer: the cache has" in done.stderr, done.stderr


@pytest.mark.slow
def test_changed_tokens_are_refused(pipeline, tmp_path):
    root = copy(pipeline, tmp_path / "run")
    bin_path = root / f"{layout.tokens_prefix('train')}.bin"
    manifest = json.loads((root / layout.TEACHER_LOGITS_DIR / "manifest.json").read_text())
    cache = TeacherLogits(root / layout.TEACHER_LOGITS_DIR)
    first = int(cache.windows[0]) * manifest["seq_length"]
    data = bytearray(bin_path.read_bytes())
    itemsize = TokenWindows(root / layout.tokens_prefix("train"), 32).tokens.dtype.itemsize
    data[first * itemsize] ^= 1  # one token id of a cached window
    bin_path.write_bytes(bytes(data))
    done = ts.run_stage_process(root, "distill", "small", timeout=600)
    assert done.returncode != 0
    assert "train data (token ids of the cached windows): the tokens differ" in done.stderr


@pytest.mark.slow
def test_two_gloo_processes_write_and_read_their_shares(pipeline, tmp_path):
    """teacher_logits on 2 ranks writes the same records as on 1; distill on 2 ranks, each
    reading its own windows, follows the 1-rank run."""
    single = copy(pipeline, tmp_path / "single")
    run_ok(single, "distill", "small")
    multi = copy(pipeline, tmp_path / "multi")
    shutil.rmtree(multi / layout.TEACHER_LOGITS_DIR)
    spec = json.loads((multi / "params.yaml").read_text())
    spec["resources"].update({"devices": 2, "strategy": "ddp"})
    set_spec(multi, spec)
    done = ts.run_group(ts.torchrun_stage_command("teacher_logits"), multi, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    one = TeacherLogits(pipeline / layout.TEACHER_LOGITS_DIR)
    two = TeacherLogits(multi / layout.TEACHER_LOGITS_DIR)
    assert len(two.manifest["shards"]) == 2
    assert np.array_equal(one.windows, two.windows)
    a, b = one.batch(one.windows), two.batch(one.windows)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.tail, b.tail)
    assert torch.equal(a.logprobs, b.logprobs)

    done = ts.run_group(ts.torchrun_stage_command("distill", "small"), multi, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    name = "distill@small"
    for path in (layout.train_curve_path(name), layout.val_curve_path(name)):
        x, y = ts.curve(single / path), ts.curve(multi / path)
        assert [s for s, _ in x] == [s for s, _ in y]
        assert max(abs(p - q) for (_, p), (_, q) in zip(x, y, strict=True)) < 1e-5
    from minispec.fsio import read_metrics_record

    assert read_metrics_record(multi, name)["world_size"] == 2  # a setting: in the info file


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_exactly(tmp_path, wikitext_dir):
    torch.set_num_threads(1)
    tokenizer = ts.make_tokenizer(wikitext_dir)
    base = tmp_path / "base"
    spec = cached_spec(16, steps=40, checkpoint_interval=5, val_interval=20)
    ts.make_pipeline(base, wikitext_dir, tokenizer, spec)
    run_ok(base, "teacher_logits")
    name = "distill@small"

    whole = copy(base, tmp_path / "whole")
    run_ok(whole, "distill", "small")

    killed = copy(base, tmp_path / "killed")
    process = subprocess.Popen(
        ts.stage_command("distill", "small"),
        cwd=killed,
        env=ts.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = killed / layout.checkpoint_dir(name)
    train_log = killed / layout.train_curve_path(name)
    deadline = time.monotonic() + 300
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
    assert not (killed / layout.student_dir("small")).exists(), "finished before the kill"
    saved, _ = checkpointing.latest(checkpoints)
    assert saved is not None and 0 < saved.step < 40

    resumed = run_ok(killed, "distill", "small")
    assert f"resuming from {saved.path}" in resumed.stdout
    for path in (layout.train_curve_path(name), layout.val_curve_path(name)):
        assert ts.curve(killed / path) == ts.curve(whole / path), path  # bitwise
    a = ts.curve(whole / f"{layout.log_dir(name)}/plots/metrics/train/kd_loss.tsv", "kd_loss")
    b = ts.curve(killed / f"{layout.log_dir(name)}/plots/metrics/train/kd_loss.tsv", "kd_loss")
    assert a == b


@pytest.mark.slow
def test_the_stage_refuses_a_spec_without_the_block(pipeline, tmp_path):
    root = copy(pipeline, tmp_path / "run")
    set_spec(root, cached_spec(0))
    done = ts.run_stage_process(root, "teacher_logits", timeout=600)
    assert done.returncode != 0
    assert "no distill.teacher_logits block" in done.stderr
    assert (root / layout.TEACHER_LOGITS_DIR / "manifest.json").exists()  # nothing lost
