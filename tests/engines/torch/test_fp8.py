"""``resources.precision: fp8``: which layers become torchao FP8 linears, that training with them
follows bf16, and that the export is plain HF again. On the CPU torchao emulates the FP8 casts
and GEMMs with the same scaling and rounding as on a GPU, so the numerics are the real ones."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import train_support as ts
from torch import nn
from torchao.float8.float8_linear import Float8Linear

from minispec import layout
from minispec.engines.torch import fp8
from minispec.engines.torch.train import LossConfig, Trainer, fit
from minispec.engines.torch.windows import TokenWindows
from minispec.fsio import read_metrics_record

CPU = torch.device("cpu")


def fp8_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, Float8Linear)]


def test_decoder_linears_become_fp8_but_not_the_lm_head_or_unaligned_ones(tiny_llama):
    model = (
        tiny_llama()
    )  # hidden 64, MLP 128, 4 heads x 16, 2 KV heads: every size a multiple of 16
    assert fp8.convert_linears(model, CPU) == 4 * 7
    names = fp8_layers(model)
    assert "model.layers.0.self_attn.q_proj" in names and "model.layers.3.mlp.down_proj" in names
    assert not isinstance(model.lm_head, Float8Linear)

    odd = tiny_llama(intermediate_size=120)  # FP8 GEMMs need multiples of 16: MLP stays bf16
    assert fp8.convert_linears(odd, CPU) == 4 * 4
    assert not any(".mlp." in name for name in fp8_layers(odd))


def test_restore_gives_plain_linears_with_the_same_weights(tiny_llama):
    model = tiny_llama()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    fp8.convert_linears(model, CPU)
    assert model.state_dict().keys() == before.keys()  # checkpoints do not change format
    fp8.restore_linears(model)
    assert fp8_layers(model) == []
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], msg=name)


@pytest.fixture(scope="module")
def windows(tmp_path_factory, wikitext_dir):
    tokenizer = ts.make_tokenizer(wikitext_dir)
    root = tmp_path_factory.mktemp("tokens")
    ts.write_tokens(root, tokenizer, wikitext_dir)
    return tokenizer, (
        TokenWindows(root / layout.tokens_prefix("train"), ts.SEQ),
        TokenWindows(root / layout.tokens_prefix("validation"), ts.SEQ),
    )


def distill(precision: str, teacher, windows) -> tuple[Trainer, list[float]]:
    train, val = windows
    cfg = ts.train_config(
        steps=8,
        val_interval=4,
        checkpoint_interval=8,
        precision=precision,
        loss=LossConfig(alpha=1.0, temperature=1.0),
    )
    student = ts.drop_layers(teacher, [0, 3]).train()
    trainer = Trainer(cfg, student, copy.deepcopy(teacher), vocab_size=teacher.config.vocab_size)
    run = fit(trainer, train, val)
    return trainer, [record["loss"] for record in run.history["train"]]


def test_fp8_distillation_follows_bf16_and_exports_plain_hf(windows):
    torch.set_num_threads(1)
    tokenizer, token_windows = windows
    teacher = ts.tiny_teacher(tokenizer, seed=3)
    bf16, bf16_losses = distill("bf16", teacher, token_windows)
    fp8_trainer, fp8_losses = distill("fp8", teacher, token_windows)

    assert len(fp8_layers(fp8_trainer.module)) == 2 * 7  # the student's two layers
    assert len(fp8_layers(fp8_trainer.teacher)) == 4 * 7  # and the teacher's four
    assert fp8_losses[-1] < fp8_losses[0]  # it trains
    # FP8 e4m3 keeps 3 mantissa bits: per-step losses within a few percent of bf16's
    for step, (a, b) in enumerate(zip(fp8_losses, bf16_losses, strict=True)):
        assert a == pytest.approx(b, rel=0.05), f"step {step}: fp8 {a} vs bf16 {b}"
    assert fp8_losses != bf16_losses  # the FP8 path really ran

    exported = fp8_trainer.trained_model(dtype=torch.float32)
    assert fp8_layers(exported) == []
    reference = bf16.trained_model(dtype=torch.float32)
    assert exported.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.slow
def test_fp8_on_two_ranks_matches_one(tmp_path, windows, wikitext_dir):
    """FSDP2 shards the FP8 layers' weights; each rank's micro batches see the same scales as
    one process's, so the loss curves agree (gloo on the CPU, torchao's emulation)."""
    torch.set_num_threads(1)
    tokenizer, _ = windows
    distill = {
        "steps": 4,
        "global_batch_size": 8,
        "micro_batch_size": 2,
        "val_interval": 2,
        "val_batches": 1,
        "loss": {"alpha": 1.0},
    }
    root = tmp_path / "one"
    ts.make_pipeline(root, wikitext_dir, tokenizer, ts.base_spec(finetune=None, distill=distill))
    ts.save_hf(
        ts.tiny_teacher(tokenizer, layers=2, seed=5), tokenizer, root / layout.pruned_dir("small")
    )
    params = json.loads((root / "params.yaml").read_text())
    params["resources"]["precision"] = "fp8"
    ts.write_params(root, params)
    two = shutil.copytree(root, tmp_path / "two", copy_function=shutil.copy2)
    params["resources"].update({"devices": 2, "strategy": "fsdp"})
    ts.write_params(two, params)

    assert ts.run_stage_process(root, "distill", "small", timeout=600).returncode == 0
    result = ts.run_group(ts.torchrun_stage_command("distill", "small"), two, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    record = read_metrics_record(two, "distill@small")
    assert (record["world_size"], record["precision"]) == (2, "fp8")
    path = layout.train_curve_path("distill@small")
    one_curve, two_curve = ts.curve(root / path), ts.curve(two / path)
    assert [step for step, _ in one_curve] == [step for step, _ in two_curve]
    for (_, a), (_, b) in zip(one_curve, two_curve, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
