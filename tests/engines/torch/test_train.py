"""The trainer: schedule, data order, gradient accumulation, stages end to end, logs, errors."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import train_support as ts

from minispec import layout
from minispec.engines.torch import checkpointing
from minispec.engines.torch.distributed import DistContext
from minispec.engines.torch.train import (
    BatchPlan,
    LossConfig,
    Trainer,
    checkpoint_layers,
    fit,
    lr_at,
    validation_windows,
)
from minispec.engines.torch.windows import TokenWindows
from minispec.errors import StageError
from minispec.fsio import read_metrics_record
from minispec.stage import run_stage


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared with other test runs: one thread avoids OpenMP oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(wikitext_dir):
    return ts.make_tokenizer(wikitext_dir)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, wikitext_dir, tokenizer):
    """A tiny teacher that learned something: 80 steps of the finetune stage on WikiText."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher")
    spec = ts.base_spec(finetune={"steps": 80, "val_interval": 40, "lr": 1e-2, "min_lr": 1e-3})
    ts.make_pipeline(root, wikitext_dir, tokenizer, spec)
    run_stage("finetune", None, root)
    from minispec.engines.torch.modeling import load_model

    return load_model(root / layout.CORRECTED_TEACHER_DIR)


config = ts.train_config


# --------------------------------------------------------------------------------------------
# schedule and data order


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = config(steps=10, lr=1.0, min_lr=0.1, warmup_steps=2)
    lrs = [lr_at(step, cfg) for step in range(cfg.steps)]
    assert lrs[:3] == [0.5, 1.0, 1.0]  # linear warmup, then the cosine starts at the peak
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[-1] > 0.1 and lr_at(cfg.steps, cfg) == pytest.approx(0.1)  # min_lr at the end
    assert lr_at(0, config(warmup_steps=0, lr=2.0)) == 2.0


def test_ranks_read_disjoint_slices_of_the_same_global_order():
    cfg = config(global_batch_size=8, micro_batch_size=2)
    one = BatchPlan(100, cfg, DistContext())
    two = [BatchPlan(100, cfg, DistContext(world_size=2, rank=r)) for r in range(2)]
    for step in range(30):  # crosses epochs of 100 windows
        assert two[0].windows_for_step(step) + two[1].windows_for_step(
            step
        ) == one.windows_for_step(step)
    with pytest.raises(
        StageError, match="global_batch_size 8 is not a multiple of micro_batch_size 3"
    ):
        BatchPlan(100, config(micro_batch_size=3), DistContext())
    with pytest.raises(StageError, match="micro_batch_size 4 × 4 device"):
        BatchPlan(100, config(micro_batch_size=4), DistContext(world_size=4))


def test_validation_windows_are_a_fixed_seeded_subset():
    cfg = config(val_batches=2, global_batch_size=8)
    chosen = validation_windows(50, cfg)
    assert len(chosen) == 16 and len(set(chosen)) == 16 and list(chosen) == sorted(chosen)
    np.testing.assert_array_equal(chosen, validation_windows(50, cfg))
    assert len(validation_windows(10, cfg)) == 10  # a small split is used whole


# --------------------------------------------------------------------------------------------
# the step


@pytest.fixture(scope="module")
def windows(tmp_path_factory, wikitext_dir, tokenizer):
    root = tmp_path_factory.mktemp("tokens")
    ts.write_tokens(root, tokenizer, wikitext_dir)
    return TokenWindows(root / layout.tokens_prefix("train"), ts.SEQ), TokenWindows(
        root / layout.tokens_prefix("validation"), ts.SEQ
    )


def _student(teacher):
    return ts.drop_layers(teacher, [0, 3]).train()


def test_gradient_accumulation_matches_one_big_batch(windows, trained_teacher):
    """GBS 8 as 4 micro batches of 2 gives the same updates as one micro batch of 8."""
    train, val = windows
    loss = LossConfig(alpha=0.5, temperature=2.0, intermediate=[(1, 2)])
    results = []
    for micro in (2, 8):
        trainer = Trainer(
            config(micro_batch_size=micro, steps=3, loss=loss),
            _student(trained_teacher),
            copy.deepcopy(trained_teacher),
            vocab_size=256,
        )
        run = fit(trainer, train, val)
        results.append((trainer, run))
    (a, run_a), (b, run_b) = results
    for (name, pa), (_, pb) in zip(
        a.module.named_parameters(), b.module.named_parameters(), strict=True
    ):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)
    losses_a = [r["loss"] for r in run_a.history["train"]]
    losses_b = [r["loss"] for r in run_b.history["train"]]
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    assert set(run_a.history["train"][0]) >= {
        "loss",
        "kd_loss",
        "ce_loss",
        "intermediate_loss",
        "lr",
    }


def test_activation_checkpointing_of_some_layers_gives_the_same_training(windows, trained_teacher):
    """`resources.activation_checkpointing: N` recomputes the first N layers only (True: all,
    more than there are: all); the recompute changes no number of the run."""
    student = _student(trained_teacher)  # 2 layers
    flags = lambda model: [layer.gradient_checkpointing for layer in model.model.layers]  # noqa: E731
    assert checkpoint_layers(copy.deepcopy(student), 0) == 0
    partial = copy.deepcopy(student)
    assert checkpoint_layers(partial, 1) == 1 and flags(partial) == [True, False]
    everything = copy.deepcopy(student)
    assert checkpoint_layers(everything, True) == 2 and flags(everything) == [True, True]
    assert checkpoint_layers(copy.deepcopy(student), 9) == 2

    train, val = windows
    runs = []
    for setting in (False, 1, True):
        trainer = Trainer(
            config(steps=3, activation_checkpointing=setting, loss=LossConfig(alpha=0.5)),
            copy.deepcopy(student),
            copy.deepcopy(trained_teacher),
            vocab_size=256,
        )
        runs.append((trainer, fit(trainer, train, val)))
    (plain, plain_run), *others = runs
    for trainer, run in others:
        assert [r["loss"] for r in run.history["train"]] == pytest.approx(
            [r["loss"] for r in plain_run.history["train"]], rel=1e-6
        )
        for (name, a), (_, b) in zip(
            trainer.module.named_parameters(), plain.module.named_parameters(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_train_loss_is_the_mixed_objective(windows, trained_teacher):
    train, val = windows
    trainer = Trainer(
        config(steps=2, loss=LossConfig(alpha=0.25, temperature=1.0)),
        _student(trained_teacher),
        copy.deepcopy(trained_teacher),
        vocab_size=256,
    )
    record = fit(trainer, train, val).history["train"][0]
    assert record["loss"] == pytest.approx(
        0.25 * record["kd_loss"] + 0.75 * record["ce_loss"], rel=1e-5
    )


def test_validation_loss_is_the_mean_token_cross_entropy(windows, trained_teacher):
    train, val = windows
    cfg = config(val_batches=1, global_batch_size=8, micro_batch_size=4)
    model = copy.deepcopy(trained_teacher)
    trainer = Trainer(cfg, model, None, vocab_size=256)
    indices = validation_windows(len(val), cfg)
    got = trainer.validate(val, indices)
    batch = val.batch(indices)
    with torch.no_grad():
        logits = trained_teacher(input_ids=batch[:, :-1]).logits
        direct = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
    assert got == pytest.approx(direct.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# errors


def _poison_after(model, calls: int, error: Exception | None = None):
    """A forward hook on the first decoder layer: after ``calls`` training forwards, NaN (or raise)."""
    seen = {"n": 0}

    def hook(module, args, output):
        if not module.training:
            return None
        seen["n"] += 1
        if seen["n"] > calls:
            if error is not None:
                raise error
            return output * float("nan")
        return None

    model.model.layers[0].register_forward_hook(hook)


@pytest.mark.parametrize("log_interval", [1, 3])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, windows, trained_teacher, log_interval
):
    train, val = windows
    model = copy.deepcopy(trained_teacher).train()
    _poison_after(model, calls=2 * 4)  # GBS 8 / MBS 4 = 2 forwards per step: step 5 is NaN
    cfg = config(
        stage="finetune",
        section="finetune",
        steps=10,
        checkpoint_interval=2,
        val_interval=100,
        log_interval=log_interval,
    )
    trainer = Trainer(cfg, model, None, vocab_size=256)
    with pytest.raises(StageError, match="training loss became nan at step 5") as info:
        fit(trainer, train, val, checkpoint_root=tmp_path, fingerprint="x")
    assert "step-00000004" in str(info.value) and "finetune.lr" in info.value.hint
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]  # nothing saved after the NaN


def test_out_of_memory_names_micro_batch_size_and_seq_length(windows, trained_teacher):
    train, val = windows
    model = copy.deepcopy(trained_teacher).train()
    _poison_after(
        model,
        calls=0,
        error=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    )
    trainer = Trainer(config(stage="finetune", section="finetune"), model, None, vocab_size=256)
    with pytest.raises(
        StageError, match=r"out of memory .* finetune.micro_batch_size=4 and data.seq_length=32"
    ) as info:
        fit(trainer, train, val)
    assert "gradient accumulation keeps global_batch_size=8" in info.value.hint


# --------------------------------------------------------------------------------------------
# stages end to end


@pytest.fixture
def pipeline(tmp_path, wikitext_dir, tokenizer, trained_teacher):
    def build(spec: dict | None = None, student=None, student_tokenizer=None) -> Path:
        root = tmp_path / "pipeline"
        ts.make_pipeline(root, wikitext_dir, tokenizer, spec, teacher=trained_teacher)
        if student is not None or student_tokenizer is not None:
            student = (
                student
                if student is not None
                else ts.drop_layers(trained_teacher, ts.STUDENT_LAYERS)
            )
            ts.save_hf(student, student_tokenizer or tokenizer, root / layout.pruned_dir("small"))
        return root

    return build


def test_finetune_stage_writes_model_metrics_and_logs(pipeline, capsys):
    root = pipeline(ts.base_spec(finetune={"steps": 8, "val_interval": 4}))
    run_stage("finetune", None, root)

    # where the start-up went, phase by phase, and the whole stage's wall time
    out = capsys.readouterr()
    first = re.search(
        r"\[finetune\] first step done ([\d.]+) s after the process started \((.*)\)", out.out
    )
    assert first, out.out
    phases = dict(part.rsplit(" ", 1) for part in first.group(2).split(", "))
    assert list(phases) == [
        "python and imports",
        "tokenizer and data",
        "models",
        "trainer",
        "logging and resume",
        "validation",
        "first step",
    ]
    assert sum(map(float, phases.values())) == pytest.approx(
        float(first.group(1)), abs=0.4
    )  # each phase rounded
    assert re.search(
        r"\[finetune\] done [\d.]+ s after the process started \(python and CLI [\d.]+, stage imports [\d.]+, run [\d.]+\)",
        out.err,
    )

    from minispec.engines.torch.modeling import count_parameters, load_model

    corrected = load_model(root / layout.CORRECTED_TEACHER_DIR)
    assert count_parameters(corrected) == count_parameters(load_model(root / layout.TEACHER_DIR))
    assert (root / layout.CORRECTED_TEACHER_DIR / "tokenizer.json").exists()

    metrics = read_metrics_record(root, "finetune")
    assert metrics["steps"] == 8 and metrics["tokens"] == 8 * 8 * ts.SEQ
    assert metrics["final_val_loss"] < metrics["initial_val_loss"]
    assert metrics["tokens_per_second"] > 0 and metrics["final_train_loss"] > 0

    train_rows = ts.read_tsv(root / layout.train_curve_path("finetune"))
    assert list(train_rows[0]) == ["timestamp", "step", "loss"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 9))
    val = ts.curve(root / layout.val_curve_path("finetune"))
    assert [s for s, _ in val] == [0, 4, 8]
    assert val[0][1] == pytest.approx(metrics["initial_val_loss"]) and val[-1][1] == pytest.approx(
        metrics["final_val_loss"]
    )
    assert (root / layout.log_dir("finetune") / "plots/metrics/train/lr.tsv").exists()

    tags = ts.tensorboard_tags(root / layout.tensorboard_dir("finetune"))
    assert "train/loss" not in tags  # `loss` is CE here and KD in distill: named by meaning
    assert {
        "train/objective",
        "train/lr",
        "train/ce_loss",
        "train/tokens_per_second",
        "val/loss",
    } <= set(tags)
    assert [s for s, _ in tags["val/loss"]] == [0, 4, 8]
    assert tags["val/loss"][1][1] == pytest.approx(val[1][1], rel=1e-6)

    assert [p.name for p in (root / layout.checkpoint_dir("finetune")).iterdir()] == [
        "step-00000008"
    ]
    assert not (root / ".dvc").exists()  # DVCLive created no DVC repository


def test_distill_lowers_the_student_validation_loss(pipeline):
    root = pipeline(ts.base_spec(finetune=None, distill={"steps": 12, "val_interval": 6}))
    run_stage("distill", "small", root)
    metrics = read_metrics_record(root, "distill@small")
    assert metrics["final_val_loss"] < metrics["initial_val_loss"] - 0.05
    assert metrics["final_kd_loss"] > 0 and metrics["loss"] == {
        "kind": "logits_kl",
        "temperature": 1.0,
        "alpha": 1.0,
    }
    assert (root / layout.log_dir("distill@small") / "plots/metrics/train/kd_loss.tsv").exists()

    from minispec.engines.torch.modeling import load_model

    student = load_model(root / layout.student_dir("small"))
    assert student.config.num_hidden_layers == 1


def test_intermediate_loss_projection_trains_but_is_not_exported(pipeline, tokenizer):
    narrow = ts.tiny_teacher(
        tokenizer,
        layers=2,
        seed=3,
        hidden_size=48,
        num_attention_heads=3,
        num_key_value_heads=1,
        intermediate_size=96,
    )
    loss = {
        "kind": "jsd",
        "temperature": 2.0,
        "alpha": 0.5,
        "intermediate": [{"student_layer": 2, "teacher_layer": 4}],
    }
    root = pipeline(
        ts.base_spec(finetune=None, distill={"steps": 4, "val_interval": 4, "loss": loss}),
        student=narrow,
    )
    run_stage("distill", "small", root)

    from safetensors import safe_open

    checkpoint = (
        root / layout.checkpoint_dir("distill@small") / "step-00000004" / checkpointing.MODEL_FILE
    )
    with safe_open(checkpoint, "pt") as handle:
        assert handle.get_tensor("projections.0.projection.weight").shape == (
            64,
            48,
        )  # [H_teacher, H_student]
    exported = root / layout.student_dir("small") / "model.safetensors"
    with safe_open(exported, "pt") as handle:
        assert not [k for k in handle.keys() if "projection" in k]
    assert (
        root / layout.log_dir("distill@small") / "plots/metrics/train/intermediate_loss.tsv"
    ).exists()


def test_bad_intermediate_layer_is_a_clear_error(pipeline):
    loss = {"intermediate": [{"student_layer": 3, "teacher_layer": 1}]}
    root = pipeline(ts.base_spec(finetune=None, distill={"loss": loss}))
    with pytest.raises(StageError, match="student_layer 3 does not exist .*1 layer"):
        run_stage("distill", "small", root)


def test_different_tokenizer_is_refused_before_training(pipeline, wikitext_dir, monkeypatch):
    from click.testing import CliRunner

    from minispec.cli import cli

    root = pipeline(
        ts.base_spec(finetune=None), student_tokenizer=ts.make_tokenizer(wikitext_dir, swap=True)
    )
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli, ["stage", "distill", "small"])
    assert result.exit_code == 1
    assert (
        "error: teacher" in result.output
        and "use different tokenizers" in result.output
        and "Traceback" not in result.output
    )
    assert (
        not (root / "logs").exists()
        and not (root / "checkpoints").exists()
        and not (root / "metrics").exists()
    )


def test_rerun_resumes_only_with_the_same_settings(pipeline):
    spec = ts.base_spec(finetune={"steps": 4, "val_interval": 2})
    root = pipeline(spec)
    run_stage("finetune", None, root)
    first = read_metrics_record(root, "finetune")
    run_stage("finetune", None, root)  # same settings: the final checkpoint is the whole run
    again = read_metrics_record(root, "finetune")
    assert again["resumed_from_step"] == 4 and again["final_val_loss"] == first["final_val_loss"]
    assert (
        len(ts.read_tsv(root / layout.train_curve_path("finetune"))) == 4
    )  # logs rebuilt, no duplicates

    spec["finetune"]["lr"] = 1e-3
    ts.write_params(root, spec)
    run_stage("finetune", None, root)
    changed = read_metrics_record(root, "finetune")
    assert (
        changed["resumed_from_step"] is None
        and changed["final_val_loss"] != first["final_val_loss"]
    )


def test_stage_guards(pipeline):
    root = pipeline(ts.base_spec(finetune=None))
    with pytest.raises(StageError, match="no finetune block"):
        run_stage("finetune", None, root)
    with pytest.raises(StageError, match="'other' is not a student"):
        run_stage("distill", "other", root)


# --------------------------------------------------------------------------------------------
# speed settings: compile resolution, checkpoint cadence, background checkpoint writes


def test_cuda_graphs_auto_on_one_gpu_only_and_never_with_compile():
    from minispec.engines.torch.train import resolve_speed
    from minispec.spec.model import ResourcesSpec

    def speed(device, **resources):
        return resolve_speed(ResourcesSpec(**resources), device)

    assert speed("cuda") == (False, True)  # the defaults on one GPU: CUDA graphs, no compile
    assert speed("cpu") == (False, False)
    assert speed("cuda", devices=2) == (False, False)  # no graphs around collectives
    assert speed("cuda", cuda_graphs="off") == (False, False)
    assert speed("cuda", compile="on") == (True, False)  # compiled kernels are not captured
    assert speed("cpu", compile="on") == (True, False)


def test_default_checkpoint_cadence_is_not_every_validation():
    from minispec.engines.torch.train import default_checkpoint_interval

    assert default_checkpoint_interval(20, 10) == 10  # short runs: as before
    assert default_checkpoint_interval(200, 10) == 50  # ~4 checkpoints, not 20
    assert default_checkpoint_interval(300, 10) == 80
    assert default_checkpoint_interval(5, 10) == 10


def test_background_checkpoints_resume_to_the_same_curve_and_weights(
    tmp_path, windows, trained_teacher
):
    """Writes in a thread while training goes on; the checkpoint holds the step it was taken at."""
    train, val = windows
    loss = LossConfig(alpha=0.5, temperature=2.0)
    cfg = config(
        steps=6, checkpoint_interval=2, val_interval=3, loss=loss, background_checkpoints=True
    )

    def trainer():
        return Trainer(
            cfg, _student(trained_teacher), copy.deepcopy(trained_teacher), vocab_size=256
        )

    whole = trainer()
    whole_run = fit(whole, train, val, checkpoint_root=tmp_path / "whole", fingerprint="x")
    assert whole._writer is None  # fit waited for the last write
    assert [p.name for p in checkpointing.complete_dirs(tmp_path / "whole")][-1] == "step-00000006"

    # a run stopped by an error during step 5, after its step-4 checkpoint was handed to the writer
    root = tmp_path / "resumed"
    stopped = trainer()
    _poison_after(stopped.module.model, calls=2 * 4, error=RuntimeError("stopped"))
    with pytest.raises(RuntimeError, match="stopped"):
        fit(stopped, train, val, checkpoint_root=root, fingerprint="x")
    stopped.wait_for_checkpoint()
    assert [p.name for p in checkpointing.complete_dirs(root)] == ["step-00000004"]
    resumed = trainer()
    resumed_run = fit(resumed, train, val, checkpoint_root=root, fingerprint="x")
    assert resumed_run.resumed_from == 4
    assert [r["loss"] for r in resumed_run.history["train"]] == [
        r["loss"] for r in whole_run.history["train"]
    ]
    for (name, a), (_, b) in zip(
        whole.module.named_parameters(), resumed.module.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
